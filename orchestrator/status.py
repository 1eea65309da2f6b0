"""What a job is doing, derived (never guessed) from its record, the trainer's objects and EC2's own
view of the instance. `JobView.as_dict()` is the stable `status --json` document.

Lifecycle (DESIGN.md): pending -> launching -> running -> (interrupted -> launching -> running)* ->
exporting -> succeeded. Terminal: succeeded, failed, cancelled, budget_exceeded, no_capacity.
`stopping` is a job asked to stop (spotctl stop, the budget) whose machine still runs.

An instance that is gone with no final.json is *interrupted*, never done; so is a running instance
whose trainer reported `interrupted` (it checkpointed on the spot notice and EC2 is about to take the
machine): recovery starts the next attempt then, without waiting for EC2 to finish the termination.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from orchestrator.aws import Cloud, with_backoff
from orchestrator.health import health_flags
from orchestrator.launch import TAG_ATTEMPT, TAG_JOB
from orchestrator.record import JobRecord, JobStore

TERMINAL = ("succeeded", "failed", "cancelled", "budget_exceeded", "no_capacity")
GONE = ("shutting-down", "terminated", "stopping", "stopped")
# EC2's state reason codes spotctl reads.
SPOT_TERMINATION = "Server.SpotInstanceTermination"
USER_SHUTDOWN = "Client.UserInitiatedShutdown"
SELF_SHUTDOWN = "Client.InstanceInitiatedShutdown"
GPU_FIELDS = ("gpu_count", "gpu_util_pct", "gpu_mem_used_gib", "gpu_mem_total_gib", "gpu_power_w",
              "health_window_s", "gpu_util_window_pct", "gpu_mem_window_fraction", "data_wait_window")
# describe_instances is eventually consistent: a just-started instance may not be listed yet.
NOT_LISTED_GRACE_S = 300.0


@dataclass
class Instance:
    """EC2's view of one attempt's instance."""

    instance_id: str
    state: str
    reason_code: str | None  # e.g. Server.SpotInstanceTermination, Client.UserInitiatedShutdown
    reason: str | None
    attempt: int | None
    transition: str | None = None  # StateTransitionReason, e.g. "User initiated (2026-11-25 10:00:00 GMT)"


@dataclass
class JobView:
    job_id: str
    record: JobRecord | None
    heartbeat: dict | None
    final: dict | None
    instance: Instance | None  # the current attempt's
    artifacts: dict | None = None
    instances: dict[int, Instance] | None = None  # every attempt's, by attempt number

    @property
    def state(self) -> str:
        return derive_state(self.record, self.final, self.heartbeat, self.instance)

    def as_dict(self) -> dict:
        beat, record = self.heartbeat or {}, self.record
        attempts = [vars(a) for a in record.attempts] if record else []
        if attempts and self.instance and self.instance.instance_id == attempts[-1]["instance_id"]:
            attempts[-1] = {**attempts[-1], "instance_state": self.instance.state, "state_reason": self.instance.reason_code}
        health = self.health()
        progress = None
        if beat:
            progress = {k: beat.get(k) for k in ("phase", "epoch", "epochs", "step", "total_steps", "steps_per_epoch", "eta_s", "images_per_sec", "data_wait_fraction")}
        return {
            "job_id": self.job_id,
            "name": record.name if record else None,
            "state": self.state,
            "region": record.region if record else None,
            "created_at": record.created_at if record else None,
            "outcome_reason": record.outcome_reason if record else None,
            "budget_usd": record.budget_usd if record else None,
            "attempts": attempts,
            "progress": progress,
            "metrics": {k: beat.get(k) for k in ("loss", "acc1", "lr", "val_loss", "val_acc1", "val_acc5")} if beat else None,
            "gpu": {k: beat.get(k) for k in GPU_FIELDS} if beat else None,
            "last_checkpoint": {"step": beat.get("last_checkpoint_step"), "age_s": heartbeat_age(beat, beat.get("last_checkpoint_age_s"))} if beat else None,
            "heartbeat_age_s": heartbeat_age(beat) if beat else None,
            "health": [flag.as_dict() for flag in health],
            "stalled": any(flag.name == "stalled" for flag in health),
            "final": {k: v for k, v in self.final.items() if k != "history"} if self.final else None,
            "artifacts": self.artifacts,
        }


    def health(self):
        """orchestrator.health's flags (stalled, low GPU utilisation) while the job runs."""
        current = self.record.current if self.record else None
        if self.state not in ("running", "exporting") or current is None:
            return []
        age = heartbeat_age(self.heartbeat) if self.heartbeat else None
        return health_flags(self.heartbeat, True, age, age_s(current.launched_at) if current.launched_at else 0.0, current.number)


def heartbeat_age(beat: dict, plus: float | None = 0.0) -> float | None:
    """Seconds since the heartbeat was written (plus an age it reported)."""
    if plus is None or not beat.get("updated_at"):
        return None
    written = datetime.fromisoformat(beat["updated_at"])
    return round((datetime.now(timezone.utc) - written).total_seconds() + plus, 1)


def derive_state(record: JobRecord | None, final: dict | None, heartbeat: dict | None, instance: Instance | None) -> str:
    if record is None:
        return "unknown"
    if final and final.get("outcome") in ("succeeded", "failed"):
        return final["outcome"]  # what the trainer (or its bootstrap) said is final, even after a stop
    if record.cancelled_at:
        return "cancelled"
    alive = instance is not None and instance.state not in GONE
    if record.outcome:  # no_capacity, budget_exceeded, failed: decided by the orchestrator
        return "stopping" if record.stop_requested_at and alive else record.outcome
    if record.stop_requested_at:  # a stop was asked for: stopping until the machine is gone
        return "stopping" if alive else "cancelled"
    if final and final.get("outcome") == "stopped":
        return "cancelled"
    current = record.current
    if current is None:
        return "pending"
    if current.instance_id is None:
        return "launching"  # claimed; EC2 has not answered yet
    beat = heartbeat or {}
    if beat.get("attempt") == current.number and beat.get("phase") == "interrupted":
        return "interrupted"  # checkpointed on the spot notice: the machine is about to go
    if instance is None and age_s(current.launched_at) < NOT_LISTED_GRACE_S:
        return "launching"
    if instance is None or instance.state in GONE:
        if instance is not None and instance.reason_code == SELF_SHUTDOWN:
            return "failed"  # it shut itself down without a word: the bootstrap could not even report
        return "interrupted"  # gone without a final outcome: recoverable
    if instance.state == "pending":
        return "launching"
    if beat.get("attempt") == current.number and beat.get("phase") == "exporting":
        return "exporting"
    return "running"


def age_s(iso: str | None, now: datetime | None = None) -> float:
    """Seconds from an ISO time to `now` (default: now); infinite when the time is unknown."""
    return ((now or datetime.now(timezone.utc)) - datetime.fromisoformat(iso)).total_seconds() if iso else float("inf")


def instances_of(cloud: Cloud, job_ids: list[str]) -> dict[str, dict[int, Instance]]:
    """Every instance of each job by attempt number, found by tag (one paginated call for many jobs).
    If one attempt somehow has several instances, a live one wins."""
    ec2 = cloud.client("ec2")
    found: dict[str, dict[int, Instance]] = {}
    for chunk in (job_ids[i : i + 150] for i in range(0, len(job_ids), 150)):
        pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": f"tag:{TAG_JOB}", "Values": chunk}])
        for page in with_backoff(lambda: list(pages)):
            for reservation in page["Reservations"]:
                for entry in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in entry.get("Tags", [])}
                    job, attempt = tags.get(TAG_JOB), tags.get(TAG_ATTEMPT, "")
                    if not job or not attempt.isdigit():
                        continue
                    reason = entry.get("StateReason") or {}
                    instance = Instance(entry["InstanceId"], entry["State"]["Name"], reason.get("Code"), reason.get("Message"), int(attempt),
                                        entry.get("StateTransitionReason") or None)
                    known = found.setdefault(job, {}).get(int(attempt))
                    if known is None or known.state in GONE:
                        found[job][int(attempt)] = instance
    return found


def read_views(store: JobStore, job_ids: list[str], cloud_for_region, threads: int = 32, details: bool = False) -> list[JobView]:
    """Every job's state with as few reads as are safe, in parallel: record and heartbeat; one EC2
    call per region; then final.json only where the job may have ended (a running instance whose
    trainer reports a running phase has not). `details` adds the artifacts manifest."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        views = list(pool.map(lambda job_id: JobView(job_id, store.read_record(job_id), store.read_json(job_id, "status/heartbeat.json"), None, None), job_ids))
        by_region: dict[str, list[JobView]] = {}
        for view in views:
            if view.record and view.record.attempts and not view.record.cancelled_at:
                by_region.setdefault(view.record.region, []).append(view)
        for region, group in by_region.items():
            instances = instances_of(cloud_for_region(region), [v.job_id for v in group])
            for view in group:
                view.instances = instances.get(view.job_id, {})
                # Only the current attempt's instance tells about now; older ones are history.
                view.instance = view.instances.get(view.record.attempts[-1].number)
        maybe_ended = [v for v in views if v.record and not _certainly_running(v)]
        for view, final in zip(maybe_ended, pool.map(lambda v: store.read_json(v.job_id, "status/final.json"), maybe_ended)):
            view.final = final
        if details:
            for view, manifest in zip(views, pool.map(lambda v: store.read_json(v.job_id, "artifacts/manifest.json"), views)):
                view.artifacts = manifest
    return views


def _certainly_running(view: JobView) -> bool:
    beat = view.heartbeat or {}
    return (
        not view.record.stop_requested_at
        and view.instance is not None
        and view.instance.state in ("pending", "running")
        and beat.get("attempt") == view.record.attempts[-1].number
        and beat.get("phase") in ("starting", "downloading data", "training", "validating", "checkpointing")
    )
