"""Helpers shared by the benchmarks: command line, summary table, verdict line, JSON, a moto bucket."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence

# The recovery benches' spot market ((type, zone) -> $/h) and on-demand list prices ($/h).
MARKET = {
    ("g4dn.xlarge", "us-east-1a"): 0.21,
    ("g4dn.xlarge", "us-east-1b"): 0.24,
    ("g6.xlarge", "us-east-1a"): 0.33,
    ("g5.xlarge", "us-east-1b"): 0.38,
}
ON_DEMAND = {"g5.xlarge": 1.006, "g6.xlarge": 0.8048, "g4dn.xlarge": 0.526}


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; the module docstring is the help text."""
    args = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--quick", action="store_true", help="a smaller run, as a smoke test (well under a minute)")
    args.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    return args


def quiet_logging() -> None:
    """Only warnings: the trainer's INFO lines would bury the table."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def print_table(headers: Sequence[str], rows: Sequence[Sequence]) -> None:
    cells = [[str(h) for h in headers]] + [
        [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def verdict(ratio: float, target: float, higher_is_better: bool, name: str = "ratio") -> bool:
    """Print the one line a script or a person greps for, e.g. `RESULT ratio=0.97 target>=0.95 PASS`."""
    passed = ratio >= target if higher_is_better else ratio <= target
    print(
        f"RESULT {name}={ratio:.3f} target{'>=' if higher_is_better else '<='}{target:.2f} {'PASS' if passed else 'FAIL'}"
    )
    return passed


def write_json(path: str | None, figures: dict) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)
        print(f"figures written to {path}")


@contextlib.contextmanager
def moto_bucket(bucket: str = "bench") -> Iterator[str]:
    """s3://<bucket> on a moto server on 127.0.0.1 (testbed/harness.py), with os.environ pointing every
    AWS client at it for the duration. The server runs in this process: its CPU is charged to us."""
    from testbed.harness import MotoServer

    server = MotoServer().start()
    try:
        with _aws_pointed_at(server.endpoint, bucket) as url:
            yield url
    finally:
        server.stop()


@contextlib.contextmanager
def moto_process_bucket(bucket: str = "bench") -> Iterator[str]:
    """Like moto_bucket, but the moto server runs in its own process, as AWS is not in ours: parallel
    requests then overlap as they would against the real service."""
    import subprocess
    import sys
    import time
    import urllib.request

    from testbed.harness import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        with _aws_pointed_at(endpoint, bucket) as url:
            yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def _aws_pointed_at(endpoint: str, bucket: str) -> Iterator[str]:
    """os.environ pointing every AWS client at `endpoint` (restored after), with `bucket` created there."""
    import boto3

    from testbed.harness import AWS_VARIABLES_TO_CLEAR, aws_environment

    saved = dict(os.environ)
    for name in AWS_VARIABLES_TO_CLEAR:
        os.environ.pop(name, None)
    os.environ.update(aws_environment(endpoint))
    try:
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}"
    finally:
        os.environ.clear()
        os.environ.update(saved)


def pil_train_transform(spec, norm):
    """The trainer's training transform (trainer.data.train_transform) as the standard loader writes
    it: torchvision's v1 transforms on PIL images, then ToTensor and Normalize. The comparison loaders
    of the benches (ImageFolder + PIL) use it."""
    from torchvision import transforms

    aug, size = spec.augmentation, spec.image_size
    steps = (
        [transforms.RandomResizedCrop(size, scale=aug.crop_scale, antialias=True)]
        if aug.random_resized_crop
        else [transforms.Resize(round(size * norm.resize_ratio), antialias=True), transforms.CenterCrop(size)]
    )
    if aug.horizontal_flip:
        steps.append(transforms.RandomHorizontalFlip())
    if aug.color_jitter:
        steps.append(transforms.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(norm.mean, norm.std)])


def running_job(store, spec_text: str, ami: str, job_id: str) -> str:
    """A job as `spotctl launch` leaves it: its job file, a record, and attempt 1 running on a tagged
    g4dn.xlarge spot instance in us-east-1a (the moto server the environment points at). Returns the
    instance id. `store` is an orchestrator.jobs.record.JobStore."""
    import time

    import boto3

    from orchestrator.aws.instances import TAG_ATTEMPT, TAG_JOB
    from trainer.job import layout
    from trainer.job.documents import Attempt, JobRecord

    ec2 = boto3.client("ec2")
    subnet = ec2.describe_subnets(
        Filters=[
            {"Name": "availability-zone", "Values": ["us-east-1a"]},
            {"Name": "default-for-az", "Values": ["true"]},
        ]
    )["Subnets"][0]["SubnetId"]
    tags = [{"Key": TAG_JOB, "Value": job_id}, {"Key": TAG_ATTEMPT, "Value": "1"}]
    instance = ec2.run_instances(
        ImageId=ami,
        InstanceType="g4dn.xlarge",
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet,
        InstanceMarketOptions={"MarketType": "spot"},
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"][0]["InstanceId"]
    store.write(job_id, layout.JOB_FILE, spec_text.encode())
    launched = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    store.write_record(
        JobRecord(
            job_id,
            "bench",
            "us-east-1",
            store.root,
            store.url(job_id, layout.JOB_FILE),
            f"{store.root}/{layout.wheel_key('0' * 64, 'spotctl-0-py3-none-any.whl')}",  # the shape jobs/trust.py checks
            ami,
            attempts=[Attempt(1, "g4dn.xlarge", "us-east-1a", 0.21, 0.526, "t1", instance, launched)],
        )
    )
    return instance
