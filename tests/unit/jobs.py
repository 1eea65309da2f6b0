"""Builders of job views for the pure tests: records, attempts, EC2's instances, the trainer's documents,
all at a fixed NOW (nothing here talks to AWS or storage)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from orchestrator.aws.instances import Instance
from orchestrator.jobs.cost import JobCost
from orchestrator.jobs.state import JobView
from trainer.job.documents import Attempt, Crash, Final, Heartbeat, JobRecord
from trainer.job.spec_file import parse_spec

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)

SPEC = parse_spec("""
name: table
storage: s3://bucket/spotctl
compute: {instance_types: [g5.xlarge], instance_profile: spotctl-trainer}
recovery: {max_interruptions: 2, retries_on_error: 1, max_crashes: 2}
train:
  model: {name: resnet18, weights: null}
  data: {train: s3://bucket/data/train}
  checkpoint: {every_seconds: 300}
""")


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat(timespec="seconds")


def attempt(
    number: int = 1,
    pool: tuple[str, str] = ("g5.xlarge", "us-east-1a"),
    instance_id: str | None = "auto",
    launched: float | None = 900,
    end: str | None = None,
    ended: float | None = None,
    requested: float | None = 960,
    detail: str | None = None,
) -> Attempt:
    """An attempt launched `launched` seconds ago (None: claimed, no instance yet)."""
    made = Attempt(
        number,
        pool[0],
        pool[1],
        0.4,
        1.0,
        f"token-{number}",
        None if instance_id is None else (f"i-{number}" if instance_id == "auto" else instance_id),
        ago(launched) if launched is not None and instance_id is not None else None,
        ago(ended) if ended is not None else None,
        end,
        requested_at=ago(requested) if requested is not None else None,
    )
    made.end_detail = detail
    return made


def record(
    *attempts: Attempt,
    outcome: str | None = None,
    cancelled: bool = False,
    stop_asked: float | None = None,
    budget: float | None = None,
) -> JobRecord:
    return JobRecord(
        "j",
        "table",
        "us-east-1",
        "s3://bucket/spotctl",
        "s3://bucket/spotctl/jobs/j/job.yaml",
        "s3://bucket/w.whl",
        "ami-1",
        created_at=ago(3600),
        cancelled_at=ago(5) if cancelled else None,
        outcome=outcome,
        budget_usd=budget,
        stop_requested_at=ago(stop_asked) if stop_asked is not None else None,
        attempts=list(attempts),
    )


def instance(
    state: str = "running", reason: str | None = None, number: int = 1, transition: str | None = None
) -> Instance:
    return Instance(f"i-{number}", state, reason, None, number, transition)


def beat(attempt: int = 1, phase: str = "training", **fields) -> Heartbeat:
    return Heartbeat(attempt=attempt, phase=phase, updated_at=ago(5), **fields)


def final(outcome: str, attempt: int = 1, **fields) -> Final:
    return Final(outcome=outcome, attempt=attempt, **fields)


def crash(signal: str | None = "SIGKILL", code: int | None = 137, attempt: int = 1, **fields) -> Crash:
    """The bootstrap's crash report (orchestrator.jobs.userdata)."""
    return Crash(attempt=attempt, exit_code=code, signal=signal, **fields)


def view(
    rec: JobRecord | None, ec2: Instance | None = None, heartbeat: Heartbeat | None = None, said: Final | None = None
) -> JobView:
    instances = {ec2.attempt: ec2} if ec2 is not None else {}
    return JobView("j", rec, heartbeat, said, ec2, None, instances)


def cost(total: float, per_hour: float | None = None) -> JobCost:
    return JobCost([], total, None, None, 0, 0.0, current_usd_per_hour=per_hour)
