"""The jobs under one storage root, and the orchestrator's record of each (trainer.job.layout says
where everything lives, trainer.job.documents what it holds).

S3 plus EC2 tags are the source of truth: the record holds what only the orchestrator knows (the
attempts: instance, pool, price, times, end reason; a cancellation), the trainer's documents hold the
rest. Any machine with access to the bucket can rebuild the full picture.

Several orchestrators may act on one job at once (two `spotctl watch`, a watch and a `resume`), so
every change after creation is a read-modify-write guarded by the object's version (S3 If-Match):
`JobStore.update_record` re-reads and re-applies the change when someone else wrote in between.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from orchestrator.errors import UserError
from trainer.job import layout
from trainer.job.documents import Document, JobRecord
from trainer.job.s3 import OutdatedLibrary
from trainer.job.storage import Conflict, Storage

D = TypeVar("D", bound=Document)


class JobStore:
    """The jobs under one storage root (s3://bucket/prefix or a local folder)."""

    def __init__(self, root: str, **storage_options):
        self.root = root.rstrip("/")
        try:
            self.storage = Storage(self.root, **storage_options)
        except OutdatedLibrary as exc:
            raise UserError(
                str(exc), "upgrade it as said; constraints.txt in the repository lists the tested versions"
            ) from None

    def check(self) -> None:
        """One clear message when the bucket is missing, before anything is written or listed."""
        try:
            self.storage.check()
        except FileNotFoundError as exc:
            raise UserError(
                f"storage {self.root}: {exc}",
                "create the bucket (or fix `storage` / --storage), e.g. `aws s3 mb s3://BUCKET`",
            ) from None

    def job_ids(self) -> list[str]:
        return self.storage.list(layout.JOBS)

    def url(self, job_id: str, relative: str = "") -> str:
        return self.storage.url_of(layout.in_job(job_id, relative))

    # ------------------------------------------------------------------------------- the record
    def read_record(self, job_id: str) -> JobRecord | None:
        try:
            return JobRecord.from_json(self.storage.read_bytes(layout.in_job(job_id, layout.RECORD)))
        except FileNotFoundError:
            return None

    def write_record(self, record: JobRecord, create: bool = False) -> None:
        """Create the record (create=True), or overwrite it: only for a job nobody else acts on yet."""
        self.storage.write_bytes(layout.in_job(record.job_id, layout.RECORD), record.to_json(), create_only=create)

    def update_record(
        self, job_id: str, change: Callable[[JobRecord], bool | None], tries: int = 20
    ) -> JobRecord | None:
        """Apply `change` to the newest record and write it only if nobody wrote in between (else
        re-read and re-apply). `change` returns False to write nothing (e.g. someone else already did
        what it wanted). Returns the record written, or None when `change` declined."""
        key = layout.in_job(job_id, layout.RECORD)
        for attempt in range(tries):
            body, version = self.storage.read_versioned(key)
            record = JobRecord.from_json(body)
            if change(record) is False:
                return None
            try:
                self.storage.write_if(key, record.to_json(), version)
                return record
            except Conflict:
                time.sleep(random.uniform(0.01, 0.05 * (attempt + 1)))  # someone else wrote: read theirs
        raise UserError(
            f"job {job_id}: the record kept changing under {tries} tries",
            "is another spotctl acting on this job in a loop?",
        )

    # ------------------------------------------------------------------------ the job's objects
    def read(self, job_id: str, kind: type[D], relative: str) -> D | None:
        """A document of the job (the heartbeat, the final word...), None if absent or unreadable."""
        return kind.parse(self.read_bytes(job_id, relative))

    def read_bytes(self, job_id: str, relative: str) -> bytes | None:
        try:
            return self.storage.read_bytes(layout.in_job(job_id, relative))
        except FileNotFoundError:
            return None

    def write(self, job_id: str, relative: str, body: bytes, create: bool = False) -> None:
        self.storage.write_bytes(layout.in_job(job_id, relative), body, create_only=create)

    def delete(self, job_id: str, relative: str) -> None:
        self.storage.delete(layout.in_job(job_id, relative))

    def objects(self, job_id: str) -> list[str]:
        """Every object of the job, as paths relative to its prefix."""
        prefix = layout.in_job(job_id) + "/"
        return [key.removeprefix(prefix) for key in self.storage.find(layout.in_job(job_id))]

    def delete_objects(self, job_id: str, relatives: list[str]) -> None:
        """Delete these objects of the job (S3: in batches)."""
        self.storage.delete_all([layout.in_job(job_id, relative) for relative in relatives])

    def download(self, job_id: str, relative: str, local_file: str | Path) -> None:
        """Copy one object of the job to a local file (FileNotFoundError if it is missing)."""
        self.storage.download(layout.in_job(job_id, relative), str(local_file))

    # ---------------------------------------------------------------------------------- wheels
    def upload_wheel(self, wheel: Path, sha256: str) -> str:
        """Upload a wheel content-addressed (once: an unchanged spotctl is already there); its URL.

        An object under the key with other bytes is replaced: every bootstrap would refuse it."""
        key = layout.wheel_key(sha256, wheel.name)
        try:
            stored = hashlib.sha256(self.storage.read_bytes(key)).hexdigest()  # a wheel is a few hundred KB
        except FileNotFoundError:
            stored = None
        if stored != sha256:
            self.storage.upload(str(wheel), key)
        return self.storage.url_of(key)
