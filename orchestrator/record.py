"""The orchestrator's record of a job (`jobs/<id>/record.json`) and the job's objects in storage.

S3 plus EC2 tags are the source of truth: the record holds what only the orchestrator knows (the
attempts: instance, pool, price, times, end reason; a cancellation), the trainer's objects hold the
rest. Any machine with access to the bucket can rebuild the full picture.

Several orchestrators may act on one job at once (two `spotctl watch`, a watch and a `resume`), so
every change after creation is a read-modify-write guarded by the object's version (S3 If-Match):
`JobStore.update_record` re-reads and re-applies the change when someone else wrote in between.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

from orchestrator.errors import UserError
from trainer.storage import Conflict, Storage

RECORD = "record.json"
JOB_FILE = "job.yaml"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Why an attempt ended (Attempt.end_reason).
END_REASONS = {
    "interrupted": "spot interruption (EC2's notice or its termination)",
    "succeeded": "the trainer finished the job",
    "failed": "the trainer failed, or the instance shut itself down without a word",
    "stopped": "the trainer stopped on request (spotctl stop, the budget) after a final checkpoint",
    "terminated": "the instance was terminated by a user or spotctl, not by the trainer",
    "lost": "the instance is gone and nothing says why",
}


@dataclass
class Attempt:
    number: int
    instance_type: str
    zone: str
    spot_price: float
    on_demand_price: float | None
    client_token: str  # EC2's idempotency token: a retried run_instances returns the same instance
    instance_id: str | None = None  # None while the attempt is claimed but EC2 has not answered yet
    launched_at: str | None = None
    ended_at: str | None = None  # when EC2 says the instance stopped running (billing ends)
    end_reason: str | None = None  # one of END_REASONS
    state_reason: str | None = None  # EC2's own code, e.g. Server.SpotInstanceTermination
    requested_at: str | None = None  # when this attempt was claimed
    claimed_by: str | None = None  # the orchestrator process that claimed it (see launch.claim)
    start_step: int | None = None  # the step the trainer resumed from
    end_step: int | None = None  # the last step it reported


@dataclass
class JobRecord:
    job_id: str
    name: str
    region: str
    storage: str
    job_url: str
    wheel_url: str
    ami: str
    created_at: str = field(default_factory=now_iso)
    cancelled_at: str | None = None
    outcome: str | None = None  # a terminal state the orchestrator decided (no_capacity, budget_exceeded)
    outcome_reason: str | None = None
    budget_usd: float | None = None  # budget.max_cost_usd, raised by `resume --budget`
    stop_requested_at: str | None = None  # control/stop written (by spotctl stop or the budget)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, body: bytes) -> JobRecord:
        data = json.loads(body)
        # Fields a newer spotctl added are ignored, not fatal: an older one can still read the job.
        data["attempts"] = [Attempt(**_known(Attempt, a)) for a in data.get("attempts", [])]
        return cls(**_known(cls, data))

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def interruptions(self) -> int:
        return sum(a.end_reason == "interrupted" for a in self.attempts)


def _known(kind, data: dict) -> dict:
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in data.items() if k in names}


class JobStore:
    """The jobs under one storage root (s3://bucket/prefix or a local folder)."""

    def __init__(self, root: str, **storage_options):
        self.root = root.rstrip("/")
        self.storage = Storage(self.root, **storage_options)

    def check(self) -> None:
        """One clear message when the bucket is missing, before anything is written or listed."""
        try:
            self.storage.check()
        except FileNotFoundError as exc:
            raise UserError(f"storage {self.root}: {exc}", "create the bucket (or fix `storage` / --storage), e.g. `aws s3 mb s3://BUCKET`") from None

    def job_ids(self) -> list[str]:
        return self.storage.list("jobs")

    def url(self, job_id: str, relative: str = "") -> str:
        return self.storage.url_of(f"jobs/{job_id}/{relative}".rstrip("/"))

    def read_record(self, job_id: str) -> JobRecord | None:
        try:
            return JobRecord.from_json(self.storage.read_bytes(f"jobs/{job_id}/{RECORD}"))
        except FileNotFoundError:
            return None

    def write_record(self, record: JobRecord, create: bool = False) -> None:
        """Create the record (create=True), or overwrite it: only for a job nobody else acts on yet."""
        self.storage.write_bytes(f"{record.prefix}/{RECORD}", record.to_json(), create_only=create)

    def update_record(self, job_id: str, change: Callable[[JobRecord], bool | None], tries: int = 20) -> JobRecord | None:
        """Apply `change` to the newest record and write it only if nobody wrote in between (else
        re-read and re-apply). `change` returns False to write nothing (e.g. someone else already did
        what it wanted). Returns the record written, or None when `change` declined."""
        key = f"jobs/{job_id}/{RECORD}"
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
        raise UserError(f"job {job_id}: the record kept changing under {tries} tries", "is another spotctl acting on this job in a loop?")

    def read_json(self, job_id: str, relative: str) -> dict | None:
        """A JSON object of the job (status/heartbeat.json...), None if absent or unreadable."""
        try:
            return json.loads(self.storage.read_bytes(f"jobs/{job_id}/{relative}"))
        except (FileNotFoundError, ValueError):
            return None

    def read_bytes(self, job_id: str, relative: str) -> bytes | None:
        try:
            return self.storage.read_bytes(f"jobs/{job_id}/{relative}")
        except FileNotFoundError:
            return None

    def write(self, job_id: str, relative: str, body: bytes, create: bool = False) -> None:
        self.storage.write_bytes(f"jobs/{job_id}/{relative}", body, create_only=create)
