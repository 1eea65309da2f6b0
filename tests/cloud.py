"""The AWS account tests launch into (conftest's `account` fixture creates it on the moto server: the
bucket, the instance profile, the Deep Learning AMI, a spot market of fixed prices), and helpers."""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path

import botocore.exceptions

from orchestrator.cli import context
from testbed import REPO

EXAMPLE_AS_WRITTEN = REPO / "examples/aws-resnet50.yaml"  # relies on `spotctl infra deploy`'s profile (test_infra)
INSTANCE_PROFILE = "spotctl-trainer"  # the `account` fixture's stand-in for the stack's


def _example_for_the_account() -> Path:
    """The example as a job file names the instance profile when no stack profile fills it in: the
    `account` fixture creates the profile the stack would, but records no `infra deploy` profile."""
    text = EXAMPLE_AS_WRITTEN.read_text().replace(
        "\ncompute:\n", f"\ncompute:\n  instance_profile: {INSTANCE_PROFILE}\n", 1
    )
    folder = Path(tempfile.mkdtemp(prefix="spotctl-example-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / EXAMPLE_AS_WRITTEN.name).write_text(text)
    return folder / EXAMPLE_AS_WRITTEN.name


EXAMPLE = _example_for_the_account()
BUCKET = "my-spotctl-bucket"
STORAGE = f"s3://{BUCKET}/spotctl"
MARKET = {
    ("g5.xlarge", "us-east-1a"): 0.45,
    ("g5.xlarge", "us-east-1b"): 0.38,
    ("g5.xlarge", "us-east-1c"): 0.41,
    ("g6.xlarge", "us-east-1a"): 0.33,
    ("g6.xlarge", "us-east-1b"): 0.72,
    ("g6.xlarge", "us-east-1c"): 0.35,
    ("g4dn.xlarge", "us-east-1a"): 0.21,
    ("g4dn.xlarge", "us-east-1b"): 0.24,
}
ON_DEMAND = {"g5.xlarge": 1.006, "g6.xlarge": 0.8048, "g4dn.xlarge": 0.526}
EXAMPLE_DATA = f"s3://{BUCKET}/spotctl/datasets/flowers"  # the example's train/ and val/
EXAMPLE_CLASSES = ("daisy", "rose")


def seed_image_folder(url: str, classes: tuple[str, ...] = EXAMPLE_CLASSES) -> None:
    """An ImageFolder at an s3:// URL as `launch` checks it before a boot: class folders with image
    names (the bytes are never decoded here; tests that train write real images)."""
    import boto3

    bucket, _, key = url.removeprefix("s3://").partition("/")
    for name in classes:
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{key.strip('/')}/{name}/1.jpg", Body=b"not decoded")


def seed_example_data() -> None:
    """The example's train/ and val/ (the `account` fixture's)."""
    for split in ("train", "val"):
        seed_image_folder(f"{EXAMPLE_DATA}/{split}")


def settled_ec2():
    """An EC2 client for reading what EC2 holds, once every instance started so far is visible (the
    strict local cloud, like EC2, lists a new instance only after a moment)."""
    import boto3

    from testbed.harness import MotoServer

    MotoServer.running.wait_consistent()
    return boto3.client("ec2")


def launched_id(out: str) -> str:
    return re.search(r"^launched (\S+):", out, re.M).group(1)


def hook_run_instances(monkeypatch, refuse):
    """EC2 answering run_instances with an error for some offers (moto never runs out of capacity)."""
    real = context.aws_cloud

    def cloud(region, profile):
        made = real(region, profile)
        ec2 = made.client("ec2", retries="once")  # the client RunInstances goes through

        def before(params, **_):
            code = refuse(params)
            if code:
                raise botocore.exceptions.ClientError(
                    {"Error": {"Code": code, "Message": f"{code} (test)"}}, "RunInstances"
                )

        ec2.meta.events.register("before-parameter-build.ec2.RunInstances", before)
        return made

    monkeypatch.setattr(context, "aws_cloud", cloud)
