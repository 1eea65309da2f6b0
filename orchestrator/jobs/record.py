"""The jobs under one storage root, and the orchestrator's record of each (trainer.job.layout says
where everything lives, trainer.job.documents what it holds).

S3 plus EC2 tags are the source of truth: the record holds what only the orchestrator knows (the
attempts: instance, pool, price, times, end reason; a cancellation), the trainer's documents hold the
rest. Any machine with access to the bucket can rebuild the full picture.

Several orchestrators may act on one job at once (two `spotctl watch`, a watch and a `resume`), so
every change after creation is a read-modify-write guarded by the object's version (S3 If-Match):
`JobStore.update_record` re-reads and re-applies the change when someone else wrote in between.

Every document is read against its model (trainer.job.documents). A record that fails is `Unreadable`,
naming its URL and what is wrong: that job cannot be told or acted on, every other one still can. A
trainer's document that fails (`read_checked`) is read as far as it can be, with its `Problem`s.
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
from trainer.job.problems import Problem, io_problem
from trainer.job.s3 import OutdatedLibrary
from trainer.job.storage import Conflict, Storage

D = TypeVar("D", bound=Document)


class Unreadable(UserError):
    """An object of a job that must be read whole (record.json, job.yaml) and cannot be."""

    def __init__(self, job_id: str, found: Problem):
        super().__init__(str(found), repair_hint(job_id))
        self.job_id, self.found = job_id, found


def repair_hint(job_id: str) -> str:
    return (
        "restore the object (an earlier version, if the bucket keeps them), "
        f"or delete the job with `spotctl rm {job_id} --force`"
    )


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
        """The job's record; None when it has none (the trainer ran it alone); `Unreadable` when it
        cannot be read as one."""
        body = self.object_of(job_id, layout.RECORD)
        return None if body is None else self._record(job_id, body)

    def _record(self, job_id: str, body: bytes) -> JobRecord:
        try:
            return JobRecord.from_json(body)
        except ValueError as exc:
            raise Unreadable(job_id, Problem(self.url(job_id, layout.RECORD), str(exc))) from None

    def object_of(self, job_id: str, relative: str) -> bytes | None:
        """The object's bytes (None: absent); `Unreadable` when what is there is no object to read (a
        folder, one this identity may not read). Other errors (S3 failing, credentials) are raised."""
        try:
            return self.read_bytes(job_id, relative)
        except OSError as exc:
            problem = io_problem(exc)
            if problem is None:
                raise
            raise Unreadable(job_id, Problem(self.url(job_id, relative), problem)) from None

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
            record = self._record(job_id, body)
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
        return self.read_checked(job_id, kind, relative)[0]

    def read_checked(self, job_id: str, kind: type[D], relative: str) -> tuple[D | None, list[Problem]]:
        """(a document of the job as far as it can be read, what is wrong with it): a field that fails its
        model is left out (unknown), a body that is no JSON object reads as None; each named with the
        object's URL."""
        try:
            body = self.object_of(job_id, relative)
        except Unreadable as exc:
            return None, [exc.found]
        found, wrong = kind.read(body)
        url = self.url(job_id, relative)
        return found, [Problem(url, what) for what in wrong]

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
