"""The only place that builds boto3 clients, and the classification of AWS errors.

Every cloud call goes through a `Cloud` (region + profile + the standard credential chain;
`AWS_ENDPOINT_URL` points it at a moto server or the local cloud). Errors are classified before anyone
decides to retry: capacity and price errors move a launch to the next offer, throttling backs off,
auth and configuration errors stop with a hint.
"""

from __future__ import annotations

import enum
import functools
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config

from orchestrator.errors import UserError

T = TypeVar("T")


class ErrorKind(enum.Enum):
    CAPACITY = "capacity"  # this offer cannot be had now: try the next one
    THROTTLE = "throttle"  # too many requests: back off and repeat
    AUTH = "auth"  # credentials or permissions: stop, with a hint
    CONFIG = "config"  # a wrong AMI, subnet, profile...: stop, with a hint
    NOT_FOUND = "not_found"
    OTHER = "other"


CAPACITY_CODES = {
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded", "VcpuLimitExceeded", "Unsupported",
    "UnfulfillableCapacity", "InsufficientFreeAddressesInSubnet",
}
THROTTLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "SlowDown", "TooManyRequestsException", "RequestThrottled"}
AUTH_CODES = {
    "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
    "AccessDenied", "AccessDeniedException", "OptInRequired", "UnrecognizedClientException", "InvalidAccessKeyId",
}
CONFIG_CODES = {
    "InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidSubnetID.NotFound", "InvalidGroup.NotFound", "InvalidParameterValue",
    "InvalidParameterCombination", "InvalidParameter", "InvalidInstanceType", "InvalidBlockDeviceMapping", "ParameterNotFound",
    "InvalidKeyPair.NotFound", "InvalidIamInstanceProfile.NotFound", "NoSuchBucket", "NoSuchEntity",
}


def error_code(error: BaseException) -> str:
    if isinstance(error, botocore.exceptions.ClientError):
        return error.response.get("Error", {}).get("Code", "")
    return ""


def classify(error: BaseException) -> ErrorKind:
    code = error_code(error)
    if isinstance(error, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return ErrorKind.AUTH
    if code in CAPACITY_CODES:
        return ErrorKind.CAPACITY
    if code in THROTTLE_CODES:
        return ErrorKind.THROTTLE
    if code in AUTH_CODES:
        return ErrorKind.AUTH
    if code in CONFIG_CODES or code.startswith("Invalid"):
        return ErrorKind.CONFIG
    if code.endswith("NotFound") or code in ("NoSuchKey", "404"):
        return ErrorKind.NOT_FOUND
    return ErrorKind.OTHER


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
        return UserError(f"no AWS credentials found while {doing}", "run `aws configure`, set AWS_PROFILE, or export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if isinstance(error, botocore.exceptions.ProfileNotFound):
        return UserError(f"{error} while {doing}", "list your profiles with `aws configure list-profiles`")
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return UserError(f"cannot reach AWS while {doing} ({error})", "check the network, the region, and AWS_ENDPOINT_URL if you set it")
    if kind is ErrorKind.AUTH:
        return UserError(f"AWS refused {doing}: {describe(error)}", "check the credentials and that they allow this call (infra/ has the policy spotctl needs)")
    return UserError(f"{doing} failed: {describe(error)}")


class Cloud:
    """boto3 clients for one region and profile, built once each."""

    def __init__(self, region: str, profile: str | None = None, max_attempts: int | None = None):
        self.region, self.profile = region, profile
        try:
            self._session = boto3.Session(profile_name=profile, region_name=region)
        except botocore.exceptions.ProfileNotFound as exc:
            raise as_user_error(exc, "reading the AWS configuration") from None
        attempts = max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS", 5))
        self._config = Config(retries={"mode": "standard", "max_attempts": attempts}, connect_timeout=10, read_timeout=60)

    @functools.cache
    def client(self, service: str, region: str | None = None):
        return self._session.client(service, region_name=region or self.region, config=self._config)

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options that use the same profile."""
        return {"profile": self.profile} if self.profile else {}


def with_backoff(call: Callable[[], T], attempts: int = 6, sleep: Callable[[float], None] = time.sleep, base: float = 1.0) -> T:
    """Repeat `call` while AWS throttles it (exponential backoff with jitter); anything else is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except botocore.exceptions.ClientError as exc:
            if classify(exc) is not ErrorKind.THROTTLE or attempt == attempts:
                raise
            sleep(min(30.0, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")
