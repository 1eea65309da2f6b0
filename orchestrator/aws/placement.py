"""A multi-node job's cluster placement group (compute.nodes > 1): its N instances close together in
one zone, for the low latency and high bandwidth DDP's all-reduce needs between nodes.

AWS's rules (EC2 user guide, "Placement group rules and limitations"; API reference,
CreatePlacementGroup/DescribePlacementGroups/DeletePlacementGroup):
- a name is unique per account and region (`InvalidPlacementGroup.Duplicate` for a second one);
  a group that does not exist is `InvalidPlacementGroup.Unknown`, one with instances still in it
  cannot be deleted (`InvalidPlacementGroup.InUse`);
- a cluster group lies in one zone (the first instance's); only types whose
  PlacementGroupInfo.SupportedStrategies has `cluster` may join it;
- a Spot Instance in a placement group must terminate on interruption (never stop or hibernate):
  spotctl's are always `InstanceInterruptionBehavior: terminate` (aws.ec2.run_instance).

The group is named after the job and tagged like every spotctl resource (`spotctl:job`), so it is
found by tag, created idempotently (a second launch of the same job reuses its own group, and refuses
a group of that name that is not the job's) and deleted when the job ends or by `spotctl rm`.
EFA (NetworkInfo.EfaSupported, offers.InstanceType.efa) needs an EFA interface at launch and the
instances in one cluster group: `efa_note` says what spotctl does about it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import botocore.exceptions

from orchestrator.aws.clients import Cloud, as_user_error, error_code
from orchestrator.aws.instances import TAG_JOB
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.aws.offers import InstanceType

log = logging.getLogger(__name__)
STRATEGY = "cluster"
DUPLICATE, UNKNOWN, IN_USE = (
    "InvalidPlacementGroup.Duplicate",
    "InvalidPlacementGroup.Unknown",
    "InvalidPlacementGroup.InUse",
)


def group_name(job_id: str) -> str:
    """The job's placement group: one per job, whatever attempt or zone (a job id is unique per storage)."""
    return f"spotctl-{job_id}"[:255]


def wanted(nodes: int, instance: InstanceType) -> bool:
    """A cluster placement group for this launch: several nodes, of a type that may join one."""
    return nodes > 1 and instance.cluster_placement


def ensure_group(cloud: Cloud, job_id: str) -> str:
    """Create the job's cluster group (tagged with the job), or reuse the one it already has."""
    name = group_name(job_id)
    ec2 = cloud.client("ec2")
    try:
        ec2.create_placement_group(
            GroupName=name,
            Strategy=STRATEGY,
            TagSpecifications=[{"ResourceType": "placement-group", "Tags": [{"Key": TAG_JOB, "Value": job_id}]}],
        )
        log.info("placement: created %s", name)
        return name
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) != DUPLICATE:
            raise as_user_error(exc, f"creating the placement group {name}") from None
    found = describe_group(cloud, name)
    tags = {t["Key"]: t["Value"] for t in (found or {}).get("Tags", [])}
    if found is None or tags.get(TAG_JOB) != job_id or found.get("Strategy") != STRATEGY:
        raise UserError(
            f"a placement group named {name} exists in {cloud.region} and is not this job's cluster group",
            f"delete it (aws ec2 delete-placement-group --group-name {name}) or launch the job again for a new id",
        )
    return name


def describe_group(cloud: Cloud, name: str) -> dict | None:
    """The group EC2 knows by this name, or None."""
    try:
        groups = cloud.client("ec2").describe_placement_groups(GroupNames=[name])["PlacementGroups"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == UNKNOWN:
            return None
        raise as_user_error(exc, f"describing the placement group {name}") from None
    return groups[0] if groups else None


def groups_of(cloud: Cloud, job_id: str) -> list[str]:
    """The placement groups tagged with the job (what `spotctl rm` deletes)."""
    answer = cloud.client("ec2").describe_placement_groups(Filters=[{"Name": f"tag:{TAG_JOB}", "Values": [job_id]}])
    return sorted(g["GroupName"] for g in answer["PlacementGroups"])


def delete_group(cloud: Cloud, name: str) -> bool:
    """Delete the group; True once it is gone. False while instances are still in it (EC2 is still
    terminating them): try again later."""
    try:
        cloud.client("ec2").delete_placement_group(GroupName=name)
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        if code == UNKNOWN:
            return True
        if code == IN_USE:
            return False
        raise as_user_error(exc, f"deleting the placement group {name}") from None
    log.info("placement: deleted %s", name)
    return True


def efa_note(nodes: int, instance: InstanceType) -> str | None:
    """What a multi-node launch on this type does about EFA. spotctl launches with an ENA interface
    only: NCCL then runs over TCP sockets between nodes (correct, slower on large models). Attaching
    an EFA interface (InterfaceType=efa, one per network card, no public IP with more than one) and the
    aws-ofi-nccl plugin the DLAMI ships is left for later; the type's support is reported."""
    if nodes < 2 or not instance.efa:
        return None
    return (
        f"{instance.name} has EFA, but spotctl launches its nodes with ENA only: NCCL between nodes runs over TCP "
        "(correct, slower for large models)"
    )
