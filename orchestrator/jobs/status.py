"""The `spotctl status --json` document of a job: its fields are the models below, so its JSON Schema
(`spotctl status --schema`) documents it and a test holds real output to it. Absent data is null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.jobs.caretaker import Care
from orchestrator.jobs.cost import JobCost
from orchestrator.jobs.health import job_health
from orchestrator.jobs.state import JobView, eta_left_s, heartbeat_age, settled
from trainer.job.documents import GPU_FIELDS, METRIC_FIELDS, PROGRESS_FIELDS


class _Part(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class NodeStatus(_Part):
    """One machine of a multi-node attempt (compute.nodes > 1), by node rank."""

    rank: int
    instance_id: str | None
    instance_type: str
    zone: str
    spot_price: float
    kept: bool = False
    """the machine carried on from the previous attempt (a survivor), not launched for this one"""
    lost: bool = False
    """this node's machine went (interrupted, crashed, gone): the one the next attempt replaced"""
    state_reason: str | None = None


class AttemptStatus(_Part):
    """One attempt as recorded (trainer.job.documents.Attempt); the current one also with EC2's view."""

    number: int
    instance_type: str
    zone: str
    spot_price: float
    on_demand_price: float | None
    client_token: str
    instance_id: str | None
    launched_at: str | None
    ended_at: str | None
    end_reason: str | None
    """interrupted, crashed, succeeded, failed, stopped, terminated, lost or not_started"""
    state_reason: str | None
    """EC2's state reason code, e.g. Server.SpotInstanceTermination"""
    requested_at: str | None
    claimed_by: str | None
    start_step: int | None
    end_step: int | None
    running_at: str | None = None
    """when spotctl first saw the instance running: EC2 bills the instance from then (null: not seen; billed from launched_at)"""
    disk_gib: int | None = None
    """the root gp3 volume's size, billed from launch to end (null: not recorded, not counted)"""
    public_ip: bool | None = None
    """whether it had a public IPv4 address, billed by the hour (null: not recorded, not counted)"""
    end_detail: str | None = None
    """why it ended, in words, where the end reason alone does not say: for `crashed`, the signal, a probable out-of-memory kill and the memory high-water marks"""
    instance_state: str | None = None
    """EC2's state of the current attempt's instance (only on the current attempt)"""
    nodes: list[NodeStatus] | None = None
    """compute.nodes > 1: every machine of the attempt by node rank (instance_id above is node 0's); null for one instance"""


class Progress(_Part):
    """The trainer's last heartbeat: its attempt's progress (an earlier attempt's while the next one starts)."""

    phase: str | None
    epoch: int | None
    epochs: int | None
    step: int | None
    total_steps: int | None
    steps_per_epoch: int | None
    eta_s: float | None
    """training time left, in seconds, as of now: the trainer's ETA less the heartbeat's age"""
    images_per_sec: float | None
    """over the trainer's last minute of training, batch waits included (its log line prints the same)"""
    data_wait_fraction: float | None
    attempt: int | None = None
    """the attempt that wrote the heartbeat"""
    resumed_from_step: int | None = None
    """the checkpoint step that attempt started from (0: the beginning)"""


class Metrics(_Part):
    loss: float | None
    acc1: float | None
    lr: float | None
    val_loss: float | None
    val_acc1: float | None
    val_acc5: float | None


class Gpu(_Part):
    gpu_count: int | None
    gpu_util_pct: float | None
    gpu_mem_used_gib: float | None
    gpu_mem_total_gib: float | None
    gpu_power_w: float | None
    health_window_s: float | None
    gpu_util_window_pct: float | None
    gpu_mem_window_fraction: float | None
    data_wait_window: float | None


class LastCheckpoint(_Part):
    step: int | None
    age_s: float | None


class HealthFlag(_Part):
    name: str
    """stalled or low_gpu_util; or a warning of the final word (chance_level)"""
    message: str
    hint: str | None


class UnreadableObject(_Part):
    """A stored object of the job that could not be read as its model says (trainer.job.problems)."""

    url: str
    problem: str
    """what is wrong with it, e.g. `not JSON (garbage at byte 0)`, `launched_at: "yesterday" is not a date-time`"""


class AttemptCostStatus(_Part):
    number: int
    seconds: float
    """the instance's billed time, from running to the end"""
    usd: float
    """instance_usd + ebs_usd + public_ipv4_usd"""
    instance_usd: float
    """the spot instance (0 when EC2 interrupted it within its first hour)"""
    ebs_usd: float | None
    """the root gp3 volume, from launch to end (null: its size was not recorded)"""
    public_ipv4_usd: float
    """the public IPv4 address, from launch to end (0 without compute.public_ip)"""
    on_demand_usd: float | None
    """the same attempt with an on-demand instance (same volume and address)"""
    free_by_first_hour_rule: bool
    """EC2 interrupted it within its first hour: its instance usage is not charged"""
    waived_usd: float = 0.0
    """the instance usage the first-hour rule waived"""


class CostStatus(_Part):
    total_usd: float
    """instance_usd + ebs_usd + public_ipv4_usd"""
    instance_usd: float
    ebs_usd: float
    public_ipv4_usd: float
    on_demand_usd: float | None
    savings: float | None
    """share of the on-demand cost saved, 0..1"""
    savings_unknown: str | None
    """why savings is null, e.g. no on-demand price for g5.xlarge in eu-west-1"""
    lost_steps: int
    lost_usd: float
    waived_usd: float = 0.0
    """instance usage not charged under the first-hour rule: total_usd + waived_usd never falls, while total_usd
    falls when EC2 interrupts a running attempt within its first hour"""
    attempts: list[AttemptCostStatus]
    current_usd_per_hour: float | None
    """what the running attempt costs an hour now: its spot price, root volume and public address"""
    projected_total_usd: float | None
    notes: list[str]
    """figures that are estimates or leave something out"""


class CareStatus(_Part):
    """Who looks after the job (jobs.caretaker): recovers its next interruption, stops it at its budget."""

    by: str
    """controller (a deployed controller ticked within 3 minutes), watch (a running `spotctl watch` holds its lease) or nobody"""
    detail: str
    """in words, e.g. the controller (last tick 40s ago)"""
    fix: str | None
    """nobody: the command that makes someone look after it"""


class JobStatus(_Part):
    """A job as `spotctl status JOB --json` prints it (`spotctl status --json` lists these).

    Attempts read as settled: an attempt that has ended shows how and when (jobs.state.settle, from EC2
    and the trainer's documents) even if no `watch` recorded it yet; status writes nothing."""

    job_id: str
    name: str | None
    state: str
    """pending, launching, running, interrupted, stopping, exporting, succeeded, failed, cancelled, budget_exceeded,
    no_capacity, unknown, or unreadable (record.json cannot be read: `unreadable` says why; nothing else is known)"""
    region: str | None
    created_at: str | None
    outcome_reason: str | None
    budget_usd: float | None
    attempts: list[AttemptStatus]
    progress: Progress | None
    metrics: Metrics | None
    gpu: Gpu | None
    last_checkpoint: LastCheckpoint | None
    heartbeat_age_s: float | None
    health: list[HealthFlag]
    stalled: bool
    unreadable: list[UnreadableObject] = []
    """the job's objects that could not be read: record.json (the job is `unreadable`), or a trainer's document
    (the heartbeat, final.json, the manifest: what it would say is null, and a health flag names it)"""
    final: dict[str, Any] | None
    """status/final.json as the trainer wrote it, without its history"""
    artifacts: dict[str, Any] | None
    """artifacts/manifest.json as the trainer wrote it (only for one job)"""
    cost: CostStatus | None = None
    """what the job cost (null when nothing ran yet)"""
    context: str | None = None
    """where spotctl found the job: `local` (the local cloud) or its storage root (`spotctl status`)"""
    care: CareStatus | None = None
    """who looks after the job while it is not over (null once it is)"""


def status_document(
    view: JobView,
    cost: JobCost | None = None,
    with_cost: bool = False,
    now: datetime | None = None,
    context: str | None = None,
    care: Care | None = None,
) -> dict:
    """The job's `status --json` document as of `now` (default: now); `with_cost` adds `cost` (null when
    nothing ran yet), `context` where the job was found, `care` who looks after it (jobs.caretaker)."""
    view = settled(view, now)
    beat, record = view.heartbeat, view.record
    attempts = (
        [
            AttemptStatus.model_validate(a, from_attributes=True).model_dump(exclude={"instance_state"})
            for a in record.attempts
        ]
        if record
        else []
    )
    if attempts and view.instance and view.instance.instance_id == attempts[-1]["instance_id"]:
        attempts[-1] = {
            **attempts[-1],
            "instance_state": view.instance.state,
            "state_reason": view.instance.reason_code,
        }
    health = job_health(view, now)
    document = JobStatus(
        job_id=view.job_id,
        name=record.name if record else None,
        state=view.state,
        region=record.region if record else None,
        created_at=record.created_at if record else None,
        outcome_reason=record.outcome_reason if record else None,
        budget_usd=record.budget_usd if record else None,
        attempts=attempts,
        progress={
            **{k: getattr(beat, k) for k in PROGRESS_FIELDS},
            "eta_s": eta_left_s(beat, now),
            "attempt": beat.attempt,
            "resumed_from_step": beat.resumed_from_step,
        }
        if beat
        else None,
        metrics={k: getattr(beat, k) for k in METRIC_FIELDS} if beat else None,
        gpu={k: getattr(beat, k) for k in GPU_FIELDS} if beat else None,
        last_checkpoint={
            "step": beat.last_checkpoint_step,
            "age_s": heartbeat_age(beat, beat.last_checkpoint_age_s, now),
        }
        if beat
        else None,
        heartbeat_age_s=heartbeat_age(beat, now=now) if beat else None,
        health=[flag.as_dict() for flag in health],
        stalled=any(flag.name == "stalled" for flag in health),
        unreadable=[p.as_dict() for p in ([view.unreadable] if view.unreadable else []) + view.problems],
        final={k: v for k, v in view.final.written().items() if k != "history"} if view.final else None,
        artifacts=view.artifacts.written() if view.artifacts else None,
        **({"cost": cost.as_dict() if cost else None} if with_cost else {}),
        **({"context": context} if context else {}),
        **({"care": {"by": care.by, "detail": care.detail, "fix": care.fix}} if care else {}),
    )
    return document.model_dump(mode="json", exclude_unset=True)


def schema() -> dict:
    return JobStatus.model_json_schema()
