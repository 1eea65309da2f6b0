"""One decision step for one job, the same for every driver: `spotctl watch` (jobs.watch.Watcher, a
poll loop) and the serverless controller (orchestrator.controller, one step per EC2 event or tick).

A step takes the job's view (jobs.views), records how ended attempts ended (jobs.recover.settle_view),
asks jobs.policy.decide what to do and does it: start the next attempt after an interruption, retry a
failure when allowed, stop at the budget, terminate what a stop left running, give up. Its news goes to
the driver's `on_event` (the watch's live view, the controller's log and tick; notifications hook in
there), said once per change.

What a step must remember until the next one (how long the job has waited for capacity and when to ask
EC2 again, the state and health flags already told) is a `StepMemory`, kept by the driver: in the
watch's memory, or in the job's care/controller.json for the controller (a Lambda invocation keeps
nothing). The times in it are the driver's clock: monotonic for a watch, epoch seconds for the
controller. Everything another driver needs is in the record, changed only by conditional writes, so
any number of drivers never start two instances for one attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import botocore.exceptions

from orchestrator.aws import placement
from orchestrator.aws.clients import Cloud, as_user_error
from orchestrator.aws.ec2 import live_instances, terminate
from orchestrator.aws.prices import Pool, PriceSource
from orchestrator.errors import UserError
from orchestrator.jobs.cost import JobCost, cost_of
from orchestrator.jobs.health import Flag, job_health
from orchestrator.jobs.launch import NoCapacity, QuotaExceeded
from orchestrator.jobs.nodes import none_lost_yet
from orchestrator.jobs.notify import SEND_TIMEOUT_S, Notifier
from orchestrator.jobs.policy import Action, decide
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.recover import job_spec, set_aside_final, settle_view, start_next
from orchestrator.jobs.state import JobView
from orchestrator.jobs.stop import request_stop
from orchestrator.jobs.views import read_views
from trainer.job.documents import Document, EndReason, JobRecord, JobState
from trainer.job.spec import JobSpec
from trainer.job.storage import bad_credentials
from trainer.job.units import rate

log = logging.getLogger(__name__)


@dataclass
class WatchOptions:
    poll_s: float = 10.0
    """Seconds between polls: an interruption is acted on within one poll."""
    capacity_deadline_s: float = 1800.0
    """How long a job waits for EC2 to grant any offer before it is given up as no_capacity."""
    capacity_retry_s: float = 30.0
    """First wait after EC2 refused every offer; doubles up to capacity_retry_max_s."""
    capacity_retry_max_s: float = 300.0
    settle_grace_s: float = 120.0
    """After a job ends, how long to keep polling until EC2 says its machine is gone (the end of billing
    is then recorded from EC2); the bootstrap shuts it down within seconds of the trainer's exit."""
    unfollowable_polls: int = 3
    """Polls in a row a job's record.json or job.yaml may be unreadable before the watch gives up on it."""


@dataclass(frozen=True)
class Event:
    at: datetime
    job_id: str
    message: str
    level: int = logging.INFO


@dataclass
class JobRow:
    """What the live view shows of one job after a step."""

    view: JobView
    cost: JobCost | None = None
    waiting_for_capacity_s: float | None = None
    health: list[Flag] = field(default_factory=list)


class StepMemory(Document):
    """What a driver remembers of one job between steps (the controller keeps it in care/controller.json)."""

    waiting_since: float | None = None  # EC2 first refused to start the next attempt (driver's clock)
    next_try: float | None = None  # not before then is EC2 asked again
    delay: float | None = None  # the current backoff, doubling up to capacity_retry_max_s
    state: str | None = None  # the job's state as last told
    flags: list[str] = []  # the health flags last told
    group_deleted: bool = False  # compute.nodes > 1: the job is over and its placement group is gone

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode()


class Stepper:
    """The decision step, with what one driver shares across its jobs (clients, prices, specs, the
    pools it saw interrupted)."""

    def __init__(
        self,
        store: JobStore,
        clouds: Callable[[str], Cloud],
        prices: Callable[[Cloud], PriceSource],
        options: WatchOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[Event], None] | None = None,
        notifier: Notifier | None = None,
    ):
        self.store, self.clouds, self.prices = store, clouds, prices
        self.options = options or WatchOptions()
        self.clock = clock
        self.on_event = on_event or (lambda event: log.info("%s: %s", event.job_id, event.message))
        # Whichever driver takes the step sends the job's notifications (each once: jobs.notify).
        self.notifier = notifier or Notifier(
            store,
            lambda region: self.clouds(region).client("sns", retries="once", timeout_s=SEND_TIMEOUT_S),
            on_note=self.emit,
        )
        self.avoid: dict[Pool, datetime] = {}  # pools seen interrupted, shared by every job this driver follows
        self._specs: dict[str, JobSpec] = {}
        self._price_sources: dict[str, PriceSource] = {}

    # ------------------------------------------------------------------------------------ the step
    def step(self, view: JobView, memory: StepMemory) -> JobRow:
        """Read view -> settle -> decide -> act, for a job with a readable record. Raises what stops this
        job's step (Unreadable, a refused call, S3 failing); the driver says it and goes on."""
        job_id = view.job_id
        before = {a.number: a.end_reason for a in view.record.attempts}
        settle_view(self.store, view)
        for attempt in view.record.attempts:
            if attempt.end_reason and before.get(attempt.number) is None:
                steps = f" at step {attempt.end_step}" if attempt.end_step is not None else ""
                why = f" ({attempt.state_reason})" if attempt.state_reason else ""
                detail = f": {attempt.end_detail}" if attempt.end_detail else ""  # a crash: how the trainer died
                self.emit(
                    job_id,
                    f"attempt {attempt.number} on {attempt.instance_type} {attempt.zone} ended: {attempt.end_reason}{why}{steps}{detail}",
                )
                if attempt.end_reason in (EndReason.INTERRUPTED, EndReason.NOT_STARTED):
                    self.avoid[(attempt.instance_type, attempt.zone)] = datetime.now(timezone.utc)
        spec = self._spec(job_id)
        cloud = self.clouds(view.record.region)
        prices = self.price_source(view.record.region)
        cost = cost_of(view, prices) if view.record.attempts else None
        decision = decide(view, spec, cost, self.options.poll_s)
        if decision.action in (Action.START, Action.RETRY):
            self._start(view, spec, cloud, prices, memory, retry=decision.action is Action.RETRY, why=decision.reason)
        elif decision.action is Action.STOP:
            request_stop(self.store, job_id, f"budget: {decision.reason}", outcome=decision.outcome)
            self.emit(job_id, f"budget: {decision.reason}; asking the trainer to checkpoint and stop", logging.WARNING)
        elif decision.action is Action.TERMINATE:
            live = live_instances(cloud, job_id)
            if live:
                terminate(cloud, live)
                self.emit(job_id, f"stopped ({decision.reason}); terminated {', '.join(live)}")
        elif decision.action is Action.GIVE_UP:
            self.give_up(
                job_id, decision.outcome, decision.reason, view.record.current.number if view.record.current else 0
            )
        elif decision.action is Action.DONE and spec.compute.nodes > 1 and not memory.group_deleted:
            # EC2 refuses to delete it while a machine of it is still terminating: again at the next step.
            memory.group_deleted = placement.delete_group(cloud, placement.group_name(job_id))
        fresh = view
        if decision.action not in (Action.WAIT, Action.DONE):
            fresh = read_views(self.store, [view.job_id], self.clouds)[0]
            settle_view(self.store, fresh)  # e.g. the machine a stop just terminated: its end is known now
        self._note_state(fresh, memory)
        # After the action, never before it: a slow or dead webhook must not delay the next attempt.
        self.notifier.step(fresh, lambda: cost_of(fresh, prices) if fresh.record.attempts else None)
        health = job_health(fresh)
        self._note_health(job_id, health, memory)
        waiting = self.clock() - memory.waiting_since if memory.waiting_since is not None else None
        return JobRow(fresh, cost, waiting, health)

    def _start(
        self, view: JobView, spec: JobSpec, cloud: Cloud, prices: PriceSource, memory: StepMemory, retry: bool, why: str
    ) -> None:
        job_id = view.job_id
        if memory.next_try is not None and self.clock() < memory.next_try:
            return
        if not retry and none_lost_yet(view.record.current, view.machines):
            return  # a multi-node attempt interrupted with every machine still up: the noticed one goes first
        if retry:
            set_aside_final(self.store, view)
        expected = view.record.current.number if view.record.current else 0
        try:
            attempt = start_next(view, spec, self.store, cloud, prices, self.avoid)
        except NoCapacity as exc:
            self._cannot_start(job_id, exc.reason, JobState.NO_CAPACITY, expected, memory)
            return
        except QuotaExceeded as exc:  # no pool of the quota's buckets will do until it is raised: stop now
            self.give_up(job_id, JobState.FAILED, f"{exc.reason} ({exc.hint})", expected)
            return
        except (UserError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            unless_credentials(exc, "starting the next attempt")
            # A refused permission, a throttled API...: may pass, so retried like capacity, then failed.
            message = (
                exc.message if isinstance(exc, UserError) else as_user_error(exc, "starting the next attempt").message
            )
            self._cannot_start(job_id, message, JobState.FAILED, expected, memory)
            return
        memory.waiting_since = memory.next_try = memory.delay = None
        if attempt is None:
            self.emit(job_id, "another spotctl (a watch, the controller) is starting the next attempt")
            return
        self.emit(
            job_id,
            f"{why}: attempt {attempt.number} on {attempt.instance_type} {attempt.zone} at {rate(attempt.spot_price)} ({attempt.instance_id})",
        )

    def _cannot_start(self, job_id: str, reason: str, outcome: JobState, expected: int, memory: StepMemory) -> None:
        """Back off and try again, until the deadline: then the job is given up as `outcome`."""
        now = self.clock()
        if memory.waiting_since is None:
            memory.waiting_since, memory.delay = now, self.options.capacity_retry_s / 2
        if now - memory.waiting_since >= self.options.capacity_deadline_s:
            self.give_up(job_id, outcome, f"{reason}; gave up after {now - memory.waiting_since:.0f}s", expected)
            memory.waiting_since = memory.next_try = memory.delay = None
            return
        memory.delay = min(self.options.capacity_retry_max_s, (memory.delay or self.options.capacity_retry_s / 2) * 2)
        memory.next_try = now + memory.delay
        what = (
            f"no capacity ({reason})" if outcome is JobState.NO_CAPACITY else f"cannot start the next attempt: {reason}"
        )
        self.emit(job_id, f"{what}; trying again in {memory.delay:.0f}s", logging.WARNING)

    def give_up(self, job_id: str, outcome: JobState, reason: str, expected: int) -> None:
        def mark(record: JobRecord) -> bool:
            current = record.current
            if (current.number if current else 0) != expected or record.outcome or record.cancelled_at:
                return False  # someone started an attempt (or ended the job) since we decided
            record.outcome, record.outcome_reason = outcome, reason
            return True

        if self.store.update_record(job_id, mark) is not None:
            self.emit(job_id, f"{outcome}: {reason}", logging.ERROR)

    # ------------------------------------------------------------------------------------ news, once
    def _note_state(self, view: JobView, memory: StepMemory) -> None:
        state, before = view.state, memory.state
        if state != before:
            memory.state = state.value
            if before is not None or state.terminal:
                self.emit(view.job_id, f"{before or 'now'} -> {state}" if before else state)

    def _note_health(self, job_id: str, flags: list[Flag], memory: StepMemory) -> None:
        """A health flag is news when it appears (and again after it cleared), not at every step."""
        before = set(memory.flags)
        for flag in flags:
            if flag.name not in before:
                self.emit(
                    job_id, f"{flag.name}: {flag.message}" + (f" ({flag.hint})" if flag.hint else ""), logging.WARNING
                )
        memory.flags = [flag.name for flag in flags]

    # ------------------------------------------------------------------------------------ helpers
    def _spec(self, job_id: str) -> JobSpec:
        if job_id not in self._specs:
            self._specs[job_id] = job_spec(self.store, job_id)
        return self._specs[job_id]

    def price_source(self, region: str) -> PriceSource:
        if region not in self._price_sources:
            self._price_sources[region] = self.prices(self.clouds(region))
        return self._price_sources[region]

    def emit(self, job_id: str, message: str, level: int = logging.INFO) -> None:
        self.on_event(Event(datetime.now(timezone.utc), job_id, message, level))


def unless_credentials(exc: Exception, doing: str) -> None:
    """Missing or invalid credentials end the driver's round at once with the hint: no later step or
    backoff would get another answer (every other error stops only its job's step)."""
    if bad_credentials(exc):
        raise (exc if isinstance(exc, UserError) else as_user_error(exc, doing)) from None
