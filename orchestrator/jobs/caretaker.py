"""Who looks after a job: who recovers its next interruption, retries a failure, stops it at its budget.

Two drivers do (jobs.step is their one decision logic): the serverless controller, when one is deployed
for the storage root (it writes controller/tick.json every minute: a tick within CONTROLLER_FRESH_S
means it runs), and a running `spotctl watch`, which holds a lease on each job it follows
(care/watch.json, renewed as it polls, gone when it ends or expires). Neither: nobody, until someone
runs `spotctl watch` or `spotctl resume`. `spotctl status`, `spotctl launch` and Ctrl-C in `watch` ask
here, so they say the same.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from orchestrator.jobs.record import JobStore
from trainer.job import layout
from trainer.job.documents import ControllerTick, WatchLease

CONTROLLER_FRESH_S = 180.0  # the schedule ticks every minute: three missed ticks and it is not running
NOBODY = "nothing recovers an interruption until you run `spotctl watch` or `spotctl resume` again"
DEPLOY_HINT = "`spotctl infra deploy` deploys the controller (the local cloud: `spotctl local up`)"


@dataclass(frozen=True)
class Care:
    """Who looks after one job."""

    by: str  # "controller", "watch" or "nobody"
    detail: str  # e.g. "controller (last tick 40s ago)"
    fix: str | None = None  # nobody: the command that makes someone look after it

    def __str__(self) -> str:
        return self.detail + (f"; {self.fix}" if self.fix else "")


def controller_tick(store: JobStore) -> ControllerTick | None:
    """The controller's last tick under this root; None when it never ticked (or it cannot be read)."""
    try:
        body = store.storage.read_bytes(layout.CONTROLLER_TICK)
    except (FileNotFoundError, PermissionError):
        return None
    return ControllerTick.parse(body)


def tick_age_s(tick: ControllerTick | None, now: datetime | None = None) -> float | None:
    if tick is None or tick.at is None:
        return None
    now = now or datetime.now(timezone.utc)
    return max(0.0, (now - datetime.fromisoformat(tick.at)).total_seconds())


def controller_runs(tick: ControllerTick | None, now: datetime | None = None) -> bool:
    """Whether a controller looks after this root now: it ticked within CONTROLLER_FRESH_S."""
    age = tick_age_s(tick, now)
    return age is not None and age <= CONTROLLER_FRESH_S


def watch_lease(store: JobStore, job_id: str, now: datetime | None = None) -> WatchLease | None:
    """The lease of a `spotctl watch` following the job now; None when none holds one (or it expired)."""
    try:
        lease = WatchLease.parse(store.read_bytes(job_id, layout.WATCH_LEASE))
    except (FileNotFoundError, PermissionError):
        return None
    return lease if unexpired(lease, now) else None


def unexpired(lease: WatchLease | None, now: datetime | None = None) -> bool:
    """Whether a lease (a watch's on a job, a sweep driver's on its sweep) still holds at `now`."""
    now = now or datetime.now(timezone.utc)
    return lease is not None and lease.expires_at is not None and datetime.fromisoformat(lease.expires_at) >= now


def lease_body(holder: str, expiry_s: float) -> bytes:
    """A lease held by `holder` from now for `expiry_s` seconds."""
    at = datetime.now(timezone.utc)
    return WatchLease.dump(
        {
            "holder": holder,
            "updated_at": at.isoformat(timespec="seconds"),
            "expires_at": (at + timedelta(seconds=expiry_s)).isoformat(timespec="seconds"),
        }
    )


UNREAD = object()  # caretaker's tick not read yet by the caller


def caretaker(
    store: JobStore,
    job_id: str,
    now: datetime | None = None,
    tick: ControllerTick | None | object = UNREAD,
    but: str | None = None,
) -> Care:
    """Who looks after the job now. `tick`: the root's controller tick (controller_tick), when the caller
    read it already (one read for many jobs); `but`: a watch lease holder to leave out (the watch that is
    ending)."""
    now = now or datetime.now(timezone.utc)
    tick = controller_tick(store) if tick is UNREAD else tick
    if controller_runs(tick, now):
        return Care("controller", f"the controller (last tick {_ago(tick_age_s(tick, now))})")
    lease = watch_lease(store, job_id, now)
    if lease is not None and lease.holder != but:
        return Care("watch", f"spotctl watch on {lease.holder}")
    age = tick_age_s(tick, now)
    if age is not None:
        return Care(
            "nobody",
            f"nobody: the controller's last tick was {_ago(age)}",
            f"`spotctl watch {job_id}`; `spotctl infra status` says what stopped the controller",
        )
    return Care("nobody", "nobody", f"`spotctl watch {job_id}`, or {DEPLOY_HINT}")


def left_alone(store: JobStore, job_ids: list[str], but: str | None = None) -> str:
    """What happens to these jobs when the watch over them (lease holder `but`) ends (Ctrl-C)."""
    tick = controller_tick(store)
    cares = {job_id: caretaker(store, job_id, tick=tick, but=but) for job_id in job_ids}
    if all(care.by == "nobody" for care in cares.values()):
        return NOBODY
    if all(care.by == "controller" for care in cares.values()):
        return f"{next(iter(cares.values())).detail} recovers {'them' if len(cares) > 1 else 'it'}"
    return "; ".join(f"{job_id}: {care.detail if care.by != 'nobody' else NOBODY}" for job_id, care in cares.items())


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


class Lease:
    """A running watch's leases on the jobs it follows: written as it polls, renewed before they expire."""

    def __init__(self, poll_s: float, holder: str | None = None, clock=time.monotonic):
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        # Long enough that a slow poll (many jobs, a throttled API) does not let it lapse; short enough
        # that a watch killed without Ctrl-C (a closed laptop) stops counting within minutes.
        self.expiry_s = max(60.0, 3 * poll_s)
        self.clock = clock
        self._written: dict[str, float] = {}

    def hold(self, store: JobStore, job_ids: list[str]) -> None:
        """Write (or renew) the lease on each job, once a third of its time has passed since the last."""
        now = self.clock()
        for job_id in job_ids:
            if job_id in self._written and now - self._written[job_id] < self.expiry_s / 3:
                continue
            store.write(job_id, layout.WATCH_LEASE, lease_body(self.holder, self.expiry_s))
            self._written[job_id] = now

    def release(self, store: JobStore, job_ids: list[str]) -> None:
        """Delete the leases this watch holds (one another watch took over since is left alone)."""
        for job_id in job_ids:
            if self._written.pop(job_id, None) is None:
                continue
            try:
                lease = WatchLease.parse(store.read_bytes(job_id, layout.WATCH_LEASE))
                if lease is not None and lease.holder == self.holder:
                    store.delete(job_id, layout.WATCH_LEASE)
            except (FileNotFoundError, PermissionError):
                pass
