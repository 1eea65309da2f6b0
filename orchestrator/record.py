"""The orchestrator's record of a job (`jobs/<id>/record.json`) and the job's objects in storage.

S3 plus EC2 tags are the source of truth: the record holds what only the orchestrator knows (the
attempts: instance, pool, price, times, end reason; a cancellation), the trainer's objects hold the
rest. Any machine with access to the bucket can rebuild the full picture.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from orchestrator.errors import UserError
from trainer.storage import Storage

RECORD = "record.json"
JOB_FILE = "job.yaml"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Attempt:
    number: int
    instance_type: str
    zone: str
    spot_price: float
    on_demand_price: float | None
    client_token: str
    instance_id: str | None = None
    launched_at: str | None = None
    ended_at: str | None = None
    end_reason: str | None = None  # EC2's state reason, or the trainer's outcome


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
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, body: bytes) -> JobRecord:
        data = json.loads(body)
        data["attempts"] = [Attempt(**a) for a in data.get("attempts", [])]
        return cls(**data)


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
        self.storage.write_bytes(f"{record.prefix}/{RECORD}", record.to_json(), create_only=create)

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
