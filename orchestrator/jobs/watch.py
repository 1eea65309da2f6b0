"""`spotctl watch`: follow jobs until each is terminal, recovering them as they go.

Every poll reads each job's record, heartbeat and EC2's view of its instances (jobs.views) and runs
the decision step (jobs.step: settle, decide, act) on each: the same step the serverless controller
runs per event or tick. Nothing here is remembered that another driver would need: the record in S3 is
the shared state, changed only by conditional writes, so two watchers, the controller and `spotctl
resume` never start two instances for one attempt. With a `lease` holder the watch says in S3 that
it follows the job (jobs.caretaker reads it: `spotctl status` shows who looks after a job).

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

import botocore.exceptions

from orchestrator.aws.clients import Cloud, as_user_error
from orchestrator.aws.prices import PriceSource
from orchestrator.errors import ExitCode, UserError
from orchestrator.jobs import caretaker
from orchestrator.jobs.notify import Notifier
from orchestrator.jobs.record import JobStore, Unreadable, repair_hint
from orchestrator.jobs.state import JobView
from orchestrator.jobs.step import Event, JobRow, StepMemory, Stepper, WatchOptions, unless_credentials
from orchestrator.jobs.views import read_views
from trainer.job.documents import JobState

__all__ = ["Event", "JobRow", "UNFOLLOWABLE_POLLS", "WatchOptions", "Watcher"]

log = logging.getLogger(__name__)

# A record or job.yaml that cannot be read is rarely fixed between two polls (a hand edit being undone is the
# exception), and a deleted one never comes back by itself: this many polls in a row, then the job is given up.
UNFOLLOWABLE_POLLS = WatchOptions().unfollowable_polls


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
        lease: caretaker.Lease | None = None,
    ):
        self.store, self.job_ids = store, list(job_ids)
        self.options = options or WatchOptions()
        self.clock = clock
        self.stepper = Stepper(store, clouds, prices, self.options, clock, on_event, notifier)
        self.lease = lease  # None: this watch says nothing in S3 of following its jobs (tests, benches)
        self.rows: dict[str, JobRow] = {}
        self._memory: dict[str, StepMemory] = {}
        self._finished: set[str] = set()
        self._ended_at: dict[str, float] = {}  # when each job was first seen terminal
        self._unfollowable: dict[str, int] = {}  # polls in a row each job could not be followed
        self.given_up: dict[str, str] = {}  # the jobs the watch gave up on, and why

    @property
    def clouds(self) -> Callable[[str], Cloud]:
        return self.stepper.clouds

    @clouds.setter
    def clouds(self, clouds: Callable[[str], Cloud]) -> None:
        self.stepper.clouds = clouds

    @property
    def on_event(self) -> Callable[[Event], None]:
        return self.stepper.on_event

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
                self.rows[view.job_id] = self.stepper.step(view, self._memory.setdefault(view.job_id, StepMemory()))
                self._unfollowable.pop(view.job_id, None)
            except Unreadable as exc:  # job.yaml, or the record since the first read: nothing to act on
                self._cannot_follow(view, exc)
                continue
            except (UserError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
                unless_credentials(exc, "following the job")
                # One job's trouble (a refused call, a vanished spec, S3 failing) stops only it, this poll.
                message = exc.message if isinstance(exc, UserError) else as_user_error(exc, "following the job").message
                self._emit(view.job_id, message, logging.ERROR)
                self.rows[view.job_id] = JobRow(view)
            self._note_finished(self.rows[view.job_id].view)
        if self.lease is not None:
            self.lease.hold(self.store, [j for j in self.job_ids if j not in self._finished])
        return self.rows

    def release(self) -> None:
        """The watch ends (Ctrl-C, every job done): its leases go, so nobody counts on it any more."""
        if self.lease is not None:
            self.lease.release(self.store, self.job_ids)

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
        owed = self.stepper.notifier.owes(view.job_id)
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

    # ------------------------------------------------------------------------------------ helpers
    def price_source(self, region: str) -> PriceSource:
        return self.stepper.price_source(region)

    def _emit(self, job_id: str, message: str, level: int = logging.INFO) -> None:
        self.stepper.emit(job_id, message, level)
