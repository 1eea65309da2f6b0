"""EC2 as spotctl calls it: the instances of a job (found by tag), its AMI, starting one with the
network it needs (subnet, egress, a no-inbound security group; for several nodes one that admits
only its own members), terminating. The job lifecycle
(orchestrator.jobs) calls these; they know nothing of records or claims. EC2's vocabulary (tags,
states, reason codes) is orchestrator.aws.instances.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import botocore.exceptions

from orchestrator.aws.amis import Image
from orchestrator.aws.clients import (
    Cloud,
    ErrorKind,
    as_user_error,
    classify,
    describe,
    error_code,
    profile_not_propagated,
)
from orchestrator.aws.instances import GONE, LIVE, TAG_ATTEMPT, TAG_JOB, TAG_NODE, Instance, NodeMachine
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.aws.offers import Offer
    from trainer.job.spec import JobSpec

SECURITY_GROUP_NAME = "spotctl-no-inbound"
# compute.nodes > 1: torchrun's master port and the ranks' collectives (gloo, NCCL over TCP, on ports
# of their choosing) need node-to-node traffic. A group of its own, so a single node keeps no inbound
# rule at all; it admits its own members only, as the stack's group does (SecurityGroupSelfIngress).
NODES_SECURITY_GROUP_NAME = "spotctl-own-nodes-only"
NODES_GROUP_TAG = ("spotctl:admits", "its-own-members")  # what IAM lets the operator add ingress to
log = logging.getLogger(__name__)
T = TypeVar("T")
# EC2 is eventually consistent: an instance RunInstances just returned can be "InvalidInstanceID.NotFound"
# by id for a few seconds, and a new instance profile "invalid" for up to about two minutes.
NEW_INSTANCE_VISIBLE_S = 30.0
PROFILE_PROPAGATION_S = 120.0
RUN_RETRIES = 4  # a throttled or failed (5xx other than capacity) RunInstances, repeated with its ClientToken


def _until(call: Callable[[], T], retryable: Callable[[BaseException], bool], within_s: float, what: str) -> T:
    """`call()`, repeated with jittered backoff (1 s doubling, 10 s at most) while `retryable` says so
    and `within_s` has not passed; the last error is raised."""
    deadline, delay = time.monotonic() + within_s, 1.0
    while True:
        try:
            return call()
        except botocore.exceptions.ClientError as exc:
            if not retryable(exc) or time.monotonic() + delay > deadline:
                raise
            log.info("%s: %s; again in %.0fs", what, describe(exc), delay)
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(10.0, delay * 2)


def _instance_not_found(error: BaseException) -> bool:
    return error_code(error) == "InvalidInstanceID.NotFound"


def instances_of(cloud: Cloud, job_ids: list[str]) -> dict[str, dict[int, Instance]]:
    """Every instance of each job by attempt number, found by tag (one paginated call for many jobs).
    If one attempt somehow has several instances, a live one wins."""
    return {job: by_attempt(machines) for job, machines in machines_of(cloud, job_ids).items()}


def by_attempt(machines: list[Instance]) -> dict[int, Instance]:
    """One instance per attempt (its `spotctl:attempt` tag), a live one first."""
    found: dict[int, Instance] = {}
    for instance in machines:
        known = found.get(instance.attempt)
        if known is None or known.state in GONE:
            found[instance.attempt] = instance
    return found


def machines_of(cloud: Cloud, job_ids: list[str]) -> dict[str, list[Instance]]:
    """Every instance of each job EC2 lists, found by tag (one paginated call per 150 jobs): a
    multi-node attempt's nodes each, a kept node under the attempt it serves now."""
    ec2 = cloud.client("ec2", retries="adaptive")  # one call per 150 jobs, every poll
    found: dict[str, list[Instance]] = {}
    for chunk in (job_ids[i : i + 150] for i in range(0, len(job_ids), 150)):
        pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": f"tag:{TAG_JOB}", "Values": chunk}])
        for page in pages:
            for reservation in page["Reservations"]:
                for entry in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in entry.get("Tags", [])}
                    job, attempt = tags.get(TAG_JOB), tags.get(TAG_ATTEMPT, "")
                    if not job or not attempt.isdigit():
                        continue
                    reason = entry.get("StateReason") or {}
                    found.setdefault(job, []).append(
                        Instance(
                            entry["InstanceId"],
                            entry["State"]["Name"],
                            reason.get("Code"),
                            reason.get("Message"),
                            int(attempt),
                            entry.get("StateTransitionReason") or None,
                        )
                    )
    return found


def resolve_ami(cloud: Cloud, ami: str) -> tuple[str, str]:
    """(AMI id, root device name); an `ssm:/...` parameter is resolved first."""
    image = describe_image(cloud, ami)
    return image.id, image.root_device


def describe_image(cloud: Cloud, ami: str) -> Image:
    """The image `ami` names (an AMI id, or `ssm:/...`, resolved first)."""
    parameter = None
    if ami.startswith("ssm:"):
        parameter = ami[4:]
        try:
            ami = cloud.client("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
        except botocore.exceptions.ClientError as exc:
            if classify(exc) in (ErrorKind.CONFIG, ErrorKind.NOT_FOUND):
                raise UserError(
                    f"compute.ami: the SSM parameter {parameter} does not exist in {cloud.region}",
                    "check the region, or set compute.ami to an AMI id (ami-...)",
                ) from None
            raise as_user_error(exc, f"reading the SSM parameter {parameter}") from None
    try:
        images = cloud.client("ec2").describe_images(ImageIds=[ami])["Images"]
    except botocore.exceptions.ClientError as exc:
        if classify(exc) in (ErrorKind.CONFIG, ErrorKind.NOT_FOUND):
            images = []
        else:
            raise as_user_error(exc, f"describing {ami}") from None
    if not images:
        raise UserError(f"compute.ami: {ami} does not exist in {cloud.region}", "use an AMI of this region")
    found = images[0]
    root = found.get("RootDeviceName", "/dev/xvda")
    mapping = next((m for m in found.get("BlockDeviceMappings", []) if m.get("DeviceName") == root), {})
    return Image(
        ami,
        root,
        found.get("Name") or "",
        found.get("Description") or "",
        parameter,
        mapping.get("Ebs", {}).get("VolumeSize"),
    )


def live_instances(cloud: Cloud, job_id: str, attempt: int | None = None) -> list[str]:
    """The job's instances that are not terminated yet (of one attempt, if given), found by tag."""
    filters = [
        {"Name": f"tag:{TAG_JOB}", "Values": [job_id]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ]
    if attempt is not None:
        filters.append({"Name": f"tag:{TAG_ATTEMPT}", "Values": [str(attempt)]})
    pages = cloud.client("ec2").get_paginator("describe_instances").paginate(Filters=filters)
    return sorted(i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"])


def node_machines(cloud: Cloud, job_id: str, attempt: int) -> list[NodeMachine]:
    """The live machines tagged as nodes of one attempt of the job, by rank (a kept node is tagged
    with the attempt it served until the one that keeps it is recorded)."""
    filters = [
        {"Name": f"tag:{TAG_JOB}", "Values": [job_id]},
        {"Name": f"tag:{TAG_ATTEMPT}", "Values": [str(attempt)]},
        {"Name": "tag-key", "Values": [TAG_NODE]},
        {"Name": "instance-state-name", "Values": list(LIVE)},
    ]
    found = []
    for page in cloud.client("ec2").get_paginator("describe_instances").paginate(Filters=filters):
        for entry in (i for r in page["Reservations"] for i in r["Instances"]):
            rank = {t["Key"]: t["Value"] for t in entry.get("Tags", [])}.get(TAG_NODE, "")
            if rank.isdigit():
                found.append(
                    NodeMachine(
                        entry["InstanceId"],
                        int(rank),
                        entry["InstanceType"],
                        entry["Placement"]["AvailabilityZone"],
                        entry.get("ClientToken") or None,
                        entry["LaunchTime"].isoformat(timespec="seconds"),
                    )
                )
    return sorted(found, key=lambda m: (m.rank, m.launched_at, m.instance_id))


def run_instance(
    cloud: Cloud,
    spec: JobSpec,
    job_id: str,
    attempt: int,
    offer: Offer,
    ami: str,
    root_device: str,
    user_data: str,
    token: str,
    dry_run: bool = False,
    node: int | None = None,
    placement_group: str | None = None,
) -> str:
    """Start one spot instance of the job's attempt (one node of it, for compute.nodes > 1: tagged
    with its node rank, in the job's cluster placement group when given)."""
    subnet, vpc = subnet_for(cloud, offer.zone, spec.compute.subnets)
    name = f"spotctl {job_id} #{attempt}" + (f" node {node}" if node is not None else "")
    tags = [
        {"Key": TAG_JOB, "Value": job_id},
        {"Key": TAG_ATTEMPT, "Value": str(attempt)},
        {"Key": "Name", "Value": name[:255]},
    ] + ([{"Key": TAG_NODE, "Value": str(node)}] if node is not None else [])
    # terminate (never stop or hibernate) on interruption: also what a placement group requires of spot.
    spot_options = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    if spec.compute.hard_max_price and spec.compute.max_price_per_hour:
        # Opt-in only: with a MaxPrice EC2 interrupts the instance whenever the price crosses it. The
        # cap already keeps dearer offers out; without one a running instance pays at most on-demand.
        spot_options["MaxPrice"] = f"{spec.compute.max_price_per_hour:.4f}"
    request = {
        "ImageId": ami,
        "InstanceType": offer.instance.name,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        # run_instances with spot market options (not request_spot_instances) keeps the instance profile.
        "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": spot_options},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [
            {
                "DeviceName": root_device,
                "Ebs": {
                    "VolumeSize": spec.compute.disk_gib,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
        "InstanceInitiatedShutdownBehavior": "terminate",
        "ClientToken": token,  # a retried call returns the same instance instead of starting a second one
        "DryRun": dry_run,
    }
    if placement_group:
        request["Placement"] = {"GroupName": placement_group}
    if not spec.compute.public_ip:
        require_private_egress(cloud, subnet, vpc, offer.zone)
    spotctls = nodes_security_group if spec.compute.nodes > 1 else security_group
    group = spec.compute.security_group or spotctls(cloud, vpc, create=not dry_run)
    # The zone is chosen through the subnet. No public address unless the job asks for one: with no
    # inbound rules it would only carry outbound traffic, which a NAT gateway or VPC endpoints can.
    interface = {
        "DeviceIndex": 0,
        "SubnetId": subnet,
        "AssociatePublicIpAddress": spec.compute.public_ip,
        "DeleteOnTermination": True,
    }
    if group:  # a dry run creates nothing: without spotctl's group yet, it checks with the default one
        interface["Groups"] = [group]
    request["NetworkInterfaces"] = [interface]
    profile = spec.compute.instance_profile
    if profile:
        request["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
    return _run(cloud, request, profile)


def _run(cloud: Cloud, request: dict, profile: str | None) -> str:
    """RunInstances on a client that never retries by itself: a refused pool (InsufficientInstanceCapacity
    is HTTP 500, which botocore would repeat four times) goes straight back to the launcher, which
    moves to the next offer. What *is* worth repeating is repeated here, with the same ClientToken (so
    never a second instance): throttling and other 5xx RUN_RETRIES times, and a profile EC2 cannot see
    yet for up to PROFILE_PROPAGATION_S."""
    ec2 = cloud.client("ec2", retries="once")
    failures = 0

    def worth_repeating(error: BaseException) -> bool:
        nonlocal failures
        if profile_not_propagated(error):
            return not request.get("DryRun")  # bounded by PROFILE_PROPAGATION_S
        kind = classify(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if kind is ErrorKind.THROTTLE or (kind is ErrorKind.OTHER and status >= 500):
            failures += 1
            return failures <= RUN_RETRIES
        return False

    return _until(
        lambda: ec2.run_instances(**request)["Instances"][0]["InstanceId"],
        worth_repeating,
        PROFILE_PROPAGATION_S,
        f"RunInstances {request['InstanceType']} (profile {profile})",
    )


def subnet_for(cloud: Cloud, zone: str, subnets: dict[str, str] | None = None) -> tuple[str, str]:
    """(subnet id, vpc id) to launch in `zone` (Placement is not how EC2 picks the zone): the one
    compute.subnets names, else the zone's default subnet. A UserError says why the zone cannot be used."""
    ec2 = cloud.client("ec2")
    if subnets is not None:
        if zone not in subnets:
            raise UserError(
                f"compute.subnets names no subnet for {zone}", f"add `{zone}: subnet-...` to compute.subnets"
            )
        try:
            found = ec2.describe_subnets(SubnetIds=[subnets[zone]])["Subnets"]
        except botocore.exceptions.ClientError as exc:
            if classify(exc) not in (ErrorKind.CONFIG, ErrorKind.NOT_FOUND):
                raise
            found = []
        if not found:
            raise UserError(
                f"compute.subnets: {subnets[zone]} ({zone}) does not exist in {cloud.region}", "check the subnet id"
            )
        if found[0]["AvailabilityZone"] != zone:
            raise UserError(
                f"compute.subnets: {subnets[zone]} is in {found[0]['AvailabilityZone']}, not {zone}",
                f"list it under {found[0]['AvailabilityZone']}",
            )
        return found[0]["SubnetId"], found[0]["VpcId"]
    found = ec2.describe_subnets(
        Filters=[{"Name": "availability-zone", "Values": [zone]}, {"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    if not found:
        raise UserError(
            f"{zone} has no default subnet",
            "name the subnet of each zone in compute.subnets (an account without a default VPC), create a default "
            "subnet (`aws ec2 create-default-subnet --availability-zone ZONE`), or drop the zone from compute.availability_zones",
        )
    return found[0]["SubnetId"], found[0]["VpcId"]


def require_private_egress(cloud: Cloud, subnet: str, vpc: str, zone: str) -> None:
    """Refuse to start an instance without a public IP in a subnet whose only way out is an internet
    gateway (a default VPC): it could not reach S3 or PyPI, and would die without a word. A subnet
    with a NAT (or transit) route is fine; one with no default route at all is taken to be a private
    network with its own endpoints and mirrors."""
    ec2 = cloud.client("ec2")
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])["RouteTables"]
    if not tables:  # no table of its own: the VPC's main one
        tables = ec2.describe_route_tables(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "association.main", "Values": ["true"]}]
        )["RouteTables"]
    default = [
        r
        for t in tables
        for r in t.get("Routes", [])
        if r.get("DestinationCidrBlock") == "0.0.0.0/0" and r.get("State", "active") == "active"
    ]
    if any(
        r.get(k)
        for r in default
        for k in ("NatGatewayId", "TransitGatewayId", "NetworkInterfaceId", "InstanceId", "VpcPeeringConnectionId")
    ):
        return
    if any(str(r.get("GatewayId", "")).startswith("igw-") for r in default):
        raise UserError(
            f"subnet {subnet} ({zone}) reaches the internet only through an internet gateway, which needs a public IP; "
            "without one the instance could not reach S3 or PyPI",
            "set compute.public_ip: true (the security group still admits nothing inbound), or launch where subnets have a NAT gateway",
        )


def security_group(cloud: Cloud, vpc: str, create: bool = True) -> str | None:
    """spotctl's security group of this VPC: no inbound rules at all (found by name, created once)."""
    found = _own_group(cloud, vpc, SECURITY_GROUP_NAME, "spotctl training instances: no inbound access", create)
    return found["GroupId"] if found else None


def nodes_security_group(cloud: Cloud, vpc: str, create: bool = True) -> str | None:
    """spotctl's group of this VPC for multi-node jobs: all traffic from its own members, nothing from
    anywhere else (found by name, created once; the rule added if a launch that died left it out)."""
    found = _own_group(
        cloud,
        vpc,
        NODES_SECURITY_GROUP_NAME,
        "spotctl multi-node training instances: inbound only from this group's members",
        create,
        (NODES_GROUP_TAG,),
    )
    if found is None:
        return None
    group = found["GroupId"]
    admits_itself = any(
        rule.get("IpProtocol") == "-1"
        and any(pair.get("GroupId") == group for pair in rule.get("UserIdGroupPairs", []))
        for rule in found.get("IpPermissions", [])
    )
    if not admits_itself and create:
        try:
            cloud.client("ec2").authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[
                    {
                        "IpProtocol": "-1",
                        "UserIdGroupPairs": [
                            {"GroupId": group, "Description": "spotctl nodes of one job reach each other"}
                        ],
                    }
                ],
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "InvalidPermission.Duplicate":  # another launch added it just now
                raise as_user_error(exc, f"letting the nodes in {group} reach each other") from None
    return group


def _own_group(
    cloud: Cloud, vpc: str, name: str, description: str, create: bool, tags: tuple[tuple[str, str], ...] = ()
) -> dict | None:
    """spotctl's security group `name` of this VPC as EC2 describes it (with its rules), created with no
    inbound rule if missing (tagged spotctl:managed and `tags`); None: missing and not `create`."""
    ec2 = cloud.client("ec2")
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"]
    if found:
        return found[0]
    if not create:
        return None
    try:
        created = ec2.create_security_group(
            GroupName=name,
            Description=description,
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "security-group",
                    "Tags": [{"Key": k, "Value": v} for k, v in [("spotctl:managed", "true"), *tags]],
                }
            ],
        )
    except botocore.exceptions.ClientError as exc:
        if "Duplicate" in describe(exc):  # another launch created it just now
            return _own_group(cloud, vpc, name, description, False)
        raise as_user_error(exc, "creating the security group") from None
    return {"GroupId": created["GroupId"], "IpPermissions": []}


def describe_instance(cloud: Cloud, instance_id: str) -> dict:
    """EC2's description of one instance (one RunInstances just returned may be unknown for a while)."""
    described = _until(
        lambda: cloud.client("ec2").describe_instances(InstanceIds=[instance_id]),
        _instance_not_found,
        NEW_INSTANCE_VISIBLE_S,
        f"describing {instance_id}",
    )
    return described["Reservations"][0]["Instances"][0]


def terminate(cloud: Cloud, instance_ids: list[str]) -> None:
    """Terminate instances; one just started may be unknown to EC2 for a while, and is waited for (an
    instance left running because its id was not visible yet would be an orphan that bills)."""
    _until(
        lambda: cloud.client("ec2").terminate_instances(InstanceIds=instance_ids),
        _instance_not_found,
        NEW_INSTANCE_VISIBLE_S,
        f"terminating {', '.join(instance_ids)}",
    )


def retag_attempt(cloud: Cloud, instance_ids: list[str], attempt: int) -> None:
    """Kept nodes serve the next attempt: their `spotctl:attempt` tag says which (what IAM scopes and
    `instances_of` file them under). A survivor may itself be seconds old (a node lost right after the
    launch), so EC2 may not know its id yet: that is waited for, as terminating one is."""
    if instance_ids:
        _until(
            lambda: cloud.client("ec2").create_tags(
                Resources=instance_ids, Tags=[{"Key": TAG_ATTEMPT, "Value": str(attempt)}]
            ),
            _instance_not_found,
            NEW_INSTANCE_VISIBLE_S,
            f"tagging {', '.join(instance_ids)} with attempt {attempt}",
        )
