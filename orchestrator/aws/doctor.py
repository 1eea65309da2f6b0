"""`spotctl doctor`: is this account ready for the job, before a GPU is paid for? Each check is one
line: ok, or the problem and its fix. What a first launch in a real account meets, in the order
it meets it: credentials, the Spot service-linked role, the Spot vCPU quotas of the job's instance
types, a subnet (with a way out) in each zone, the S3 gateway endpoint, the bucket's protections,
the data and weights at their URLs (orchestrator.aws.datasets), the instance role's reach (data read, job prefix written), and the AMI (its families, its disk).
Read-only: nothing is created or changed.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

import botocore.exceptions

from orchestrator.aws import datasets, quotas
from orchestrator.aws.checks import Check, Verdict
from orchestrator.aws.clients import Cloud, ErrorKind, as_user_error, classify, describe
from orchestrator.aws.ec2 import describe_image, require_private_egress, subnet_for
from orchestrator.aws.instances import CREATE_SPOT_ROLE, SPOT_SERVICE_LINKED_ROLE
from orchestrator.aws.offers import Offer, Offers, find_offers
from orchestrator.aws.policy_check import Request, allows, role_policies
from orchestrator.aws.prices import PriceSource
from orchestrator.errors import UserError
from trainer.job import layout
from trainer.job.spec import JobSpec


def run_checks(
    spec: JobSpec, cloud: Cloud, prices: PriceSource, with_offers: Callable[[Offers], list[Check]] | None = None
) -> list[Check]:
    """Every check, in order; one that cannot run says why instead of stopping the rest. `with_offers`
    adds the checks that need the offers found (the budget's, orchestrator.jobs.preflight)."""
    checks: list[Check] = []

    def attempt(name: str, check: Callable[[], list[Check]]) -> None:
        try:
            checks.extend(check())
        except UserError as exc:
            checks.append(Check(name, Verdict.PROBLEM, exc.message, exc.hint))
        except botocore.exceptions.ClientError as exc:
            verdict = Verdict.UNKNOWN if classify(exc) is ErrorKind.AUTH else Verdict.PROBLEM
            checks.append(Check(name, verdict, describe(exc), as_user_error(exc, name).hint))
        except ValueError as exc:  # an answer this check cannot read (a policy document that is not JSON)
            checks.append(Check(name, Verdict.UNKNOWN, f"could not read what AWS answered: {exc}"))

    attempt("credentials", lambda: [_credentials(cloud)])
    if checks[-1].verdict is not Verdict.OK:
        return checks  # nothing else can be asked
    attempt("spot role", lambda: [_spot_role(cloud)])
    found = Offers([])  # filled in by the offers check; the later checks read it

    def offers_check() -> list[Check]:
        nonlocal found
        found = find_offers(cloud, spec.compute, prices, describe_image(cloud, spec.compute.ami))
        if not found.ranked:
            return [
                Check(
                    "offers",
                    Verdict.PROBLEM,
                    f"no spot offer for the job ({len(found.dropped)} pools dropped)",
                    "`spotctl offers JOB.yaml` shows why",
                )
            ]
        return [
            Check(
                "offers",
                Verdict.OK,
                f"{len(found.ranked)} offers, cheapest {found.ranked[0].instance.name} in {found.ranked[0].zone}",
            )
        ]

    attempt("offers", offers_check)
    if with_offers is not None:
        attempt("budget", lambda: with_offers(found))
    attempt("spot quotas", lambda: _quotas(cloud, found.ranked))
    vpcs: dict[str, list[str]] = {}
    attempt("network", lambda: _network(cloud, spec, found.ranked, vpcs))
    attempt("s3 endpoint", lambda: _s3_endpoints(cloud, vpcs))
    attempt("bucket", lambda: [_bucket(cloud, spec)])
    attempt("data", lambda: datasets.data_checks(cloud, spec))
    attempt("weights", lambda: datasets.weights_checks(cloud, spec))
    attempt("teacher", lambda: datasets.teacher_checks(cloud, spec))
    attempt("instance role", lambda: _instance_role(cloud, spec))
    attempt("ami", lambda: _ami(cloud, spec, found))
    return checks


def _credentials(cloud: Cloud) -> Check:
    identity = cloud.client("sts").get_caller_identity()
    return Check("credentials", Verdict.OK, f"{identity['Arn']} in {cloud.region}")


def _spot_role(cloud: Cloud) -> Check:
    iam = cloud.client("iam")
    try:
        iam.get_role(RoleName=SPOT_SERVICE_LINKED_ROLE)
    except botocore.exceptions.ClientError as exc:
        if classify(exc) is not ErrorKind.CONFIG:
            raise
        return Check(
            "spot role",
            Verdict.PROBLEM,
            f"{SPOT_SERVICE_LINKED_ROLE} does not exist: the first spot launch of the account would have to create it",
            f"`spotctl infra deploy` creates it (or `{CREATE_SPOT_ROLE}`)",
        )
    return Check("spot role", Verdict.OK, f"{SPOT_SERVICE_LINKED_ROLE} exists")


def _quotas(cloud: Cloud, offers: list[Offer]) -> list[Check]:
    """Each quota bucket the job's offers fall in, against the smallest offer's vCPUs."""
    needs: dict[quotas.SpotQuota, Offer] = {}
    for offer in offers:
        bucket = quotas.spot_quota_of(offer.instance.name)
        if bucket not in needs or offer.instance.vcpus < needs[bucket].instance.vcpus:
            needs[bucket] = offer
    checks = []
    service_quotas = cloud.client("service-quotas")
    for bucket, offer in needs.items():
        value = service_quotas.get_service_quota(ServiceCode=quotas.SERVICE_CODE, QuotaCode=bucket.code)["Quota"][
            "Value"
        ]
        need = offer.instance.vcpus
        line = f"'{bucket.name}' ({bucket.code}): {value:g} vCPUs; {offer.instance.name} needs {need}"
        if value < need:
            checks.append(Check("spot quota", Verdict.PROBLEM, line, bucket.increase_command(need)))
        else:
            checks.append(Check("spot quota", Verdict.OK, line))
    return checks


def _network(cloud: Cloud, spec: JobSpec, offers: list[Offer], vpcs: dict[str, list[str]]) -> list[Check]:
    """A usable subnet in each zone the offers are in (and, without a public IP, a way out)."""
    checks, usable = [], []
    for zone in sorted({o.zone for o in offers}):
        try:
            subnet, vpc = subnet_for(cloud, zone, spec.compute.subnets)
            if not spec.compute.public_ip:
                require_private_egress(cloud, subnet, vpc, zone)
        except UserError as exc:
            checks.append(Check("network", Verdict.PROBLEM, f"{zone}: {exc.message}", exc.hint))
            continue
        vpcs.setdefault(vpc, []).append(subnet)
        usable.append(f"{zone} {subnet}")
    if usable:
        checks.insert(0, Check("network", Verdict.OK, f"subnets: {', '.join(usable)}"))
    return checks


def _s3_endpoints(cloud: Cloud, vpcs: dict[str, list[str]]) -> list[Check]:
    """Without an S3 gateway endpoint, a private subnet's S3 traffic (the data, every checkpoint)
    passes the NAT gateway, which bills each GB it processes, on every attempt."""
    ec2, checks = cloud.client("ec2"), []
    service = f"com.amazonaws.{cloud.region}.s3"
    for vpc in sorted(vpcs):
        endpoints = ec2.describe_vpc_endpoints(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "service-name", "Values": [service]}]
        )["VpcEndpoints"]
        if any(e.get("VpcEndpointType", "Gateway") == "Gateway" for e in endpoints):
            checks.append(Check("s3 endpoint", Verdict.OK, f"{vpc} has an S3 gateway endpoint"))
            continue
        tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"]
        checks.append(
            Check(
                "s3 endpoint",
                Verdict.WARNING,
                f"{vpc} has no S3 gateway endpoint: S3 traffic (data, checkpoints) goes through a NAT gateway "
                "(billed per GB processed, every attempt) or the internet gateway",
                f"aws ec2 create-vpc-endpoint --vpc-id {vpc} --service-name {service} --route-table-ids "
                + " ".join(t["RouteTableId"] for t in tables),
            )
        )
    return checks


def _bucket(cloud: Cloud, spec: JobSpec) -> Check:
    from orchestrator.aws.infra import bucket_checks

    bucket = urlparse(spec.storage).netloc
    try:
        found = bucket_checks(cloud, bucket)
    except UserError as exc:
        if "NoSuchBucket" in exc.message:
            return Check("bucket", Verdict.PROBLEM, f"{bucket} does not exist", "`spotctl infra deploy` creates it")
        return Check("bucket", Verdict.UNKNOWN, exc.message, exc.hint)
    missing = [name.replace("_", " ") for name, value in found.items() if value is False]
    if missing:
        return Check(
            "bucket",
            Verdict.WARNING,
            f"{bucket}: not {', not '.join(missing)}",
            "`spotctl infra deploy` sets these on the bucket it creates",
        )
    return Check("bucket", Verdict.OK, f"{bucket}: public access blocked, encrypted at rest")


def _instance_role(cloud: Cloud, spec: JobSpec) -> list[Check]:
    """The instance profile's role may read the data and write the job's prefix (its own policies)."""
    profile = spec.compute.instance_profile
    if not profile:
        return [
            Check("instance role", Verdict.PROBLEM, "compute.instance_profile is not set", "run `spotctl infra deploy`")
        ]
    iam = cloud.client("iam")
    name = profile.rsplit("/", 1)[-1]
    try:
        roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
    except botocore.exceptions.ClientError as exc:
        if classify(exc) is ErrorKind.CONFIG:
            return [
                Check(
                    "instance role",
                    Verdict.PROBLEM,
                    f"instance profile {name} does not exist",
                    "check compute.instance_profile, or `spotctl infra deploy`",
                )
            ]
        raise
    if not roles:
        return [
            Check(
                "instance role", Verdict.PROBLEM, f"instance profile {name} has no role", "add the trainer role to it"
            )
        ]
    documents = role_policies(iam, roles[0]["RoleName"])
    bucket, _, prefix = spec.storage.removeprefix("s3://").partition("/")
    probe = f"{prefix.strip('/')}/{layout.job_prefix('', 'doctor-probe').strip('/')}".strip("/")
    wanted = [("write the job prefix", Request("s3:PutObject", f"arn:aws:s3:::{bucket}/{probe}/{layout.HEARTBEAT}"))]
    for field, url in (("train.data.train", spec.train.data.train), ("train.data.val", spec.train.data.val)):
        if url and url.startswith("s3://"):
            data_bucket, _, key = url.removeprefix("s3://").partition("/")
            key = key.strip("/")
            wanted.append((f"list {field}", Request("s3:ListBucket", f"arn:aws:s3:::{data_bucket}", prefix=f"{key}/")))
            wanted.append((f"read {field}", Request("s3:GetObject", f"arn:aws:s3:::{data_bucket}/{key}/x")))
    refused = [what for what, request in wanted if not allows(documents, request)]
    if refused:
        return [
            Check(
                "instance role",
                Verdict.PROBLEM,
                f"{roles[0]['RoleName']} may not {', '.join(refused)}",
                "put the data under the stack's prefix, or `spotctl infra deploy --data-read s3://BUCKET/PREFIX/`",
            )
        ]
    return [Check("instance role", Verdict.OK, f"{roles[0]['RoleName']} may {', '.join(w for w, _ in wanted)}")]


def _ami(cloud: Cloud, spec: JobSpec, offers: Offers) -> list[Check]:
    """The AMI: what it runs on (offers are already held to it), its patches, its disk."""
    image = offers.ami.image if offers.ami else describe_image(cloud, spec.compute.ami)  # the offers check failed
    checks = [Check("ami", Verdict.OK, offers.ami.describe() if offers.ami else f"{image.id} ({image.name or '?'})")]
    for note in offers.notes:
        checks.append(Check("ami", Verdict.WARNING, note))
    unusable = {t: why for t, why in offers.excluded.items() if "AMI" in why}
    if unusable and spec.compute.instance_types:
        checks.append(
            Check(
                "ami",
                Verdict.WARNING,
                "not considered: " + "; ".join(f"{t}: {why}" for t, why in unusable.items()),
                "choose instance types the AMI supports, or another compute.ami",
            )
        )
    snapshot_gib = image.root_gib
    if snapshot_gib and spec.compute.disk_gib < snapshot_gib:
        checks.append(
            Check(
                "disk",
                Verdict.PROBLEM,
                f"compute.disk_gib {spec.compute.disk_gib} is smaller than the AMI's snapshot ({snapshot_gib} GiB)",
                f"set compute.disk_gib to {snapshot_gib} or more",
            )
        )
    else:
        checks.append(Check("disk", Verdict.OK, f"{spec.compute.disk_gib} GiB (the AMI needs {snapshot_gib or '?'})"))
    return checks
