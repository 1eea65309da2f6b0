"""Removing a job: every object under its prefix (trainer.job.layout), after making sure nothing of it
runs. A live job (not terminal, or with an instance EC2 still lists as live) is refused unless
`force`, which stops it first (`jobs.stop`) and terminates what is left.

The record and the job file go last: a removal cut short leaves a job `spotctl status` still lists
and `spotctl rm` can finish, never objects no command names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.aws.clients import Cloud
from orchestrator.aws.ec2 import live_instances, terminate
from orchestrator.errors import UserError
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.state import JobView
from orchestrator.jobs.stop import stop_job
from orchestrator.jobs.targets import delete_targets
from orchestrator.jobs.views import find_job
from trainer.job import layout

LAST = (layout.RECORD, layout.JOB_FILE)  # what makes it a job, removed after everything else


@dataclass
class Removed:
    job_id: str
    prefix: str  # the job's prefix URL
    objects: list[str] = field(default_factory=list)  # paths relative to the job's prefix
    stopped: bool = False  # --force stopped it first
    terminated: list[str] = field(default_factory=list)  # instances --force terminated


def live_reason(view: JobView, live: list[str]) -> str | None:
    """Why the job counts as live (None: it may be removed)."""
    if view.unreadable is not None:  # no region, no attempts: whether a machine of it runs cannot be told
        return f"its record cannot be read ({view.unreadable}), so whether it runs cannot be told"
    unfinished = not view.state.terminal and view.record is not None
    if unfinished:
        return f"it is {view.state}" + (f" on {', '.join(live)}" if live else "")
    return f"its instance {', '.join(live)} is still live" if live else None


def remove_job(
    store: JobStore, job_id: str, clouds: Callable[[str], Cloud], force: bool = False, stop_wait_s: float = 0.0
) -> Removed:
    """Delete every object of the job; refuse a live one unless `force` (then stop it first)."""
    view = find_job(store, job_id, clouds)
    live = live_instances(clouds(view.record.region), job_id) if view.record else []
    why = live_reason(view, live)
    removed = Removed(job_id, store.url(job_id))
    if why and not force and view.unreadable is not None:
        raise UserError(
            f"job {job_id}: not removed, {why}",
            f"`spotctl rm {job_id} --force` removes it anyway; an instance of it would carry the tag spotctl:job={job_id}",
        )
    if why and not force:
        raise UserError(
            f"job {job_id} is live: {why}; not removed",
            f"`spotctl stop {job_id}` first, or `spotctl rm {job_id} --force` (stops it, terminates its instance, removes it)",
        )
    if why and view.unreadable is None:
        if not view.state.terminal:
            removed.stopped = True
            stop_job(store, job_id, clouds, wait_s=stop_wait_s)  # the record says why it ended
        left = live_instances(clouds(view.record.region), job_id)
        if left:
            terminate(clouds(view.record.region), left)
        removed.terminated = sorted(set(live) | set(left))
    objects = store.objects(job_id)
    delete_targets(store, job_id)  # outside the job's prefix: its webhook URLs go with it
    store.delete_objects(job_id, [o for o in objects if o not in LAST])
    store.delete_objects(job_id, [o for o in objects if o in LAST])
    removed.objects = objects
    return removed
