"""One-command AWS setup: the CloudFormation stack of infra/spotctl.yaml (bucket, trainer role and
instance profile, a security group with no inbound rules), and the local profile that lets a job.yaml
leave `storage`, `compute.instance_profile` and `compute.security_group` out.

deploy   create_stack or update_stack (not change sets: moto drops the outputs of stacks made
         through them), wait, then check the bucket's guarantees through the S3 API itself and set
         any that are missing (moto's CloudFormation leaves the public access block, the TLS-only
         policy and the lifecycle rules unset; on AWS this finds them already in place), and
         record the outputs in the profile.
status   the stack, its outputs, the bucket's guarantees as S3 reports them, the profile.
delete   refuses while spotctl instances run with the stack's security group or instance profile
         (CloudFormation would end in DELETE_FAILED, the group still in use) unless told to terminate
         them first, and while the bucket holds jobs (unless forced); the bucket itself is kept (its
         DeletionPolicy is Retain) unless it is empty.

Deploy also makes sure the account has EC2's Spot service-linked role (`ensure_spot_service_linked_role`),
which EC2 would otherwise create at the first spot request with the *caller's* credentials.

The profile is `$SPOTCTL_HOME/infra.json` (default ~/.spotctl): the last stack deployed, by region.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions

from orchestrator.aws.clients import Cloud, as_user_error, describe, error_code
from orchestrator.aws.instances import CREATE_SPOT_ROLE, SPOT_SERVICE, SPOT_SERVICE_LINKED_ROLE, TAG_JOB
from orchestrator.errors import UserError
from trainer.job import layout
from trainer.job.settings import Settings
from trainer.job.spec import NotifyTarget

if TYPE_CHECKING:
    from trainer.job.spec import JobSpec

TEMPLATE = Path(__file__).parent.parent / "data" / "infra" / "spotctl.yaml"
OPERATOR_POLICY = TEMPLATE.with_name("operator-policy.json")  # kept exact by tests/orchestrator/test_operator_policy.py
DEFAULT_STACK = "spotctl"
DEFAULT_PREFIX = "spotctl"
WAIT_LIMIT_S = 1800

# What the bucket must have, checked through S3 (the template sets the same; `secure_bucket` repairs).
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
TLS_ONLY_SID = "DenyInsecureTransport"
ABORT_UPLOADS_RULE = "abort-incomplete-multipart-uploads"

# EC2 Spot's service-linked role: one per account, created by EC2 at the first spot request with the
# caller's credentials (a caller without iam:CreateServiceLinkedRole gets
# AuthFailure.ServiceLinkedRoleCreationNotPermitted from RunInstances), or beforehand by deploy.

# What the trainer role may write, relative to a job's prefix: the objects the trainer (and the
# bootstrap: its log, a final.json for a failure the trainer could not report) own, spelled by
# trainer.job.layout. Everything else under the prefix (job.yaml, record.json, control/, wheels/,
# datasets) it may only read, so a compromised instance cannot change what the next one boots with.
# infra/spotctl.yaml spells these ARNs; tests/orchestrator/test_infra.py holds the two equal.
TRAINER_WRITES = (
    f"{layout.CHECKPOINTS}/*",
    f"{layout.BEST}/*",
    f"{layout.ARTIFACTS}/*",
    f"{layout.METRICS}/*",
    f"{layout.LOGS}/*",
    layout.HEARTBEAT,
    layout.FINAL,
)
# What the trainer role is denied outright, relative to the storage prefix (its ReadUnderThePrefix grant
# would reach it): the jobs' notify targets, whose webhook URLs are credentials.
TRAINER_DENIED = (f"{layout.SECRETS}/*",)


def profile_path() -> Path:
    return Settings.from_env().home / "infra.json"


@dataclass
class Deployed:
    """A deployed stack's outputs, as recorded in the profile."""

    stack: str
    region: str
    bucket: str
    storage: str
    instance_profile: str
    security_group: str
    role_arn: str
    deployed_at: str
    # The security group's VPC (the default VPC), which the operator policy holds launches to; "" in a
    # profile written before it was recorded.
    vpc: str = ""
    # The S3 ARNs `--data-read` granted the role (the stack's DataReadArns parameter).
    data_read: list[str] = field(default_factory=list)
    # The controller (empty: left out with --no-controller, or a profile written before it existed):
    # its function, queue, dead-letter queue, log group, and the spotctl version and code it runs.
    controller_function: str = ""
    controller_queue: str = ""
    controller_dead_letters: str = ""
    controller_log_group: str = ""
    controller_version: str = ""
    controller_sha256: str = ""
    # `--notify`: the notify targets (e.g. {"slack": URL}) a job file without its own gets. Webhook URLs
    # are credentials: the profile is written readable by its owner only, and `shown()` masks them.
    notify: list[dict[str, str]] = field(default_factory=list)

    def shown(self) -> dict:
        """The profile entry as it may be printed: notify targets masked (trainer.job.secret)."""
        return {
            **asdict(self),
            "notify": [NotifyTarget.model_validate(t).model_dump(mode="json", exclude_none=True) for t in self.notify],
        }


@dataclass(frozen=True)
class ControllerCode:
    """The controller's Lambda zip (built by orchestrator.jobs.lambda_package)."""

    path: Path
    sha256: str
    version: str  # spotctl's


# --------------------------------------------------------------------------------------- the profile
def read_profile() -> Deployed | None:
    try:
        data = json.loads(profile_path().read_text())
        return Deployed(**data["stacks"][data["default"]])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def _write_profile(deployed: Deployed | None, forget: tuple[str, str] | None = None) -> None:
    path = profile_path()
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {"default": None, "stacks": {}}
    if deployed is not None:
        key = f"{deployed.region}/{deployed.stack}"
        data["stacks"][key] = asdict(deployed)
        data["default"] = key
    if forget is not None:
        key = f"{forget[0]}/{forget[1]}"
        data["stacks"].pop(key, None)
        if data["default"] == key:
            data["default"] = next(iter(data["stacks"]), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.chmod(temporary, 0o600)  # it may hold webhook URLs (`--notify`): the operator's alone
    os.replace(temporary, path)


def job_defaults(data: dict) -> dict:
    """What a job file may leave out, from the deployed stack: storage, instance profile, security
    group (and region). Nothing when the job names another region (the stack's resources are
    regional); only storage's bucket-bound role when the job's storage is the stack's."""
    deployed = read_profile()
    if deployed is None or data.get("region", deployed.region) != deployed.region:
        return {}
    defaults = {
        "region": deployed.region,
        "storage": deployed.storage,
        "compute": {"security_group": deployed.security_group},
    }
    if data.get("storage") in (None, deployed.storage):  # the role reaches the stack's bucket prefix only
        defaults["compute"]["instance_profile"] = deployed.instance_profile
    if deployed.notify:
        defaults["notify"] = {"targets": [dict(target) for target in deployed.notify]}
    return defaults


def notify_targets(given: tuple[str, ...]) -> list[dict[str, str]]:
    """`--notify KIND=ADDRESS` values (slack=https://hooks.slack.com/..., sns=arn:aws:sns:...) as
    profile entries, each checked as a job file's notify target would be."""
    from pydantic import ValidationError

    targets = []
    for item in given:
        kind, _, address = item.partition("=")
        try:
            NotifyTarget.model_validate({kind.strip(): address.strip()})
        except ValidationError as exc:
            error = exc.errors()[0]
            what = error["msg"] if error["type"] != "extra_forbidden" else f"'{kind.strip()[:20]}' is no kind of target"
            raise UserError(
                f"--notify {kind.strip()[:20]}=...: {what}",
                "write --notify KIND=ADDRESS, KIND one of webhook, slack, discord, sns",
            ) from None
        targets.append({kind.strip(): address.strip()})
    return targets


def trainer_write_arns(bucket_arn: str, prefix: str) -> list[str]:
    """The object ARNs the trainer role may write: TRAINER_WRITES under every job of the prefix."""
    return [f"{bucket_arn}/{prefix}/{layout.JOBS}/*/{path}" for path in TRAINER_WRITES]


def trainer_denied_arns(bucket_arn: str, prefix: str) -> list[str]:
    """The object ARNs the trainer role is denied every S3 action on: TRAINER_DENIED under the prefix."""
    return [f"{bucket_arn}/{prefix}/{path}" for path in TRAINER_DENIED]


def operator_policy(deployed: Deployed) -> dict:
    """infra/operator-policy.json for this stack: what the person or CI running spotctl needs."""
    if not deployed.vpc:
        raise UserError(
            f"the profile of stack {deployed.stack} predates the VPC the operator policy names",
            "run `spotctl infra deploy` again (it changes nothing in the stack) to record it",
        )
    text = OPERATOR_POLICY.read_text()
    for name, value in (
        ("Bucket", deployed.bucket),
        ("Prefix", prefix_of(deployed.storage)),
        ("TrainerRoleArn", deployed.role_arn),
        ("Account", deployed.role_arn.split(":")[4]),
        ("Region", deployed.region),
        ("Vpc", deployed.vpc),
        ("Stack", deployed.stack),
    ):
        text = text.replace("${" + name + "}", value)
    return json.loads(text)


# ------------------------------------------------------------------------------------------- deploy
def default_bucket_name(cloud: Cloud) -> str:
    """spotctl-<account>-<region>: unique per account and region, and the same on every deploy."""
    account = cloud.client("sts").get_caller_identity()["Account"]
    return f"spotctl-{account}-{cloud.region}"


def deploy(
    cloud: Cloud,
    stack: str = DEFAULT_STACK,
    bucket: str | None = None,
    prefix: str | None = None,
    expire_checkpoints_days: int | None = None,
    data_read: tuple[str, ...] | None = None,
    on_event: Callable[[str], None] = lambda line: None,
    vpc: str | None = None,
    controller: ControllerCode | None = None,
    notify: list[dict[str, str]] | None = None,
) -> tuple[Deployed, list[str]]:
    """Create or update the stack, wait for it, secure the bucket, record the profile. Returns the
    outputs and what `secure_bucket` had to set. On an update, what is not given (None) keeps its
    value from the stack: a re-deploy never moves the bucket or drops a dataset grant by omission.

    With `controller` the stack gets the controller running that code; without it, the controller is
    left out (removed from a stack that had it). The code lives in the stack's own bucket, so a new
    stack is created without it first, then updated once the code is uploaded."""
    current = stack_of(cloud, stack)
    given = {
        "BucketName": bucket,
        "Prefix": prefix,
        "CheckpointExpirationDays": None if expire_checkpoints_days is None else str(expire_checkpoints_days),
        "DataReadArns": None if data_read is None else ",".join(arn for item in data_read for arn in data_arns(item)),
        "VpcId": vpc,
    }
    if current is None:
        defaults = {
            "BucketName": bucket or default_bucket_name(cloud),
            "Prefix": DEFAULT_PREFIX,
            "CheckpointExpirationDays": "0",
            "DataReadArns": "",
            "VpcId": "",
        }
        given = {key: value if value is not None else defaults[key] for key, value in given.items()}
        _refuse_taken_bucket(cloud, given["BucketName"])
    else:  # a parameter the deployed template predates has no previous value to keep
        known = {p["ParameterKey"] for p in current.get("Parameters", [])}
        given = {key: "" if value is None and key not in known else value for key, value in given.items()}
    # Account-wide, not the stack's: CloudFormation's AWS::IAM::ServiceLinkedRole fails where it exists.
    on_event(f"service-linked role {SPOT_SERVICE_LINKED_ROLE}: {ensure_spot_service_linked_role(cloud)}")
    bucket_known = outputs_of(current).get("BucketName")
    if controller is not None and bucket_known:
        given.update(_controller_parameters(cloud, stack, current, bucket_known, given, controller, on_event))
    else:  # left out; or a new stack, whose bucket must exist before the code can be uploaded
        given.update(dict.fromkeys(CONTROLLER_PARAMETERS, ""))
    final = _apply(cloud, stack, current, given, on_event)
    if controller is not None and not bucket_known:
        given = {
            **{k: None for k in given},
            **_controller_parameters(cloud, stack, final, None, given, controller, on_event),
        }
        final = _apply(cloud, stack, final, given, on_event)
    outputs = outputs_of(final)
    before = read_profile()
    if notify is None:  # not given: the profile's targets for this stack stay
        notify = before.notify if before and (before.stack, before.region) == (stack, cloud.region) else []
    deployed = Deployed(
        stack=stack,
        region=cloud.region,
        bucket=outputs["BucketName"],
        storage=outputs["Storage"],
        instance_profile=outputs["InstanceProfile"],
        security_group=outputs["SecurityGroup"],
        role_arn=outputs["TrainerRoleArn"],
        deployed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        vpc=_vpc_of(cloud, outputs["SecurityGroup"]),
        data_read=_listed(_parameters(final).get("DataReadArns", "")),
        controller_function=outputs.get("ControllerFunction", ""),
        controller_queue=outputs.get("ControllerQueueUrl", ""),
        controller_dead_letters=outputs.get("ControllerDeadLetterQueueUrl", ""),
        controller_log_group=outputs.get("ControllerLogGroup", ""),
        controller_version=outputs.get("SpotctlVersion", ""),
        controller_sha256=outputs.get("ControllerCodeSha256", ""),
        notify=notify,
    )
    repaired = secure_bucket(cloud, deployed.bucket)
    _write_profile(deployed)
    return deployed, repaired


CONTROLLER_PARAMETERS = ("ControllerCodeKey", "ControllerCodeSha256", "SpotctlVersion", "ControllerVpc")


def _apply(cloud: Cloud, stack: str, current: dict | None, given: dict[str, str | None], on_event) -> dict:
    """create_stack or update_stack with these parameters (None: keep the previous value), wait, and
    refuse an end other than *_COMPLETE; the final description."""
    cf = cloud.client("cloudformation")
    parameters = [
        {"ParameterKey": k, "ParameterValue": v} if v is not None else {"ParameterKey": k, "UsePreviousValue": True}
        for k, v in given.items()
    ]
    request = {
        "StackName": stack,
        "TemplateBody": TEMPLATE.read_text(),
        "Capabilities": ["CAPABILITY_IAM"],
        "Parameters": parameters,
    }
    try:
        if current is None:
            on_event(f"creating stack {stack} in {cloud.region} (bucket {given['BucketName']})")
            cf.create_stack(**request, Tags=[{"Key": "spotctl:managed", "Value": "true"}])
        elif current["StackStatus"] == "ROLLBACK_COMPLETE":
            raise UserError(
                f"stack {stack} failed to create earlier and is in ROLLBACK_COMPLETE",
                f"delete it (`spotctl infra delete --stack {stack}`), then deploy again",
            )
        else:
            on_event(f"updating stack {stack} in {cloud.region}")
            cf.update_stack(**request)
    except botocore.exceptions.ClientError as exc:
        if "No updates are to be performed" not in describe(exc):
            raise as_user_error(exc, f"deploying stack {stack}") from None
        on_event(f"stack {stack} is up to date")
    final = wait(cloud, stack, on_event)
    if final["StackStatus"] not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise UserError(
            f"stack {stack} ended in {final['StackStatus']}: {_failure(cloud, stack) or final.get('StackStatusReason') or 'no reason given'}",
            "fix the cause, then deploy again (a stack that failed to create must be deleted first)",
        )
    return final


def _controller_parameters(
    cloud: Cloud,
    stack: str,
    current: dict,
    bucket: str | None,
    given: dict[str, str | None],
    code: ControllerCode,
    on_event: Callable[[str], None],
) -> dict[str, str]:
    """Upload the controller's code to the stack's bucket (once per sha256) and the parameters that
    name it. The VPC it may launch in is the security group's (the default VPC unless --vpc)."""
    outputs = outputs_of(current)
    bucket = bucket or outputs["BucketName"]
    prefix = given.get("Prefix") or _parameters(current).get("Prefix") or DEFAULT_PREFIX
    key = f"{prefix}/{layout.lambda_code(code.sha256, code.path.name)}"
    on_event(
        f"controller: spotctl {code.version}, code sha256 {code.sha256[:12]}: {upload_code(cloud, bucket, key, code)}"
    )
    return {
        "ControllerCodeKey": key,
        "ControllerCodeSha256": code.sha256,
        "SpotctlVersion": code.version,
        "ControllerVpc": given.get("VpcId") or _vpc_of(cloud, outputs["SecurityGroup"]),
    }


def upload_code(cloud: Cloud, bucket: str, key: str, code: ControllerCode) -> str:
    """Put the zip at its content-addressed key unless it is there; "uploaded" or "already uploaded"."""
    s3 = cloud.client("s3")
    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=code.path.read_bytes(),
            IfNoneMatch="*",  # the key names the content: one there already is this code
            ChecksumAlgorithm="SHA256",
        )
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
            return "already uploaded"
        raise as_user_error(exc, f"uploading the controller's code to s3://{bucket}/{key}") from None
    return "uploaded"


def ensure_spot_service_linked_role(cloud: Cloud) -> str:
    """Make sure the account has EC2 Spot's service-linked role; "created" or "present". Without it,
    the first spot launch of an operator held to infra/operator-policy.json fails with
    AuthFailure.ServiceLinkedRoleCreationNotPermitted (EC2 creates it with the caller's rights)."""
    try:
        cloud.client("iam").create_service_linked_role(AWSServiceName=SPOT_SERVICE)
        return "created"
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        # AWS: 400 InvalidInput "Service role name AWSServiceRoleForEC2Spot has been taken in this
        # account, please try a different suffix."; moto: EntityAlreadyExists. Both: it is there.
        if (code == "InvalidInput" and "has been taken" in describe(exc)) or code == "EntityAlreadyExists":
            return "present"
        error = as_user_error(exc, f"creating the {SPOT_SERVICE_LINKED_ROLE} service-linked role")
        if code in ("AccessDenied", "AccessDeniedException"):
            error = UserError(
                error.message,
                f"someone allowed to create it runs, once per account: {CREATE_SPOT_ROLE}",
            )
        raise error from None


def _vpc_of(cloud: Cloud, group: str) -> str:
    """The VPC of the stack's security group (where launch puts instances: the default VPC)."""
    try:
        return cloud.client("ec2").describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["VpcId"]
    except botocore.exceptions.ClientError as exc:
        raise as_user_error(exc, f"reading security group {group}") from None


def _refuse_taken_bucket(cloud: Cloud, bucket: str) -> None:
    """A new stack cannot take over an existing bucket (e.g. one kept by `infra delete`): say so before
    CloudFormation fails half-way and leaves a stack in ROLLBACK_COMPLETE."""
    try:
        cloud.client("s3").head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return
        if error_code(exc) not in ("403", "AccessDenied", "Forbidden"):
            raise as_user_error(exc, f"checking bucket {bucket}") from None
    raise UserError(
        f"bucket {bucket} already exists (kept from an earlier stack, or someone else's name)",
        "pass --bucket NEW-NAME, or delete the old bucket once you no longer need its jobs: aws s3 rb s3://"
        + bucket
        + " --force",
    )


def data_arns(location: str) -> list[str]:
    """`s3://bucket/prefix/` -> the bucket's ARN (to list) and the prefix's objects (to read); an ARN as is."""
    if location.startswith("arn:aws"):
        return [location]
    if not location.startswith("s3://") or not location[5:].split("/", 1)[0]:
        raise UserError(
            f"--data-read {location!r} is neither s3://bucket/prefix nor an S3 ARN",
            "e.g. --data-read s3://my-datasets/imagenet/",
        )
    bucket, _, key = location[5:].partition("/")
    key = key.strip("/")
    return [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{key + '/' if key else ''}*"]


def _parameters(stack: dict) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}


def _listed(value: str) -> list[str]:
    """A CommaDelimitedList parameter's items. AWS gives "a,b"; moto's CloudFormation gives the Python
    repr of the list ("['a', 'b']")."""
    if value.startswith("[") and value.endswith("]"):
        import ast

        return [item for item in ast.literal_eval(value) if item]
    return [item for item in value.split(",") if item]


def data_outside_role(spec: JobSpec, deployed: Deployed | None) -> list[str]:
    """Warnings for the job's s3:// data and weights the stack's instance role may not read: neither
    under the stack's storage prefix nor granted by `--data-read`. The trainer would otherwise find
    out on the instance, after the boot and install were paid for. Nothing is said of a job that runs
    with another instance profile (its rights are not known here) or in another region."""
    if (
        deployed is None
        or spec.region != deployed.region
        or spec.compute.instance_profile not in (deployed.instance_profile, _profile_arn(deployed))
    ):
        return []
    readable = [f"arn:aws:s3:::{deployed.bucket}/{prefix_of(deployed.storage)}/*", *deployed.data_read]
    warnings = []
    for name, url in (
        ("train.data.train", spec.train.data.train),
        ("train.data.val", spec.train.data.val),
        ("train.model.weights", spec.train.model.weights),
    ):
        if not url or not url.startswith("s3://"):
            continue
        bucket, _, key = url[5:].partition("/")
        key = key.rstrip("/")
        # A folder is read object by object beneath it; a file (a .tar, weights) is read itself.
        objects = [f"arn:aws:s3:::{bucket}/{key}", f"arn:aws:s3:::{bucket}/{key}/x"]
        if not any(_arn_matches(pattern, arn) for pattern in readable for arn in objects):
            warnings.append(
                f"{name} {url} is outside what stack {deployed.stack}'s instance role may read "
                f"({deployed.storage}/ and {', '.join(deployed.data_read) or 'no --data-read grant'}): "
                "the trainer would be refused once the instance has booted; move the data under "
                f"{deployed.storage}/, or grant it with `spotctl infra deploy --data-read s3://{bucket}/{key}/`"
            )
    return warnings


def _profile_arn(deployed: Deployed) -> str:
    account = deployed.role_arn.split(":")[4] if deployed.role_arn.count(":") >= 5 else ""
    return f"arn:aws:iam::{account}:instance-profile/{deployed.instance_profile}"


def _arn_matches(pattern: str, arn: str) -> bool:
    """IAM's Resource matching: `*` any run of characters (slashes too), `?` one character."""
    return re.fullmatch(".*".join(".".join(map(re.escape, p.split("?"))) for p in pattern.split("*")), arn) is not None


def outputs_of(stack: dict | None) -> dict[str, str]:
    """A described stack's outputs by key ({} for no stack)."""
    return {o["OutputKey"]: o["OutputValue"] for o in (stack or {}).get("Outputs", [])}


def prefix_of(storage: str) -> str:
    """The key prefix of a stack's `s3://bucket/prefix` Storage output."""
    return storage.split("/", 3)[3] if storage.count("/") >= 3 else DEFAULT_PREFIX


def stack_of(cloud: Cloud, stack: str) -> dict | None:
    try:
        return cloud.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    except botocore.exceptions.ClientError as exc:
        if "does not exist" in describe(exc):
            return None
        raise as_user_error(exc, f"reading stack {stack}") from None


def wait(
    cloud: Cloud,
    stack: str,
    on_event: Callable[[str], None],
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Poll until the stack leaves *_IN_PROGRESS; the last description (or {"StackStatus": "DELETE_COMPLETE"})."""
    started, last = clock(), None
    while True:
        current = stack_of(cloud, stack)
        if current is None:
            return {"StackStatus": "DELETE_COMPLETE"}
        status = current["StackStatus"]
        if status != last:
            on_event(f"{stack}: {status}")
            last = status
        if not status.endswith("_IN_PROGRESS"):
            return current
        if clock() - started > WAIT_LIMIT_S:
            raise UserError(
                f"stack {stack} is still {status} after {WAIT_LIMIT_S // 60} minutes",
                "see its events in the CloudFormation console; `spotctl infra status` shows where it is",
            )
        time.sleep(poll_s)


def _failure(cloud: Cloud, stack: str) -> str | None:
    """The first resource failure of the stack's latest operation, which says more than the stack's."""
    try:
        events = cloud.client("cloudformation").describe_stack_events(StackName=stack)["StackEvents"]
    except botocore.exceptions.ClientError:
        return None
    failed = [
        e for e in reversed(events) if e.get("ResourceStatus", "").endswith("_FAILED") and e.get("ResourceStatusReason")
    ]
    return f"{failed[0]['LogicalResourceId']}: {failed[0]['ResourceStatusReason']}" if failed else None


# --------------------------------------------------------------------------------------- the bucket
def plain_http_endpoint(cloud: Cloud) -> str | None:
    """The endpoint, when S3 is reached without TLS (the local cloud, a moto server). There a TLS-only
    policy could never be satisfied and would refuse every request, spotctl's own included (moto
    also evaluates any conditional Deny as a Deny), so it is not set there, and reported as such."""
    endpoint = cloud.client("s3").meta.endpoint_url
    return endpoint if endpoint.startswith("http://") else None


def bucket_checks(cloud: Cloud, bucket: str) -> dict[str, bool | None]:
    """The bucket's guarantees as S3 itself reports them (not as the template says); None: not
    applicable here (tls_only on a plain-HTTP endpoint)."""
    s3 = cloud.client("s3")

    def read(call: str, **kwargs):
        try:
            return getattr(s3, call)(Bucket=bucket, **kwargs)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc).startswith(("NoSuch", "ServerSideEncryptionConfigurationNotFound")):
                return None
            raise as_user_error(exc, f"reading the settings of bucket {bucket}") from None

    block = read("get_public_access_block")
    encryption = read("get_bucket_encryption")
    policy = read("get_bucket_policy")
    lifecycle = read("get_bucket_lifecycle_configuration")
    statements = json.loads(policy["Policy"]).get("Statement", []) if policy else []
    rules = lifecycle.get("Rules", []) if lifecycle else []
    return {
        "public_access_blocked": bool(block)
        and all(block["PublicAccessBlockConfiguration"].get(k) for k in PUBLIC_ACCESS_BLOCK),
        "encrypted_at_rest": bool(encryption) and bool(encryption["ServerSideEncryptionConfiguration"].get("Rules")),
        "tls_only": None
        if plain_http_endpoint(cloud)
        else any(
            s.get("Effect") == "Deny"
            and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
            for s in statements
        ),
        "aborts_incomplete_uploads": any(
            r.get("Status") == "Enabled" and r.get("AbortIncompleteMultipartUpload") for r in rules
        ),
    }


def secure_bucket(cloud: Cloud, bucket: str) -> list[str]:
    """Set whatever `bucket_checks` finds missing; returns the names of what was set."""
    s3 = cloud.client("s3")
    checks = bucket_checks(cloud, bucket)
    arn = f"arn:aws:s3:::{bucket}"
    fixes = {
        "public_access_blocked": lambda: s3.put_public_access_block(
            Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK
        ),
        "encrypted_at_rest": lambda: s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        ),
        # Added to what is there, never replacing it: the bucket may have statements and rules of its own.
        "tls_only": lambda: s3.put_bucket_policy(
            Bucket=bucket,
            Policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        *_current(s3, "get_bucket_policy", bucket, lambda r: json.loads(r["Policy"])["Statement"]),
                        {
                            "Sid": TLS_ONLY_SID,
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [arn, f"{arn}/*"],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        },
                    ],
                }
            ),
        ),
        "aborts_incomplete_uploads": lambda: s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [
                    *[
                        r
                        for r in _current(s3, "get_bucket_lifecycle_configuration", bucket, lambda r: r["Rules"])
                        if r.get("ID") != ABORT_UPLOADS_RULE
                    ],
                    {
                        "ID": ABORT_UPLOADS_RULE,
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                    },
                ]
            },
        ),
    }
    repaired = []
    for name, ok in checks.items():
        if ok is False:
            try:
                fixes[name]()
            except botocore.exceptions.ClientError as exc:
                raise as_user_error(exc, f"securing bucket {bucket} ({name})") from None
            repaired.append(name)
    return repaired


def _current(s3, call: str, bucket: str, pick: Callable[[dict], list]) -> list:
    """The bucket's present statements or rules ([] when it has none)."""
    try:
        return pick(getattr(s3, call)(Bucket=bucket))
    except botocore.exceptions.ClientError as exc:
        if error_code(exc).startswith("NoSuch"):
            return []
        raise


# ------------------------------------------------------------------------------------------- delete
def jobs_in(cloud: Cloud, bucket: str, prefix: str) -> int:
    """How many job folders the bucket holds under `<prefix>/jobs/`."""
    found = cloud.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/jobs/", Delimiter="/")
    return len(found.get("CommonPrefixes", []))


# Not yet terminated: an instance in these states still holds its network interface in the group.
HOLDING_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
TERMINATION_WAIT_S = 600


def instances_using(cloud: Cloud, outputs: dict[str, str]) -> list[tuple[str, str]]:
    """spotctl's instances, not yet terminated, that run with the stack's security group or instance
    profile: (instance id, job id), by id."""
    group, profile = outputs.get("SecurityGroup"), outputs.get("InstanceProfileArn")
    pages = (
        cloud.client("ec2")
        .get_paginator("describe_instances")
        .paginate(
            Filters=[
                {"Name": "tag-key", "Values": [TAG_JOB]},
                {"Name": "instance-state-name", "Values": list(HOLDING_STATES)},
            ]
        )
    )
    found = []
    try:
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    groups = {g["GroupId"] for g in instance.get("SecurityGroups", [])}
                    uses_profile = profile and instance.get("IamInstanceProfile", {}).get("Arn") == profile
                    if group in groups or uses_profile:
                        job = next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == TAG_JOB), "?")
                        found.append((instance["InstanceId"], job))
    except botocore.exceptions.ClientError as exc:
        raise as_user_error(exc, "listing spotctl's instances") from None
    return sorted(found)


def _terminate_and_wait(cloud: Cloud, instances: list[tuple[str, str]], on_event: Callable[[str], None]) -> None:
    from orchestrator.aws.ec2 import terminate

    ids = [instance for instance, _ in instances]
    on_event(f"terminating {len(ids)} instance{'s' if len(ids) != 1 else ''}: {', '.join(ids)}")
    try:
        terminate(cloud, ids)
        cloud.client("ec2").get_waiter("instance_terminated").wait(
            InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": TERMINATION_WAIT_S // 5}
        )
    except botocore.exceptions.WaiterError:
        raise UserError(
            f"instances {', '.join(ids)} are not terminated after {TERMINATION_WAIT_S // 60} minutes",
            "see them in the EC2 console, then run `spotctl infra delete` again",
        ) from None
    except botocore.exceptions.ClientError as exc:
        raise as_user_error(exc, f"terminating {', '.join(ids)}") from None


def delete(
    cloud: Cloud,
    stack: str = DEFAULT_STACK,
    force: bool = False,
    on_event: Callable[[str], None] = lambda line: None,
    terminate_instances: bool = False,
) -> str:
    """Delete the stack; returns what became of the bucket. Instances still using the stack's group
    or profile are refused (CloudFormation would fail on the group, DependencyViolation, and end in
    DELETE_FAILED), or terminated first with `terminate_instances`."""
    current = stack_of(cloud, stack)
    if current is None:
        raise UserError(
            f"there is no stack {stack} in {cloud.region}",
            "`spotctl infra status` shows the deployed stack and its region",
        )
    outputs = outputs_of(current)
    running = instances_using(cloud, outputs)
    if running and not terminate_instances:
        listed = ", ".join(f"{instance} (job {job})" for instance, job in running)
        raise UserError(
            f"{len(running)} spotctl instance{'s' if len(running) != 1 else ''} still run{'s' if len(running) == 1 else ''} "
            f"with stack {stack}'s security group or instance profile: {listed}",
            "stop the jobs first (`spotctl stop JOB`), or pass --terminate-instances to terminate them before deleting",
        )
    bucket, prefix = outputs.get("BucketName"), prefix_of(outputs.get("Storage", ""))
    count = jobs_in(cloud, bucket, prefix) if bucket else 0
    if count and not force:
        raise UserError(
            f"bucket {bucket} holds {count} job{'s' if count != 1 else ''} under {prefix}/jobs/; deleting the stack removes the role and "
            "security group they run with",
            "stop them and keep what you need (`spotctl artifacts JOB --download DIR`), then pass --force",
        )
    if running:
        _terminate_and_wait(cloud, running, on_event)
    on_event(f"deleting stack {stack} in {cloud.region}")
    try:
        cloud.client("cloudformation").delete_stack(StackName=stack)
    except botocore.exceptions.ClientError as exc:
        raise as_user_error(exc, f"deleting stack {stack}") from None
    final = wait(cloud, stack, on_event)
    if final["StackStatus"] != "DELETE_COMPLETE":
        raise UserError(
            f"stack {stack} ended in {final['StackStatus']}: {_failure(cloud, stack) or 'no reason given'}",
            "see its events in the CloudFormation console",
        )
    _write_profile(None, forget=(cloud.region, stack))
    return _drop_bucket_if_empty(cloud, bucket) if bucket else "no bucket"


def _drop_bucket_if_empty(cloud: Cloud, bucket: str) -> str:
    s3 = cloud.client("s3")
    try:
        listed = s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "NoSuchBucket":
            return f"bucket {bucket} is gone"
        raise as_user_error(exc, f"reading bucket {bucket}") from None
    if listed.get("KeyCount", 0):
        return f"bucket {bucket} kept with its objects (delete it yourself when you no longer need them: aws s3 rb s3://{bucket} --force)"
    s3.delete_bucket(Bucket=bucket)
    return f"bucket {bucket} was empty and is deleted"


# --------------------------------------------------------------------------------- the controller
# A tick older than this (five missed schedules) means the controller is not running.
TICK_LATE_S = 300
HEALTHY = ("ok", "waiting for the first tick")
ERRORS_WINDOW_S = 3600


def controller_health(
    cloud: Cloud, outputs: dict[str, str], since: datetime | None = None, now: datetime | None = None
) -> dict | None:
    """The controller's health, from AWS and its tick document: None when the stack has none.

    tick            the last tick document (controller/tick.json under the storage root), as written,
                    or None; read leniently, field by field as a dict
    tick_age_s      seconds since its `at` (trainer.job.documents.ControllerTick)
    queue           messages waiting, and in flight (received, not yet deleted)
    dead_letters    messages that failed maxReceiveCount times (or EventBridge could not deliver)
    errors_last_hour  log events with ERROR in the function's log group over the last hour
    health          ok | waiting for the first tick | late | failing (`since`: when the stack was last
                    deployed; no tick TICK_LATE_S after it is late)
    """
    if "ControllerFunction" not in outputs:
        return None
    now = now or datetime.now(timezone.utc)
    tick = _read_tick(cloud, outputs)
    age = _age_s(tick.get("at") if tick else None, now)
    sqs = cloud.client("sqs")

    def depth(url: str) -> dict[str, int]:
        try:
            attributes = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
        except botocore.exceptions.ClientError as exc:
            raise as_user_error(exc, f"reading queue {url}") from None
        return {
            "waiting": int(attributes.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }

    queue = depth(outputs["ControllerQueueUrl"])
    dead = depth(outputs["ControllerDeadLetterQueueUrl"])["waiting"]
    errors = _errors_since(cloud, outputs["ControllerLogGroup"], now)
    if dead or errors:
        health = "failing"
    elif age is None:
        waited = (now - since).total_seconds() if since else 0
        health = "late" if waited > TICK_LATE_S else "waiting for the first tick"
    elif age > TICK_LATE_S:
        health = "late"
    else:
        health = "ok"
    return {
        "function": outputs["ControllerFunction"],
        "version": outputs.get("SpotctlVersion", ""),
        "code_sha256": outputs.get("ControllerCodeSha256", ""),
        "tick": tick,
        "tick_age_s": age,
        "queue": queue,
        "dead_letters": dead,
        "errors_last_hour": errors,
        "health": health,
    }


def _read_tick(cloud: Cloud, outputs: dict[str, str]) -> dict | None:
    """The tick document as a dict; None when there is none yet (or it is not a JSON object)."""
    storage = outputs.get("Storage", "")
    bucket, prefix = outputs.get("BucketName", ""), prefix_of(storage)
    key = f"{prefix}/{layout.CONTROLLER_TICK}"
    s3 = cloud.client("s3")
    try:
        # Listed first: S3 answers a missing key with 403, not 404, to a principal held to a prefix.
        if not s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount"):
            return None
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise as_user_error(exc, f"reading {storage}/{layout.CONTROLLER_TICK}") from None
    try:
        tick = json.loads(body)
    except ValueError:
        return None
    return tick if isinstance(tick, dict) else None


def _age_s(value, now: datetime) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return max(0.0, (now - at).total_seconds())


def _errors_since(cloud: Cloud, group: str, now: datetime) -> int:
    """Log events with ERROR (Python logging's level name, and Lambda's own errors) in the last hour."""
    logs = cloud.client("logs")
    start = int((now.timestamp() - ERRORS_WINDOW_S) * 1000)
    count, token = 0, None
    try:
        while True:
            page = logs.filter_log_events(
                logGroupName=group, startTime=start, filterPattern='"ERROR"', **({"nextToken": token} if token else {})
            )
            count += len(page.get("events", []))
            token = page.get("nextToken")
            if not token or count >= 10_000:
                return count
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return 0
        raise as_user_error(exc, f"reading log group {group}") from None
