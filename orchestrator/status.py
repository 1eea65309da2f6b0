"""What a job is doing, derived (never guessed) from its record, the trainer's objects and EC2's own
view of the instance. `JobView.as_dict()` is the stable `status --json` document.

Lifecycle (DESIGN.md): pending -> launching -> running -> (interrupted -> launching -> running)* ->
exporting -> succeeded. Terminal: succeeded, failed, cancelled (plus budget_exceeded, no_capacity
once recovery sets them). An instance that is gone with no final.json is *interrupted*, never done.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from orchestrator.aws import Cloud, with_backoff
from orchestrator.launch import TAG_ATTEMPT, TAG_JOB
from orchestrator.record import JobRecord, JobStore

TERMINAL = ("succeeded", "failed", "cancelled", "budget_exceeded", "no_capacity")
GONE = ("shutting-down", "terminated", "stopping", "stopped")
HEARTBEAT_STALE_S = 120  # a running trainer writes one every ~15 s
SELF_SHUTDOWN = "Client.InstanceInitiatedShutdown"


@dataclass
class Instance:
    """EC2's view of one attempt's instance."""

    instance_id: str
    state: str
    reason_code: str | None  # e.g. Server.SpotInstanceTermination, Client.UserInitiatedShutdown
    reason: str | None
    attempt: int | None


@dataclass
class JobView:
    job_id: str
    record: JobRecord | None
    heartbeat: dict | None
    final: dict | None
    instance: Instance | None
    artifacts: dict | None = None

    @property
    def state(self) -> str:
        return derive_state(self.record, self.final, self.heartbeat, self.instance)

    def as_dict(self) -> dict:
        beat, record = self.heartbeat or {}, self.record
        attempts = [vars(a) for a in record.attempts] if record else []
        if attempts and self.instance and self.instance.instance_id == attempts[-1]["instance_id"]:
            attempts[-1] = {**attempts[-1], "instance_state": self.instance.state, "state_reason": self.instance.reason_code}
        progress = None
        if beat:
            progress = {k: beat.get(k) for k in ("phase", "epoch", "epochs", "step", "total_steps", "steps_per_epoch", "eta_s", "images_per_sec", "data_wait_fraction")}
        return {
            "job_id": self.job_id,
            "name": record.name if record else None,
            "state": self.state,
            "region": record.region if record else None,
            "created_at": record.created_at if record else None,
            "attempts": attempts,
            "progress": progress,
            "metrics": {k: beat.get(k) for k in ("loss", "acc1", "lr", "val_loss", "val_acc1", "val_acc5")} if beat else None,
            "gpu": {k: beat.get(k) for k in ("gpu_count", "gpu_util_pct", "gpu_mem_used_gib", "gpu_mem_total_gib", "gpu_power_w")} if beat else None,
            "last_checkpoint": {"step": beat.get("last_checkpoint_step"), "age_s": heartbeat_age(beat, beat.get("last_checkpoint_age_s"))} if beat else None,
            "heartbeat_age_s": heartbeat_age(beat) if beat else None,
            # The instance runs but the trainer has not reported for a while: hung, or never started.
            "stalled": self.state == "running" and (not beat or (heartbeat_age(beat) or 0) > HEARTBEAT_STALE_S) and _running_for(record) > HEARTBEAT_STALE_S,
            "final": {k: v for k, v in self.final.items() if k != "history"} if self.final else None,
            "artifacts": self.artifacts,
        }


def _running_for(record: JobRecord | None) -> float:
    launched = record.attempts[-1].launched_at if record and record.attempts else None
    return (datetime.now(timezone.utc) - datetime.fromisoformat(launched)).total_seconds() if launched else 0.0


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
    if record.cancelled_at or (final and final.get("outcome") == "stopped"):
        return "cancelled"
    if record.outcome:
        return record.outcome  # no_capacity, budget_exceeded: decided by the orchestrator
    if not record.attempts:
        return "pending"
    if instance is None or instance.state in GONE:
        if instance is not None and instance.reason_code == SELF_SHUTDOWN:
            return "failed"  # it shut itself down without a word: the bootstrap could not even report
        return "interrupted"  # gone without a final outcome: recoverable
    if instance.state == "pending":
        return "launching"
    if heartbeat and heartbeat.get("attempt") == record.attempts[-1].number and heartbeat.get("phase") == "exporting":
        return "exporting"
    return "running"


def instances_of(cloud: Cloud, job_ids: list[str]) -> dict[str, Instance]:
    """The newest instance of each job, found by its tag (one paginated call for many jobs)."""
    ec2 = cloud.client("ec2")
    found: dict[str, tuple[int, Instance]] = {}
    for chunk in (job_ids[i : i + 150] for i in range(0, len(job_ids), 150)):
        pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": f"tag:{TAG_JOB}", "Values": chunk}])
        for page in with_backoff(lambda: list(pages)):
            for reservation in page["Reservations"]:
                for entry in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in entry.get("Tags", [])}
                    attempt = int(tags[TAG_ATTEMPT]) if tags.get(TAG_ATTEMPT, "").isdigit() else None
                    reason = entry.get("StateReason") or {}
                    instance = Instance(entry["InstanceId"], entry["State"]["Name"], reason.get("Code"), reason.get("Message"), attempt)
                    job = tags.get(TAG_JOB)
                    if job and (job not in found or (attempt or 0) >= found[job][0]):
                        found[job] = (attempt or 0, instance)
    return {job: instance for job, (_, instance) in found.items()}


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
                found = instances.get(view.job_id)
                # Only the current attempt's instance tells about now; an older one is history.
                if found and found.attempt == view.record.attempts[-1].number:
                    view.instance = found
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
        view.instance is not None
        and view.instance.state in ("pending", "running")
        and beat.get("attempt") == view.record.attempts[-1].number
        and beat.get("phase") in ("starting", "downloading data", "training", "validating", "checkpointing")
    )
