"""Closing attempts: when each one ended and why, recorded once, from the best witness available.

Witnesses, best first: the trainer's final word for that attempt (final.json: succeeded, failed,
stopped), its `interrupted` heartbeat (it checkpointed on the spot notice), then EC2's own state
reason (Server.SpotInstanceTermination, Client.UserInitiatedShutdown, ...). The trainer's word comes
first because it knows whether the work was saved; EC2's says who pulled the plug and, with the
transition time, when billing stopped (`ended_at`, which the cost uses).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from orchestrator.record import Attempt, JobRecord
from orchestrator.status import GONE, NOT_LISTED_GRACE_S, SELF_SHUTDOWN, SPOT_TERMINATION, USER_SHUTDOWN, Instance, age_s
_TRANSITION_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def settle(record: JobRecord, instances: dict[int, Instance], final: dict | None, heartbeat: dict | None, now: datetime | None = None) -> bool:
    """Fill in end_reason / ended_at / state_reason / steps of attempts that have ended. Returns
    whether anything changed (then the caller writes the record). Idempotent: run it every poll."""
    now = now or datetime.now(timezone.utc)
    changed = False
    for attempt in record.attempts:
        if attempt.instance_id is None or attempt.ended_at is not None:
            continue
        instance = instances.get(attempt.number)
        beat = heartbeat if heartbeat and heartbeat.get("attempt") == attempt.number else None
        said = final if final and final.get("attempt") == attempt.number else None
        reason = _trainer_reason(said, beat)
        if instance is not None and instance.state in GONE:
            attempt.ended_at = _transition_time(instance) or now.isoformat(timespec="seconds")
            attempt.state_reason = instance.reason_code
            attempt.end_reason = attempt.end_reason or reason or _ec2_reason(instance.reason_code)
        elif instance is None and age_s(attempt.launched_at, now) > NOT_LISTED_GRACE_S:
            # EC2 forgets terminated instances after about an hour. Its last heartbeat is the last sign
            # of life we know; without one, its launch (billed the one-minute minimum), never "now":
            # a job nobody watched for a day must not be charged for that day.
            attempt.ended_at = (beat or {}).get("updated_at") or attempt.launched_at
            attempt.end_reason = attempt.end_reason or reason or "lost"
        elif reason and attempt.end_reason is None:
            attempt.end_reason = reason  # the machine still runs (EC2 takes it soon): ended_at follows
        else:
            continue
        if beat:  # the steps it trained: what an interruption costs in repeated work
            attempt.start_step = beat.get("resumed_from_step", attempt.start_step)
            attempt.end_step = beat.get("step", attempt.end_step)
        changed = True
    return changed


def ended(attempt: Attempt) -> bool:
    """The attempt will train no more (its machine may still be shutting down)."""
    return attempt.end_reason is not None or attempt.ended_at is not None


def _trainer_reason(final: dict | None, beat: dict | None) -> str | None:
    if final and final.get("outcome") in ("succeeded", "failed", "stopped"):
        return final["outcome"]
    if beat and beat.get("phase") == "interrupted":
        return "interrupted"
    return None


def _ec2_reason(code: str | None) -> str:
    if code == SPOT_TERMINATION:
        return "interrupted"
    if code == USER_SHUTDOWN:
        return "terminated"
    if code == SELF_SHUTDOWN:
        return "failed"  # shut itself down without final.json: the bootstrap could not even report
    return "lost"


def _transition_time(instance: Instance) -> str | None:
    match = _TRANSITION_TIME.search(instance.transition or "")
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).isoformat(timespec="seconds")

