"""The sample datasets a local cloud can hold: `spotctl local data shapes` draws the quickstart's
into its bucket, where examples/quickstart.yaml's `train.data` points.

The images are drawn by the data plane's `python -m trainer.sample_data` (Pillow, the trainer extra),
run as a program against the local cloud: the orchestrator imports only the trainer's contract, and
the local cloud's instances need the trainer installed anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from orchestrator.aws.clients import Cloud, Endpoint
from orchestrator.errors import UserError
from orchestrator.local.daemon import (
    BUCKET,
    CREDENTIALS,
    DATASETS,
    LOCAL_MAX_ATTEMPTS,
    REGION,
    USER_AWS_SETTINGS,
    client_environment,
)


@dataclass(frozen=True)
class Sample:
    name: str
    program: str  # the module that draws it: `python -m PROGRAM URL [--per-class N] [--size PX] [--seed N]`
    description: str
    used_by: str  # the example job whose train.data it is

    @property
    def url(self) -> str:
        """Where it goes: `<url>/train`, `<url>/val` (ImageFolders)."""
        return f"s3://{BUCKET}/{DATASETS}/{self.name}"


SAMPLES = {
    "shapes": Sample(
        "shapes", "trainer.sample_data", "coloured shapes, one class per shape", "examples/quickstart.yaml"
    )
}
QUICKSTART = SAMPLES["shapes"]


def upload_hint(url: str) -> str | None:
    """The command that puts a sample dataset where `url` (a job's train.data) expects one, or None."""
    for sample in SAMPLES.values():
        if url.rstrip("/") == sample.url or url.startswith(sample.url + "/"):
            return f"`spotctl local data {sample.name}` uploads it"
    return None


@dataclass
class Uploaded:
    name: str
    url: str
    images: dict[str, int]  # split -> images
    classes: int

    def as_dict(self) -> dict:
        return asdict(self)


def upload(endpoint: str, name: str, options: dict[str, int]) -> Uploaded:
    """Draw sample `name` into the local cloud at `endpoint`, replacing what was there; what it holds
    now. `options`: the program's (per_class, size, seed), each left to its default when absent."""
    sample = SAMPLES[name]
    s3 = Cloud(REGION, max_attempts=LOCAL_MAX_ATTEMPTS, endpoint=Endpoint(endpoint, *CREDENTIALS.values())).client("s3")
    prefix = sample.url.removeprefix(f"s3://{BUCKET}/") + "/"
    _delete_under(s3, prefix)  # a smaller dataset over a larger one would keep the larger one's extra images
    environment = {k: v for k, v in os.environ.items() if k not in USER_AWS_SETTINGS}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            sample.program,
            sample.url,
            *(item for option, value in options.items() for item in (f"--{option.replace('_', '-')}", str(value))),
        ],
        env={**environment, **client_environment(endpoint)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        if "No module named" in last:
            raise UserError(
                f"`spotctl local data {name}` draws the images with the trainer's {sample.program}: {last}",
                "install the trainer: pip install 'spotctl[trainer]' (the local cloud's instances need it too)",
            )
        raise UserError(f"{sample.program} failed: {last}")
    images: dict[str, int] = {}
    classes = set()
    for key in _keys_under(s3, prefix):
        split, label = key[len(prefix) :].split("/")[:2]
        images[split] = images.get(split, 0) + 1
        classes.add(label)
    return Uploaded(name, sample.url, images, len(classes))


def _keys_under(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [entry["Key"] for page in pages for entry in page.get("Contents", ())]


def _delete_under(s3, prefix: str) -> None:
    keys = _keys_under(s3, prefix)
    for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys a call
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})
