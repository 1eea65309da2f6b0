"""Recovery: what an orchestrator should do next for a job (`decide`), and starting its next attempt
(`start_next`, `resume`).

`decide` is a pure function of the job's view (status.derive_state plus the record, settled by
orchestrator.attempts first) and its spec:

    interrupted (EC2 took the machine, or the trainer checkpointed on the spot notice)
        -> START the next attempt, unless recovery.max_interruptions is used up -> GIVE_UP (failed)
    failed (the trainer's error, or a silent self-shutdown)
        -> RETRY while recovery.retries_on_error allows, else DONE
    running, exporting
        -> STOP when the cost so far plus the cost of reaching the next checkpoint would pass the
           budget (the trainer checkpoints and exits; the job becomes budget_exceeded), else WAIT
    stopping (a stop was asked for)
        -> TERMINATE the instance once the trainer has stopped, or after STOP_GRACE_S without it
    pending, or launching with a claim nobody finished
        -> START
    succeeded, cancelled, budget_exceeded, no_capacity
        -> DONE

Failover: the next attempt prefers pools not interrupted within the last hour (this job's attempts,
and whatever the caller saw interrupted elsewhere), in offer order, then falls back to the rest.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from orchestrator.attempts import settle
from orchestrator.aws import Cloud
from orchestrator.control import CONTROL_STOP
from orchestrator.errors import UserError
from orchestrator.launch import NoCapacity, stale_claim, start_attempt
from orchestrator.offers import Offer, find_offers
from orchestrator.prices import Pool, PriceSource
from orchestrator.record import Attempt, JobRecord, JobStore
from orchestrator.status import GONE, JobView, age_s
from trainer.config import JobSpec
from trainer.spec_file import parse_spec

AVOID_POOL_S = 3600.0  # a pool interrupted this recently goes to the back of the failover order
STOP_GRACE_S = 120.0  # how long a stop waits for the trainer's final checkpoint before terminating
RECOVERABLE_ENDS = ("interrupted", "lost", "terminated")  # ended without the trainer's final word


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
    outcome: str | None = None  # for GIVE_UP and STOP: the terminal state to record


def decide(view: JobView, spec: JobSpec, cost: dict | None = None, poll_s: float = 10.0, now: datetime | None = None) -> Decision:
    """What to do about this job now. `cost` is costing.cost_of(view) (needed for the budget only)."""
    now = now or datetime.now(timezone.utc)
    record, state = view.record, view.state
    if record is None:
        return Decision(Action.DONE, "no record")
    budget = record.budget_usd
    spent = cost["total_usd"] if cost else 0.0
    if state == "stopping":
        asked = age_s(record.stop_requested_at, now)
        if view.final or view.instance is None or view.instance.state in GONE or asked > STOP_GRACE_S:
            return Decision(Action.TERMINATE, "the trainer stopped" if view.final else f"no stop after {asked:.0f}s")
        return Decision(Action.WAIT, "waiting for the final checkpoint")
    if state == "failed" and not record.outcome:
        failures = sum(a.end_reason == "failed" for a in record.attempts)
        if failures <= spec.recovery.retries_on_error:
            return Decision(Action.RETRY, f"the trainer failed (retry {failures} of {spec.recovery.retries_on_error})")
        return Decision(Action.DONE, "failed")
    if state in ("interrupted", "pending") or (state == "launching" and _unfinished_claim(record)):
        interruptions = sum(a.end_reason in RECOVERABLE_ENDS for a in record.attempts)
        if interruptions > spec.recovery.max_interruptions:
            return Decision(Action.GIVE_UP, f"interrupted {interruptions} times; recovery.max_interruptions is {spec.recovery.max_interruptions}", "failed")
        if budget is not None and spent >= budget:
            return Decision(Action.GIVE_UP, f"cost ${spent:.2f} has reached the budget ${budget:.2f}", "budget_exceeded")
        return Decision(Action.START, "resuming from the latest checkpoint" if record.attempts else "starting")
    if state in ("running", "exporting") and budget is not None and cost and cost.get("current_usd_per_hour") is not None:
        horizon = max(_to_next_checkpoint_s(view, spec), poll_s)
        projected = spent + cost["current_usd_per_hour"] * horizon / 3600
        if projected > budget:
            return Decision(Action.STOP, f"cost ${spent:.2f} + ${projected - spent:.2f} to the next checkpoint would pass the budget ${budget:.2f}", "budget_exceeded")
    if state in ("succeeded", "failed", "cancelled", "budget_exceeded", "no_capacity"):
        return Decision(Action.DONE, state)
    return Decision(Action.WAIT)


def _to_next_checkpoint_s(view: JobView, spec: JobSpec) -> float:
    """Seconds until the trainer's next periodic checkpoint (0 when it only saves at epoch ends: then
    one poll is the horizon)."""
    every = spec.train.checkpoint.every_seconds
    beat = view.heartbeat or {}
    age = beat.get("last_checkpoint_age_s")
    if not every:
        return 0.0
    if age is None:
        return every
    return max(0.0, every - age - age_s(beat.get("updated_at")))


def _unfinished_claim(record: JobRecord) -> bool:
    last = record.current
    return last is not None and last.instance_id is None and stale_claim(last)


def failover_order(offers: list[Offer], record: JobRecord, avoid: dict[Pool, datetime] | None = None, now: datetime | None = None) -> list[Offer]:
    """Offers in rank order, pools interrupted within AVOID_POOL_S moved to the back."""
    now = now or datetime.now(timezone.utc)
    recent = {pool for pool, when in (avoid or {}).items() if (now - when).total_seconds() < AVOID_POOL_S}
    for attempt in record.attempts:
        if attempt.end_reason in RECOVERABLE_ENDS and age_s(attempt.ended_at or attempt.launched_at, now) < AVOID_POOL_S:
            recent.add((attempt.instance_type, attempt.zone))
    return [o for o in offers if o.pool not in recent] + [o for o in offers if o.pool in recent]


def job_spec(store: JobStore, job_id: str) -> JobSpec:
    """The spec the job was launched with (jobs/<id>/job.yaml)."""
    body = store.read_bytes(job_id, "job.yaml")
    if body is None:
        raise UserError(f"job {job_id} has no job.yaml under {store.root}", "was it launched with spotctl?")
    return parse_spec(body.decode(), source=store.url(job_id, "job.yaml"))


def start_next(view: JobView, spec: JobSpec, store: JobStore, cloud: Cloud, prices: PriceSource, avoid: dict[Pool, datetime] | None = None) -> Attempt | None:
    """Start the job's next attempt on the best pool by failover order; None if another orchestrator
    claimed it first. Raises launch.NoCapacity when EC2 refuses every offer."""
    offers = find_offers(cloud, spec.compute, prices)
    if not offers.ranked:  # e.g. every pool's price is above max_price_per_hour now: it may come down
        raise NoCapacity(f"no spot offer matches the job's compute section now ({len(offers.dropped)} pools dropped; `spotctl offers` on its job.yaml shows why)")
    return start_attempt(view.record, spec, failover_order(offers.ranked, view.record, avoid), cloud, store)


def set_aside_final(store: JobStore, view: JobView) -> None:
    """Keep the previous attempt's final word as status/final-attempt-K.json: a new attempt of a
    stopped or failed job must not read as already over."""
    body = store.read_bytes(view.job_id, "status/final.json")
    if body is None:
        return
    number = json.loads(body).get("attempt") or (view.record.current.number if view.record and view.record.current else 0)
    store.write(view.job_id, f"status/final-attempt-{number}.json", body)
    store.storage.delete(f"jobs/{view.job_id}/status/final.json")


def settle_view(store: JobStore, view: JobView) -> None:
    """Record how the job's ended attempts ended (orchestrator.attempts), if that changed."""
    if view.record is None:
        return
    if settle(view.record, view.instances or {}, view.final, view.heartbeat):
        written = store.update_record(view.job_id, lambda r: settle(r, view.instances or {}, view.final, view.heartbeat))
        if written is not None:
            view.record = written


REFUSALS = {
    "running": "it is running", "launching": "it is starting", "exporting": "it is exporting its artifacts", "stopping": "it is stopping",
    "succeeded": "it has already succeeded",
}


def resume(store: JobStore, view: JobView, cloud: Cloud, prices: PriceSource, force: bool = False, budget: float | None = None) -> Attempt:
    """`spotctl resume`: start attempt k+1 of a job that is not running and not done."""
    settle_view(store, view)
    state, job_id = view.state, view.job_id
    if state in REFUSALS and not (state == "launching" and _unfinished_claim(view.record)):
        where = f" (attempt {view.record.current.number} on {view.record.current.instance_id})" if state != "succeeded" and view.record.current else ""
        raise UserError(f"job {job_id}: not resumed, {REFUSALS[state]}{where}", "`spotctl status JOB` shows it; `spotctl stop JOB` stops it")
    if state == "cancelled" and not force:
        raise UserError(f"job {job_id}: not resumed, it was cancelled (spotctl stop)", "`spotctl resume JOB --force` continues it from its last checkpoint")
    spent = None
    if state == "budget_exceeded":
        from orchestrator.costing import cost_of

        spent = (cost_of(view, prices) or {}).get("total_usd", 0.0)
        if budget is None or budget <= spent:
            raise UserError(f"job {job_id}: not resumed, it has spent ${spent:.2f} of its budget ${view.record.budget_usd or 0:.2f}",
                            f"`spotctl resume JOB --budget NEW` with NEW above ${spent:.2f}")
    spec = job_spec(store, job_id)

    def reopen(record: JobRecord) -> None:
        record.cancelled_at = record.outcome = record.outcome_reason = record.stop_requested_at = None
        if budget is not None:
            record.budget_usd = budget

    view.record = store.update_record(job_id, reopen)
    store.storage.delete(f"jobs/{job_id}/{CONTROL_STOP}")  # or the trainer would stop again at once
    set_aside_final(store, view)
    view.final = None
    attempt = start_next(view, spec, store, cloud, prices)
    if attempt is None:
        raise UserError(f"job {job_id}: another spotctl is starting its next attempt right now", "`spotctl status JOB` shows it")
    return attempt

