"""Test helpers: a moto server on 127.0.0.1 and tiny real ImageFolder datasets.

Used by conftest.py's fixtures; importable by benchmarks that need the same pieces.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from orchestrator.local.daemon import free_port
from orchestrator.local.imds import Imds
from orchestrator.local.strict import Strictness, StrictProxy
from trainer import sample_data

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class MotoServer:
    """A real moto server (s3fs cannot talk to in-process mocks), bound to loopback only, behind the
    strict local cloud's proxy (orchestrator.local.strict): clients use `endpoint`, the proxy's, and
    meet AWS's answers where moto's are kinder. `strictness` is what the suite runs with."""

    def __init__(self, strictness: Strictness | None = None) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.moto_endpoint = f"http://127.0.0.1:{self.port}"
        self.strict = StrictProxy(self.moto_endpoint, strictness)
        self.endpoint = self.strict.endpoint

    running: MotoServer | None = None  # the one started last (tests reading EC2's settled truth)

    def start(self) -> MotoServer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server.start()
        self.strict.start()
        MotoServer.running = self
        return self

    def bound_address(self) -> tuple[str, int]:
        return tuple(self._server._server.server_address)

    def stop(self) -> None:
        self.strict.stop()
        self._server.stop()

    def reset(self) -> None:
        """Forget every bucket, instance and parameter (moto's own reset API), and the proxy's state
        and settings (back to the suite's strictness)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def be_strict(self, **changes) -> None:
        """Change what the strict proxy refuses until the next reset (orchestrator.local.strict.Strictness)."""
        self.strict.strictness.update(changes)

    def wait_consistent(self) -> None:
        """Until EC2 knows every instance started so far (it is eventually consistent, as AWS is)."""
        self.strict.wait_consistent()

    def calls(self) -> dict[str, int]:
        """Calls per `service:Action:answer` the proxy saw since the reset."""
        return dict(self.strict.calls)

    def seed_deep_learning_ami(self, region: str = "us-east-1") -> str:
        """What real AWS has and moto lacks: the Deep Learning AMI's SSM parameter. Returns the AMI id."""
        import boto3

        from orchestrator.local.aws import seed_deep_learning_ami

        return seed_deep_learning_ami(
            boto3.client("ec2", region_name=region, endpoint_url=self.endpoint, **_credentials()), region
        )

    def route_default_vpc_to_the_internet(self, region: str = "us-east-1") -> None:
        """What a real default VPC has and moto's lacks: an internet gateway route (orchestrator.local.aws)."""
        import boto3

        from orchestrator.local.aws import route_default_vpc_to_the_internet

        route_default_vpc_to_the_internet(
            boto3.client("ec2", region_name=region, endpoint_url=self.endpoint, **_credentials())
        )

    def interrupt(self, instance_id: str, region: str = "us-east-1") -> None:
        """What EC2 does to a spot instance it reclaims and moto never does (orchestrator.local.aws)."""
        from orchestrator.local.aws import spot_interrupt

        spot_interrupt(instance_id, region)

    def environment(self, region: str = "us-east-1") -> dict[str, str]:
        """What an AWS client needs to reach this server, and only it."""
        return aws_environment(self.endpoint, region)


def aws_environment(endpoint: str, region: str = "us-east-1") -> dict[str, str]:
    """The environment that points every AWS client (boto3, s3fs, the AWS CLI) at `endpoint` only."""
    return {
        **DUMMY_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        # moto answers calls it lacks with HTTP 500: fail fast instead of retrying them.
        "AWS_MAX_ATTEMPTS": "2",
        "AWS_RETRY_MODE": "standard",
        # Never ask the real instance-metadata service for credentials.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


# Environment variables that could point a test at a real account.
AWS_VARIABLES_TO_CLEAR = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE")


@dataclass
class ImageFolderData:
    """A dataset written by make_image_folder: root URL, class names and every file per split."""

    root: str
    classes: list[str]
    files: dict[str, list[str]] = field(default_factory=dict)

    def split(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    @property
    def root_path(self) -> Path:
        """The root as a local path (local datasets only)."""
        return Path(self.root)


def make_image_folder(
    root: str | Path,
    classes: tuple[str, ...] = ("circle", "square", "triangle"),
    per_class: dict[str, int] | int = 6,
    size: int = 32,
    seed: int = 0,
    corrupt: int = 0,
) -> ImageFolderData:
    """Real PNGs (trainer.sample_data's shapes), one folder per class and split, at a local folder or
    any fsspec URL. `per_class` may be a number or {split: number}; `corrupt` adds that many
    undecodable .png files to the first class of the first split."""
    root = str(root)
    splits = per_class if isinstance(per_class, dict) else {"train": per_class, "val": max(2, per_class // 2)}
    data = ImageFolderData(
        root=root, classes=list(classes), files=sample_data.render(root, classes, splits, size, seed)
    )
    if corrupt:
        fs, base = fsspec.core.url_to_fs(root)
        split = next(iter(splits))
        for i in range(corrupt):
            path = f"{base.rstrip('/')}/{split}/{classes[0]}/corrupt-{i}.png"
            fs.pipe(path, b"\x89PNG\r\n\x1a\n this is not an image")
            data.files[split].append(path)
    return data


def write_json(url: str, value) -> None:
    with fsspec.open(url, "w") as handle:
        json.dump(value, handle)


class FakeImds(Imds):
    """An IMDSv2 endpoint for tests (the local cloud's own, orchestrator.local.imds)."""
