"""The only place that builds boto3 clients, and the classification of AWS errors.

Every cloud call goes through a `Cloud` (region + profile + the standard credential chain, or an
explicit endpoint and credentials: the local cloud). Retrying is botocore's, configured here and
nowhere else: `standard` mode (throttling and transient errors, exponential backoff with jitter) for
most calls, `adaptive` (standard plus client-side rate limiting) for the bursts of describe calls
that listing offers and following many jobs make, and a single attempt for RunInstances: EC2 says
"no capacity" with HTTP 500, which botocore would retry four times on a pool that just refused,
and the launcher moves on to the next offer instead (its ClientToken makes that safe).

Errors are classified before anyone decides anything: capacity and price errors move a launch to the
next offer, a quota refusal skips the offers of the same quota bucket, auth and configuration errors
stop with a hint.
"""

from __future__ import annotations

import enum
import functools
import os
from dataclasses import dataclass
from typing import Literal

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.config import Config

from orchestrator.aws.instances import CREATE_SPOT_ROLE
from orchestrator.errors import UserError
from trainer.job.storage import bad_credentials


class ErrorKind(enum.Enum):
    CAPACITY = "capacity"  # this offer cannot be had now: try the next one
    QUOTA = "quota"  # the account's limit for this bucket of instance types: skip the bucket, say which quota
    THROTTLE = "throttle"  # too many requests: back off and repeat
    AUTH = "auth"  # credentials or permissions: stop, with a hint
    CONFIG = "config"  # a wrong AMI, subnet, profile...: stop, with a hint
    NOT_FOUND = "not_found"
    OTHER = "other"


CAPACITY_CODES = {
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "SpotMaxPriceTooLow",
    "Unsupported",
    "UnfulfillableCapacity",
    "InsufficientFreeAddressesInSubnet",
}
# Spot quotas are vCPUs per bucket of families (orchestrator.aws.quotas): no other pool of the bucket
# will do, and waiting helps only if other spot instances of the account end.
QUOTA_CODES = {"MaxSpotInstanceCountExceeded", "VcpuLimitExceeded", "InstanceLimitExceeded"}
THROTTLE_CODES = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "SlowDown",
    "TooManyRequestsException",
    "RequestThrottled",
}
AUTH_CODES = {
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "AccessDenied",
    "AccessDeniedException",
    "OptInRequired",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
}
CONFIG_CODES = {
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Malformed",
    "InvalidSubnetID.NotFound",
    "InvalidGroup.NotFound",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "InvalidParameter",
    "InvalidInstanceType",
    "InvalidBlockDeviceMapping",
    "ParameterNotFound",
    "InvalidKeyPair.NotFound",
    "InvalidIamInstanceProfile.NotFound",
    "NoSuchBucket",
    "NoSuchEntity",
}


def error_code(error: BaseException) -> str:
    if isinstance(error, botocore.exceptions.ClientError):
        return error.response.get("Error", {}).get("Code", "")
    return ""


def classify(error: BaseException) -> ErrorKind:
    code = error_code(error)
    if bad_credentials(error):  # missing or refused credentials: stop with the hint, never retried
        return ErrorKind.AUTH
    if code in CAPACITY_CODES:
        return ErrorKind.CAPACITY
    if code in QUOTA_CODES:
        return ErrorKind.QUOTA
    if code in THROTTLE_CODES:
        return ErrorKind.THROTTLE
    if code in AUTH_CODES or code.startswith("AuthFailure."):  # e.g. AuthFailure.ServiceLinkedRoleCreationNotPermitted
        return ErrorKind.AUTH
    if code in CONFIG_CODES or code.startswith("Invalid"):
        return ErrorKind.CONFIG
    if code.endswith("NotFound") or code in ("NoSuchKey", "404"):
        return ErrorKind.NOT_FOUND
    return ErrorKind.OTHER


def profile_not_propagated(error: BaseException) -> bool:
    """EC2 does not know an instance profile yet: IAM is eventually consistent, and a new profile
    stays "invalid" to EC2 for up to about two minutes (InvalidParameterValue naming iamInstanceProfile)."""
    message = (
        error.response.get("Error", {}).get("Message", "") if isinstance(error, botocore.exceptions.ClientError) else ""
    )
    return error_code(error) == "InvalidParameterValue" and "iamInstanceProfile" in message


def describe(error: BaseException) -> str:
    """`Code: message` of an AWS error, without the botocore framing."""
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        return f"{info.get('Code', '?')}: {info.get('Message', '')}".rstrip(": ")
    return str(error)


def as_user_error(error: BaseException, doing: str) -> UserError:
    """One clear message for an error a person has to fix."""
    kind = classify(error)
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return UserError(
            f"no AWS credentials found while {doing}",
            "run `aws configure`, set AWS_PROFILE, or export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        )
    if isinstance(error, botocore.exceptions.ProfileNotFound):
        return UserError(f"{error} while {doing}", "list your profiles with `aws configure list-profiles`")
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return UserError(
            f"cannot reach AWS while {doing} ({error})",
            "check the network, the region, and AWS_ENDPOINT_URL if you set it",
        )
    if error_code(error) == "AuthFailure.ServiceLinkedRoleCreationNotPermitted":
        return UserError(
            f"AWS refused {doing}: the account has no Spot service-linked role (AWSServiceRoleForEC2Spot) "
            "and these credentials may not create it",
            f"run `spotctl infra deploy` once (it creates the role), or `{CREATE_SPOT_ROLE}`",
        )
    if kind is ErrorKind.AUTH:
        hint = "check the credentials and that they allow this call (infra/ has the policy spotctl needs)"
        if error_code(error) == "UnauthorizedOperation":  # EC2 says which statement refused, encoded
            hint += "; `aws sts decode-authorization-message --encoded-message MESSAGE` (the text after 'Encoded authorization failure message:') says which resource or condition was refused"
        return UserError(f"AWS refused {doing}: {describe(error)}", hint)
    return UserError(f"{doing} failed: {describe(error)}")


Retries = Literal["standard", "adaptive", "once"]


@dataclass(frozen=True)
class Endpoint:
    """An AWS look-alike to talk to instead of AWS (the local cloud), with its own credentials."""

    url: str
    access_key: str
    secret_key: str


class Cloud:
    """boto3 clients for one region and profile (or endpoint), each built once per retry mode."""

    def __init__(
        self, region: str, profile: str | None = None, max_attempts: int | None = None, endpoint: Endpoint | None = None
    ):
        self.region, self.profile, self.endpoint = region, profile, endpoint
        try:
            self._session = _session(profile, region, endpoint)
        except botocore.exceptions.ProfileNotFound as exc:
            raise as_user_error(exc, "reading the AWS configuration") from None
        self._attempts = max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS", 5))
        self._clients: dict[tuple[str, str | None, str, float], object] = {}

    def client(self, service: str, region: str | None = None, retries: Retries = "standard", timeout_s: float = 0):
        """A client of `service`; `retries`: "standard", "adaptive" (describe bursts), "once" (run_instances);
        `timeout_s`: connect and read timeouts for calls that must not hold their caller (a notification)."""
        key = (service, region, retries, timeout_s)
        if key not in self._clients:
            # total_max_attempts counts the first try (AWS_MAX_ATTEMPTS does too); botocore's
            # "max_attempts" here would count retries only, one more call than meant.
            attempts = 1 if retries == "once" else self._attempts
            config = Config(
                retries={"mode": "standard" if retries == "once" else retries, "total_max_attempts": attempts},
                connect_timeout=timeout_s or 10,
                read_timeout=timeout_s or 60,
            )
            extra = {"endpoint_url": self.endpoint.url} if self.endpoint else {}
            self._clients[key] = self._session.client(
                service, region_name=region or self.region, config=config, **extra
            )
        return self._clients[key]

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options that reach the same account (profile, or endpoint and credentials)."""
        return storage_options(self.endpoint, self.profile)


@functools.cache
def _models() -> botocore.loaders.Loader:
    """One loader of service models for the process: every session would parse them again (EC2's is
    large), which a CLI invocation, or a watcher building a Cloud per region, pays for each time."""
    return botocore.loaders.create_loader()


# What a session for an explicit endpoint reads of the user's own AWS set-up: nothing. No profile from
# AWS_PROFILE, no config or credentials file: the local cloud, and only it (a profile named in the
# shell for real AWS must neither break `--local` nor leak settings into it).
_ISOLATED = {
    "profile": (None, None, None, None),
    "config_file": (None, None, os.devnull, None),
    "credentials_file": (None, None, os.devnull, None),
}


def _session(profile: str | None, region: str, endpoint: Endpoint | None) -> boto3.Session:
    core = botocore.session.Session(session_vars=_ISOLATED if endpoint is not None else None)
    core.register_component("data_loader", _models())
    if endpoint is None:
        session = boto3.Session(botocore_session=core, profile_name=profile, region_name=region)
    else:
        session = boto3.Session(
            botocore_session=core,
            aws_access_key_id=endpoint.access_key,
            aws_secret_access_key=endpoint.secret_key,
            region_name=region,
        )
    paths = _models().search_paths
    paths[:] = dict.fromkeys(paths)  # each boto3 session appends its data folder to the shared loader
    return session


def storage_options(endpoint: Endpoint | None, profile: str | None) -> dict:
    """s3fs options for an endpoint (the local cloud) or a profile; none for the default chain."""
    if endpoint is not None:
        return {
            "key": endpoint.access_key,
            "secret": endpoint.secret_key,
            "endpoint_url": endpoint.url,
            "session": _isolated_s3_session(),
        }
    return {"profile": profile} if profile else {}


@functools.cache
def _isolated_s3_session():
    """s3fs's (aiobotocore) session for an explicit endpoint, isolated as above; one, so that s3fs's
    filesystem cache still recognises the same options."""
    from aiobotocore.session import AioSession

    return AioSession(session_vars=_ISOLATED)
