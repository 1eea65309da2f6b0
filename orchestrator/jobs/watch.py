"""`spotctl watch`: follow jobs until each is terminal, recovering them as they go.

Every poll reads each job's record, heartbeat and EC2's view of its instances (jobs.views), records
how ended attempts ended (jobs.state.settle), asks jobs.policy.decide what to do and does it:
start the next attempt after an interruption (within the same poll that sees it), retry a failure
when allowed, stop at the budget, terminate what a stop left running. Nothing here is remembered
that another watcher would need: the record in S3 is the shared state, changed only by conditional
writes, so two watchers (or a watcher and `spotctl resume`) never start two instances for one attempt.

When EC2 refuses every offer, the job waits with exponential backoff and is given up as
`no_capacity` after `capacity_deadline_s`.

A job that cannot be followed at all (its record.json or job.yaml unreadable or gone: jobs.record.Unreadable)
is said once, and given up after `unfollowable_polls` polls in a row, with that reason; the watch then
exits `ExitCode.GAVE_UP`. The other jobs are followed to their end meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import botocore.exceptions

from orchestrator.aws.clients import Cloud, as_user_error
from orchestrator.aws.ec2 import live_instances, terminate
from orchestrator.aws.prices import Pool, PriceSource
from orchestrator.errors import ExitCode, UserError
from orchestrator.jobs.cost import JobCost, cost_of
from orchestrator.jobs.health import Flag, job_health
from orchestrator.jobs.launch import NoCapacity, QuotaExceeded
from orchestrator.jobs.notify import SEND_TIMEOUT_S, Notifier
from orchestrator.jobs.policy import Action, decide
from orchestrator.jobs.record import JobStore, Unreadable, repair_hint
from orchestrator.jobs.recover import job_spec, set_aside_final, settle_view, start_next
from orchestrator.jobs.state import JobView
from orchestrator.jobs.stop import request_stop
from orchestrator.jobs.views import read_views
from trainer.job.documents import EndReason, JobRecord, JobState
from trainer.job.spec import JobSpec
from trainer.job.storage import bad_credentials
from trainer.job.units import rate

log = logging.getLogger(__name__)

# A record or job.yaml that cannot be read is rarely fixed between two polls (a hand edit being undone is the
# exception), and a deleted one never comes back by itself: this many polls in a row, then the job is given up.
UNFOLLOWABLE_POLLS = 3


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
    unfollowable_polls: int = UNFOLLOWABLE_POLLS
    """Polls in a row a job's record.json or job.yaml may be unreadable before the watch gives up on it."""


@dataclass(frozen=True)
class Event:
    at: datetime
    job_id: str
    message: str
    level: int = logging.INFO


@dataclass
class _Waiting:
    since: float
    next_try: float
    delay: float


@dataclass
class JobRow:
    """What the live view shows of one job after a poll."""

    view: JobView
    cost: JobCost | None = None
    waiting_for_capacity_s: float | None = None
    health: list[Flag] = field(default_factory=list)


class Watcher:
    def __init__(
        self,
        store: JobStore,
        job_ids: list[str],
        clouds: Callable[[str], Cloud],
        prices: Callable[[Cloud], PriceSource],
        options: WatchOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[Event], None] | None = None,
        notifier: Notifier | None = None,
    ):
        self.store, self.job_ids, self.clouds, self.prices = store, list(job_ids), clouds, prices
        self.options = options or WatchOptions()
        self.clock = clock
        self.on_event = on_event or (lambda event: log.info("%s: %s", event.job_id, event.message))
        self.rows: dict[str, JobRow] = {}
        self._specs: dict[str, JobSpec] = {}
        self._states: dict[str, JobState] = {}
        self._flags: dict[str, set[str]] = {}
        self._finished: set[str] = set()
        self._ended_at: dict[str, float] = {}  # when each job was first seen terminal
        self._waiting: dict[str, _Waiting] = {}
        self._avoid: dict[Pool, datetime] = {}  # pools seen interrupted, shared by every job watched here
        self._price_sources: dict[str, PriceSource] = {}
        self._unfollowable: dict[str, int] = {}  # polls in a row each job could not be followed
        self.given_up: dict[str, str] = {}  # the jobs the watch gave up on, and why
        self.notifier = notifier or Notifier(
            store,
            lambda region: self.clouds(region).client("sns", retries="once", timeout_s=SEND_TIMEOUT_S),
            on_note=self._emit,
        )

    # ------------------------------------------------------------------------------------ polling
    def poll(self) -> dict[str, JobRow]:
        """One round over every job not yet terminal; returns the rows for display."""
        active = [j for j in self.job_ids if j not in self._finished]
        for view in read_views(self.store, active, self.clouds):
            if view.unreadable is not None:
                self._cannot_follow(view, Unreadable(view.job_id, view.unreadable))
                continue
            if view.record is None:
                self._emit(view.job_id, f"no job {view.job_id} under {self.store.root}", logging.ERROR)
                self.rows[view.job_id] = JobRow(view)
                self._finished.add(view.job_id)
                continue
            try:
                self.rows[view.job_id] = self._follow(view)
                self._unfollowable.pop(view.job_id, None)
            except Unreadable as exc:  # job.yaml, or the record since the first read: nothing to act on
                self._cannot_follow(view, exc)
                continue
            except (UserError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
                _unless_credentials(exc, "following the job")
                # One job's trouble (a refused call, a vanished spec, S3 failing) stops only it, this poll.
                message = exc.message if isinstance(exc, UserError) else as_user_error(exc, "following the job").message
                self._emit(view.job_id, message, logging.ERROR)
                self.rows[view.job_id] = JobRow(view)
            self._note_finished(self.rows[view.job_id].view)
        return self.rows

    def _cannot_follow(self, view: JobView, exc: Unreadable) -> None:
        """Say once why the job cannot be followed; give it up after `unfollowable_polls` polls in a row."""
        job_id, limit = view.job_id, self.options.unfollowable_polls
        polls = self._unfollowable[job_id] = self._unfollowable.get(job_id, 0) + 1
        self.rows[job_id] = JobRow(view)
        if polls == 1 and limit > 1:
            self._emit(job_id, f"cannot follow it: {exc.found}; giving up after {limit} polls", logging.ERROR)
        if polls >= limit:
            self.given_up[job_id] = str(exc.found)
            self._finished.add(job_id)
            self._emit(job_id, f"gave up: {exc.found} ({repair_hint(job_id)})", logging.ERROR)

    def _note_finished(self, view: JobView) -> None:
        """A terminal job is followed until every attempt's end is recorded (or the grace is over)."""
        if not view.state.terminal:
            self._ended_at.pop(view.job_id, None)
            return
        first = self._ended_at.setdefault(view.job_id, self.clock())
        unsettled = any(a.instance_id and a.ended_at is None for a in view.record.attempts)
        # A notification that failed is tried at the next polls (until sent or given up: bounded).
        owed = self.notifier.owes(view.job_id)
        if (not unsettled or self.clock() - first >= self.options.settle_grace_s) and not owed:
            self._finished.add(view.job_id)

    def done(self) -> bool:
        return all(j in self._finished for j in self.job_ids)

    def exit_code(self) -> int:
        """0 when every job succeeded; GAVE_UP (4) when a job could not be followed; 1 otherwise."""
        if self.given_up:
            return ExitCode.GAVE_UP
        return 0 if all(j in self.rows and self.rows[j].view.state is JobState.SUCCEEDED for j in self.job_ids) else 1

    def run(
        self, sleep: Callable[[float], None] = time.sleep, after_poll: Callable[[dict[str, JobRow]], None] | None = None
    ) -> int:
        while True:
            started = self.clock()
            rows = self.poll()
            if after_poll:
                after_poll(rows)
            if self.done():
                return self.exit_code()
            sleep(max(0.0, self.options.poll_s - (self.clock() - started)))

    # ------------------------------------------------------------------------------------ one job
    def _follow(self, view: JobView) -> JobRow:
        job_id = view.job_id
        before = {a.number: a.end_reason for a in view.record.attempts}
        settle_view(self.store, view)
        for attempt in view.record.attempts:
            if attempt.end_reason and before.get(attempt.number) is None:
                steps = f" at step {attempt.end_step}" if attempt.end_step is not None else ""
                why = f" ({attempt.state_reason})" if attempt.state_reason else ""
                detail = f": {attempt.end_detail}" if attempt.end_detail else ""  # a crash: how the trainer died
                self._emit(
                    job_id,
                    f"attempt {attempt.number} on {attempt.instance_type} {attempt.zone} ended: {attempt.end_reason}{why}{steps}{detail}",
                )
                if attempt.end_reason in (EndReason.INTERRUPTED, EndReason.NOT_STARTED):
                    self._avoid[(attempt.instance_type, attempt.zone)] = datetime.now(timezone.utc)
        spec = self._spec(job_id)
        cloud = self.clouds(view.record.region)
        prices = self._prices(cloud)
        cost = cost_of(view, prices) if view.record.attempts else None
        decision = decide(view, spec, cost, self.options.poll_s)
        if decision.action in (Action.START, Action.RETRY):
            self._start(view, spec, cloud, prices, retry=decision.action is Action.RETRY, why=decision.reason)
        elif decision.action is Action.STOP:
            request_stop(self.store, job_id, f"budget: {decision.reason}", outcome=decision.outcome)
            self._emit(job_id, f"budget: {decision.reason}; asking the trainer to checkpoint and stop", logging.WARNING)
        elif decision.action is Action.TERMINATE:
            live = live_instances(cloud, job_id)
            if live:
                terminate(cloud, live)
                self._emit(job_id, f"stopped ({decision.reason}); terminated {', '.join(live)}")
        elif decision.action is Action.GIVE_UP:
            self._give_up(
                job_id, decision.outcome, decision.reason, view.record.current.number if view.record.current else 0
            )
        fresh = view
        if decision.action not in (Action.WAIT, Action.DONE):
            fresh = self._reread(view)
            settle_view(self.store, fresh)  # e.g. the machine a stop just terminated: its end is known now
        self._note_state(fresh)
        # After the action, never before it: a slow or dead webhook must not delay the next attempt.
        self.notifier.step(fresh, lambda: cost_of(fresh, prices) if fresh.record.attempts else None)
        health = job_health(fresh)
        self._note_health(job_id, health)
        waiting = self._waiting.get(job_id)
        return JobRow(fresh, cost, self.clock() - waiting.since if waiting else None, health)

    def _start(self, view: JobView, spec: JobSpec, cloud: Cloud, prices: PriceSource, retry: bool, why: str) -> None:
        job_id = view.job_id
        waiting = self._waiting.get(job_id)
        if waiting and self.clock() < waiting.next_try:
            return
        if retry:
            set_aside_final(self.store, view)
        expected = view.record.current.number if view.record.current else 0
        try:
            attempt = start_next(view, spec, self.store, cloud, prices, self._avoid)
        except NoCapacity as exc:
            self._cannot_start(job_id, exc.reason, JobState.NO_CAPACITY, expected)
            return
        except QuotaExceeded as exc:  # no pool of the quota's buckets will do until it is raised: stop now
            self._give_up(job_id, JobState.FAILED, f"{exc.reason} ({exc.hint})", expected)
            return
        except (UserError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            _unless_credentials(exc, "starting the next attempt")
            # A refused permission, a throttled API...: may pass, so retried like capacity, then failed.
            message = (
                exc.message if isinstance(exc, UserError) else as_user_error(exc, "starting the next attempt").message
            )
            self._cannot_start(job_id, message, JobState.FAILED, expected)
            return
        self._waiting.pop(job_id, None)
        if attempt is None:
            self._emit(job_id, "another watcher is starting the next attempt")
            return
        self._emit(
            job_id,
            f"{why}: attempt {attempt.number} on {attempt.instance_type} {attempt.zone} at {rate(attempt.spot_price)} ({attempt.instance_id})",
        )

    def _cannot_start(self, job_id: str, reason: str, outcome: JobState, expected: int) -> None:
        """Back off and try again, until the deadline: then the job is given up as `outcome`."""
        now = self.clock()
        waiting = self._waiting.get(job_id) or _Waiting(now, now, self.options.capacity_retry_s / 2)
        if now - waiting.since >= self.options.capacity_deadline_s:
            self._give_up(job_id, outcome, f"{reason}; gave up after {now - waiting.since:.0f}s", expected)
            self._waiting.pop(job_id, None)
            return
        waiting.delay = min(self.options.capacity_retry_max_s, waiting.delay * 2)
        waiting.next_try = now + waiting.delay
        self._waiting[job_id] = waiting
        what = (
            f"no capacity ({reason})" if outcome is JobState.NO_CAPACITY else f"cannot start the next attempt: {reason}"
        )
        self._emit(job_id, f"{what}; trying again in {waiting.delay:.0f}s", logging.WARNING)

    def _give_up(self, job_id: str, outcome: JobState, reason: str, expected: int) -> None:
        def mark(record: JobRecord) -> bool:
            current = record.current
            if (current.number if current else 0) != expected or record.outcome or record.cancelled_at:
                return False  # someone started an attempt (or ended the job) since we decided
            record.outcome, record.outcome_reason = outcome, reason
            return True

        if self.store.update_record(job_id, mark) is not None:
            self._emit(job_id, f"{outcome}: {reason}", logging.ERROR)

    # ------------------------------------------------------------------------------------ helpers
    def _reread(self, view: JobView) -> JobView:
        return read_views(self.store, [view.job_id], self.clouds)[0]

    def _note_state(self, view: JobView) -> None:
        state, before = view.state, self._states.get(view.job_id)
        if state != before:
            self._states[view.job_id] = state
            if before is not None or state.terminal:
                self._emit(view.job_id, f"{before or 'now'} -> {state}" if before else state)

    def _note_health(self, job_id: str, flags: list[Flag]) -> None:
        """A health flag is news when it appears (and again after it cleared), not at every poll."""
        before = self._flags.get(job_id, set())
        for flag in flags:
            if flag.name not in before:
                self._emit(
                    job_id, f"{flag.name}: {flag.message}" + (f" ({flag.hint})" if flag.hint else ""), logging.WARNING
                )
        self._flags[job_id] = {flag.name for flag in flags}

    def _spec(self, job_id: str) -> JobSpec:
        if job_id not in self._specs:
            self._specs[job_id] = job_spec(self.store, job_id)
        return self._specs[job_id]

    def price_source(self, region: str) -> PriceSource:
        return self._prices(self.clouds(region))

    def _prices(self, cloud: Cloud) -> PriceSource:
        if cloud.region not in self._price_sources:
            self._price_sources[cloud.region] = self.prices(cloud)
        return self._price_sources[cloud.region]

    def _emit(self, job_id: str, message: str, level: int = logging.INFO) -> None:
        self.on_event(Event(datetime.now(timezone.utc), job_id, message, level))


def _unless_credentials(exc: Exception, doing: str) -> None:
    """Missing or invalid credentials end the watch at once with the hint: no later poll or backoff
    would get another answer (every other error stops only its job's turn)."""
    if bad_credentials(exc):
        raise (exc if isinstance(exc, UserError) else as_user_error(exc, doing)) from None
