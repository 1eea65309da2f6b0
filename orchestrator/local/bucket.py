"""What the local cloud's bucket holds, and keeping it across a restart (`spotctl local down --keep`).

moto keeps its state in memory only: its `/moto-api/` can reset and dump it, not load it, and its
request recorder would replay RunInstances (new instance ids the job records do not name). What a
job's history lives in is the bucket (spotctl's rule: S3 and EC2's tags are the source of truth, and
the machines are gone after a `down` either way), so `--keep` copies its objects, as they are, to
`$SPOTCTL_HOME/local/kept/` after the machines stopped, and the next `up` puts them back before it
answers. EC2's records of ended instances are not kept: `status` reads a finished job from its
record and final word, and an unfinished one's instance is gone (`spotctl resume` continues it).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.job import layout

KEPT = "kept"  # the folder under the local cloud's home
OBJECTS = "objects"  # the bucket's objects under it, one file per key
SETTINGS = "cloud.json"  # what the kept cloud ran with (its market seed prices the jobs' attempts)


@dataclass
class Contents:
    """The bucket's objects, told apart as a person thinks of them."""

    objects: int = 0
    bytes: int = 0
    jobs: list[str] = field(default_factory=list)  # job ids under <storage>/jobs/
    wheels: int = 0  # spotctl wheels under <storage>/wheels/
    data: dict[str, int] = field(default_factory=dict)  # "datasets/shapes" -> objects: everything else, by folder

    @property
    def empty(self) -> bool:
        return self.objects == 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """'2 jobs, 1 wheel and 500 objects of data (datasets/shapes); 612 objects, 91.2 MiB in all'."""
        if self.empty:
            return "no objects"
        parts = [_count(len(self.jobs), "job")] if self.jobs else []
        if self.wheels:
            parts.append(_count(self.wheels, "wheel"))
        if self.data:
            parts.append(f"{_count(sum(self.data.values()), 'object')} of data ({', '.join(sorted(self.data))})")
        if not parts:  # the controller's tick and the like: no job, wheel or data
            parts.append("only spotctl's bookkeeping")
        listed = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
        size = f"{self.bytes / 2**20:.1f} MiB" if self.bytes >= 2**20 else f"{self.bytes / 2**10:.1f} KiB"
        return f"{listed}; {_count(self.objects, 'object')}, {size} in all"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _keys(s3, bucket: str):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        yield from page.get("Contents", ())


def contents(s3, bucket: str, storage_prefix: str) -> Contents:
    """Count the bucket's objects: jobs and wheels under the storage prefix (spotctl's), the rest as data."""
    found, jobs = Contents(), set()
    jobs_at, wheels_at = f"{storage_prefix}/{layout.JOBS}/", f"{storage_prefix}/{layout.WHEELS}/"
    # spotctl's own bookkeeping (the controller's tick, notify secrets, its code): in the total, not data
    own_at = tuple(f"{storage_prefix}/{folder}/" for folder in (layout.CONTROLLER, layout.SECRETS, layout.LAMBDA_CODE))
    for entry in _keys(s3, bucket):
        key = entry["Key"]
        found.objects += 1
        found.bytes += entry["Size"]
        if key.startswith(jobs_at):
            jobs.add(key[len(jobs_at) :].split("/", 1)[0])
        elif key.startswith(wheels_at):
            found.wheels += key.endswith(".whl")
        elif key.startswith(own_at):
            continue
        else:
            folder = "/".join(key.split("/")[:2]) if key.count("/") >= 2 else key.rpartition("/")[0] or key
            found.data[folder] = found.data.get(folder, 0) + 1
    found.jobs = sorted(jobs)
    return found


def save(s3, bucket: str, folder: Path, settings: dict) -> int:
    """Copy every object of the bucket to `folder` (replacing what was kept before); the count."""
    target = folder / OBJECTS
    shutil.rmtree(folder, ignore_errors=True)
    target.mkdir(parents=True)
    count = 0
    for entry in _keys(s3, bucket):
        if entry["Key"].endswith("/"):  # a folder marker (the console's): no object of spotctl's
            continue
        path = target / entry["Key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, entry["Key"], str(path))
        count += 1
    (folder / SETTINGS).write_text(json.dumps(settings, indent=1))
    return count


def kept_settings(folder: Path) -> dict | None:
    """What the kept cloud ran with, or None when nothing is kept."""
    try:
        return json.loads((folder / SETTINGS).read_text())
    except (FileNotFoundError, ValueError):
        return None


def restore(s3, bucket: str, folder: Path) -> int:
    """Put the kept objects back into the (new, empty) bucket, then forget them; the count. The folder
    goes only once every object is back: a restore that fails half-way is tried again at the next up."""
    source = folder / OBJECTS
    if not source.is_dir():
        return 0
    count = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, path.relative_to(source).as_posix())
        count += 1
    shutil.rmtree(folder)
    return count
