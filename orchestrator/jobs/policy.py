"""Recovery policy: what an orchestrator should do next for a job (`decide`), and in which order to try
the pools for its next attempt (`failover_order`). Pure functions of the job's view (settled first,
jobs.state.settle), its spec, its cost and the time: tests/unit/test_policy.py is their table.

    interrupted (EC2 took the machine, the trainer checkpointed on the spot notice, or the trainer
                 crashed: killed by a signal, or the machine shut down with no final word)
        -> START the next attempt, unless recovery.max_crashes (crashed attempts) or
           recovery.max_interruptions (the rest) is used up -> GIVE_UP (failed),
           or the budget is spent -> GIVE_UP (budget_exceeded)
    failed (the trainer raised: its final.json says so, with the traceback's tail)
        -> RETRY while recovery.retries_on_error allows, else DONE
    running, exporting
        -> STOP when the cost so far plus the cost of reaching the next checkpoint would pass the
           budget (the trainer checkpoints and exits; the job becomes budget_exceeded), else WAIT
    stopping (a stop was asked for)
        -> TERMINATE the instance once the trainer has stopped, or after STOP_GRACE_S without it
    pending, or launching with a claim nobody finished
        -> START (or GIVE_UP as for interrupted)
    succeeded, cancelled, budget_exceeded, no_capacity
        -> DONE

Failover: the next attempt prefers pools not interrupted within the last hour (this job's attempts,
and whatever the caller saw interrupted elsewhere), in offer order, then falls back to the rest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from orchestrator.aws.instances import GONE
from orchestrator.jobs.crash import give_up_reason
from orchestrator.jobs.state import JobView, age_s, derive_state, unfinished_claim
from trainer.job.documents import INTERRUPTION_ENDS, RECOVERABLE_ENDS, EndReason, Heartbeat, JobRecord, JobState
from trainer.job.units import amounts, plural

if TYPE_CHECKING:
    from orchestrator.aws.offers import Offer
    from orchestrator.aws.prices import Pool
    from orchestrator.jobs.cost import JobCost
    from trainer.job.spec import JobSpec

AVOID_POOL_S = 3600.0  # a pool interrupted this recently goes to the back of the failover order
STOP_GRACE_S = 120.0  # how long a stop waits for the trainer's final checkpoint before terminating


class Action(enum.Enum):
    WAIT = "wait"
    DONE = "done"
    START = "start"
    RETRY = "retry"
    STOP = "stop"
    TERMINATE = "terminate"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    outcome: JobState | None = None  # for GIVE_UP and STOP: the terminal state to record


def decide(
    view: JobView, spec: JobSpec, cost: JobCost | None = None, poll_s: float = 10.0, now: datetime | None = None
) -> Decision:
    """What to do about this job now. `cost` is jobs.cost.cost_of(view) (needed for the budget only)."""
    now = now or datetime.now(timezone.utc)
    record = view.record
    if view.unreadable is not None:  # nothing can be told of it: jobs.watch gives it up after a few polls
        return Decision(Action.WAIT, f"its record cannot be read: {view.unreadable}")
    if record is None:
        return Decision(Action.DONE, "no record")
    state = derive_state(record, view.final, view.heartbeat, view.instance, now)
    budget = record.budget_usd
    spent = cost.total_usd if cost else 0.0
    if state is JobState.STOPPING:
        asked = age_s(record.stop_requested_at, now)
        if view.final or view.instance is None or view.instance.state in GONE or asked > STOP_GRACE_S:
            return Decision(Action.TERMINATE, "the trainer stopped" if view.final else f"no stop after {asked:.0f}s")
        return Decision(Action.WAIT, "waiting for the final checkpoint")
    if state is JobState.FAILED and not record.outcome:
        failures = sum(a.end_reason == EndReason.FAILED for a in record.attempts)
        if failures <= spec.recovery.retries_on_error:
            return Decision(Action.RETRY, f"the trainer failed (retry {failures} of {spec.recovery.retries_on_error})")
        return Decision(Action.DONE, "failed")
    if state.idle or (state is JobState.LAUNCHING and unfinished_claim(record, now)):
        crashed = [a for a in record.attempts if a.end_reason == EndReason.CRASHED]
        if len(crashed) > spec.recovery.max_crashes:
            return Decision(
                Action.GIVE_UP,
                give_up_reason(len(crashed), spec.recovery.max_crashes, crashed[-1].end_detail),
                JobState.FAILED,
            )
        interruptions = sum(a.end_reason in INTERRUPTION_ENDS for a in record.attempts)
        if interruptions > spec.recovery.max_interruptions:
            return Decision(
                Action.GIVE_UP,
                f"interrupted {plural(interruptions, 'time')}; recovery.max_interruptions is {spec.recovery.max_interruptions}",
                JobState.FAILED,
            )
        if budget is not None and spent >= budget:
            spent_text, budget_text = amounts(spent, budget)
            return Decision(
                Action.GIVE_UP, f"cost {spent_text} has reached the budget {budget_text}", JobState.BUDGET_EXCEEDED
            )
        return Decision(Action.START, "resuming from the latest checkpoint" if record.attempts else "starting")
    if (
        state in (JobState.RUNNING, JobState.EXPORTING)
        and budget is not None
        and cost
        and cost.current_usd_per_hour is not None
    ):
        horizon = max(_to_next_checkpoint_s(view, spec, now), poll_s)
        projected = spent + cost.current_usd_per_hour * horizon / 3600
        if projected > budget:
            spent_text, more_text, budget_text = amounts(spent, projected - spent, budget)
            return Decision(
                Action.STOP,
                f"cost {spent_text} + {more_text} to the next checkpoint would pass the budget {budget_text}",
                JobState.BUDGET_EXCEEDED,
            )
    if state.terminal:
        return Decision(Action.DONE, state.value)
    return Decision(Action.WAIT)


def _to_next_checkpoint_s(view: JobView, spec: JobSpec, now: datetime) -> float:
    """Seconds until the trainer's next periodic checkpoint (CheckpointSpec.seconds_to_next: the sooner
    of every_seconds and every_steps at the heartbeat's measured pace), counted from the heartbeat;
    0 when none is known to come (epoch ends only: then one poll is the horizon)."""
    checkpoint, beat = spec.train.checkpoint, view.heartbeat
    if beat is None:
        return checkpoint.seconds_to_next() or 0.0
    left = checkpoint.seconds_to_next(
        since_save_s=beat.last_checkpoint_age_s or 0.0,
        step=beat.step,
        seconds_per_step=seconds_per_step(beat),
    )
    return 0.0 if left is None else max(0.0, left - age_s(beat.updated_at, now))


def seconds_per_step(beat: Heartbeat | None) -> float | None:
    """The trainer's measured pace: a batch at its images per second (None before it has one)."""
    if beat is None or not beat.images_per_sec or not beat.batch_size:
        return None
    return beat.batch_size / beat.images_per_sec


def failover_order(
    offers: list[Offer], record: JobRecord, avoid: dict[Pool, datetime] | None = None, now: datetime | None = None
) -> list[Offer]:
    """Offers in rank order, pools interrupted within AVOID_POOL_S moved to the back."""
    now = now or datetime.now(timezone.utc)
    recent = {pool for pool, when in (avoid or {}).items() if (now - when).total_seconds() < AVOID_POOL_S}
    for attempt in record.attempts:
        if (
            attempt.end_reason in RECOVERABLE_ENDS
            and age_s(attempt.ended_at or attempt.launched_at, now) < AVOID_POOL_S
        ):
            recent.add((attempt.instance_type, attempt.zone))
    return [o for o in offers if o.pool not in recent] + [o for o in offers if o.pool in recent]
