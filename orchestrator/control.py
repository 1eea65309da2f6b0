"""Acting on a running job: a graceful stop, and its logs.

Stop (DESIGN.md): write `control/stop`; the trainer polls it with its heartbeat, commits a final
checkpoint and exits (final.json says `stopped`). We wait a bounded time for that (short when no
heartbeat has been seen lately: nobody is there to answer), then terminate the instance anyway. The
job becomes cancelled; its checkpoints stay, so `spotctl resume --force` can continue it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from orchestrator.attempts import settle
from orchestrator.aws import Cloud, as_user_error, with_backoff
from orchestrator.errors import UserError
from orchestrator.launch import live_instances
from orchestrator.record import JobStore, now_iso
from orchestrator.status import TERMINAL, JobView, heartbeat_age, read_views

CONTROL_STOP = "control/stop"
SILENT_WAIT_S = 10.0  # how long to wait for a trainer that has not sent a heartbeat lately


@dataclass
class StopResult:
    job_id: str
    graceful: bool  # the trainer committed a final checkpoint and exited
    terminated: str | None  # the instance id terminated, if one was running
    checkpoint_step: int | None


def find_job(store: JobStore, job_id: str, cloud_for_region) -> JobView:
    view = read_views(store, [job_id], cloud_for_region, details=True)[0]
    if view.record is None:
        known = store.job_ids()
        from trainer.config import did_you_mean

        raise UserError(f"no job '{job_id}' under {store.root}{did_you_mean(job_id, known)}", "`spotctl status` lists the jobs there")
    return view


def stop_job(store: JobStore, job_id: str, cloud_for_region: Callable[[str], Cloud], wait_s: float = 45.0, poll_s: float = 2.0,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> StopResult:
    view = find_job(store, job_id, cloud_for_region)
    if view.state in TERMINAL:
        raise UserError(f"job {job_id} is already {view.state}; nothing to stop")
    request_stop(store, job_id, "stopped by spotctl stop")
    age = heartbeat_age(view.heartbeat) if view.heartbeat else None
    alive = view.instance is not None and view.instance.state == "running" and age is not None and age < 60
    deadline = clock() + (wait_s if alive else min(wait_s, SILENT_WAIT_S))
    final = None
    while clock() < deadline:
        final = store.read_json(job_id, "status/final.json")
        if final:
            break
        sleep(poll_s)
    record = view.record
    terminated = None
    live = live_instances(cloud_for_region(record.region), job_id)  # by tag: also one the record missed
    if live:
        try:
            with_backoff(lambda: cloud_for_region(record.region).client("ec2").terminate_instances(InstanceIds=live))
        except botocore.exceptions.ClientError as exc:
            raise as_user_error(exc, f"terminating {', '.join(live)}") from None
        terminated = ", ".join(live)
    if final and final.get("outcome") in ("succeeded", "failed"):  # it ended on its own meanwhile
        return StopResult(job_id, False, terminated, final.get("step"))
    graceful = bool(final and final.get("outcome") == "stopped")
    # How earlier attempts ended (an interruption nobody watched) is settled from EC2 first: only the
    # attempt whose machine this stop terminated ends as stopped/terminated, now.
    settled = find_job(store, job_id, cloud_for_region)
    store.update_record(job_id, lambda r: _cancel(r, settled, live, final, "stopped" if graceful else "terminated"))
    return StopResult(job_id, graceful, terminated, final.get("step") if final else None)


def request_stop(store: JobStore, job_id: str, reason: str, outcome: str | None = None) -> None:
    """Ask the trainer to checkpoint and stop (it polls control/stop with its heartbeat); the record
    says so, so that every orchestrator shows the job as stopping and none relaunches it."""

    def mark(record) -> None:
        record.stop_requested_at = record.stop_requested_at or now_iso()
        if outcome:
            record.outcome, record.outcome_reason = outcome, reason

    store.update_record(job_id, mark)
    store.write(job_id, CONTROL_STOP, json.dumps({"reason": reason, "requested_at": now_iso()}).encode())


def _cancel(record, view: JobView, terminated: list[str], final: dict | None, end_reason: str) -> None:
    settle(record, view.instances or {}, final, view.heartbeat)
    record.cancelled_at = now_iso()
    for attempt in record.attempts:
        if attempt.instance_id in terminated:
            attempt.ended_at = attempt.ended_at or record.cancelled_at
            attempt.end_reason = attempt.end_reason or end_reason


def log_text(store: JobStore, view: JobView, attempt: int | None = None, bootstrap: bool = False) -> tuple[int, str, bytes | None]:
    """(attempt, object name, content) of a job's shipped log: the trainer's, or the bootstrap's
    (which is also what exists while the instance is still installing)."""
    attempts = len(view.record.attempts) if view.record else 0
    number = attempt or max(attempts, 1)
    if attempt is not None and not 1 <= attempt <= max(attempts, 1):
        raise UserError(f"job {view.job_id} has no attempt {attempt} (it has {attempts})")
    names = [f"logs/attempt-{number}.bootstrap.log"] if bootstrap else [f"logs/attempt-{number}.log", f"logs/attempt-{number}.bootstrap.log"]
    for name in names:
        content = store.read_bytes(view.job_id, name)
        if content is not None:
            return number, name, content
    return number, names[0], None
