"""Stopping a job: ask the trainer to checkpoint and exit, then make sure its machine is gone.

`spotctl stop` writes `control/stop`; the trainer polls it with its heartbeat, commits a final
checkpoint and exits (final.json says `stopped`). We wait a bounded time for that (short when no
heartbeat has been seen lately: nobody is there to answer), then terminate the instance anyway. The
job becomes cancelled; its checkpoints stay, so `spotctl resume --force` can continue it. The budget
asks the same way (`request_stop` with an outcome), and `spotctl watch` terminates what is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from orchestrator.aws.clients import Cloud, as_user_error
from orchestrator.aws.ec2 import live_instances, terminate
from orchestrator.errors import UserError
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.state import JobView, heartbeat_age, settle
from orchestrator.jobs.views import find_job, launched
from trainer.job import layout
from trainer.job.documents import EndReason, Final, JobRecord, JobState, Outcome, StopRequest, now_iso

SILENT_WAIT_S = 10.0  # how long to wait for a trainer that has not sent a heartbeat lately


@dataclass
class StopResult:
    job_id: str
    graceful: bool  # the trainer committed a final checkpoint and exited
    terminated: str | None  # the instance id terminated, if one was running
    checkpoint_step: int | None


def stop_job(
    store: JobStore,
    job_id: str,
    cloud_for_region: Callable[[str], Cloud],
    wait_s: float = 45.0,
    poll_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StopResult:
    view = find_job(store, job_id, cloud_for_region)
    if view.state.terminal:
        raise UserError(f"job {job_id} is already {view.state}; nothing to stop")
    launched(view, "stop")
    request_stop(store, job_id, "stopped by spotctl stop")
    age = heartbeat_age(view.heartbeat) if view.heartbeat else None
    alive = view.instance is not None and view.instance.state == "running" and age is not None and age < 60
    deadline = clock() + (wait_s if alive else min(wait_s, SILENT_WAIT_S))
    final = None
    while clock() < deadline:
        final = store.read(job_id, Final, layout.FINAL)
        if final:
            break
        sleep(poll_s)
    record = view.record
    terminated = None
    cloud = cloud_for_region(record.region)
    live = live_instances(cloud, job_id)  # by tag: also one the record missed
    if live:
        try:
            terminate(cloud, live)
        except botocore.exceptions.ClientError as exc:
            raise as_user_error(exc, f"terminating {', '.join(live)}") from None
        terminated = ", ".join(live)
    if final and final.finished:  # it ended on its own meanwhile
        return StopResult(job_id, False, terminated, final.step)
    graceful = bool(final and final.is_(Outcome.STOPPED))
    # How earlier attempts ended (an interruption nobody watched) is settled from EC2 first: only the
    # attempt whose machine this stop terminated ends as stopped/terminated, now.
    settled = find_job(store, job_id, cloud_for_region)
    store.update_record(
        job_id, lambda r: _cancel(r, settled, live, final, EndReason.STOPPED if graceful else EndReason.TERMINATED)
    )
    return StopResult(job_id, graceful, terminated, final.step if final else None)


def request_stop(store: JobStore, job_id: str, reason: str, outcome: JobState | None = None) -> None:
    """Ask the trainer to checkpoint and stop (it polls control/stop with its heartbeat); the record
    says so, so that every orchestrator shows the job as stopping and none relaunches it."""

    def mark(record: JobRecord) -> None:
        record.stop_requested_at = record.stop_requested_at or now_iso()
        if outcome:
            record.outcome, record.outcome_reason = outcome, reason

    store.update_record(job_id, mark)
    store.write(job_id, layout.CONTROL_STOP, StopRequest.dump({"reason": reason, "requested_at": now_iso()}))


def _cancel(
    record: JobRecord, view: JobView, terminated: list[str], final: Final | None, end_reason: EndReason
) -> None:
    settle(record, view.instances or {}, final, view.heartbeat, crash=view.crash, machines=view.machines)
    record.cancelled_at = now_iso()
    for attempt in record.attempts:
        if attempt.instance_id in terminated:
            attempt.ended_at = attempt.ended_at or record.cancelled_at
            attempt.end_reason = attempt.end_reason or end_reason
