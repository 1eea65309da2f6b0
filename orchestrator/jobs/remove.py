"""Removing a job: every object under its prefix (trainer.job.layout), after making sure nothing of it
runs. A live job (not terminal, or with an instance EC2 still lists as live) is refused unless
`force`, which stops it first (`jobs.stop`) and terminates what is left.

The record and the job file go last: a removal cut short leaves a job `spotctl status` still lists
and `spotctl rm` can finish, never objects no command names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.aws import placement
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
GROUP_WAIT_S = 60.0  # how long rm waits for EC2 to finish terminating a multi-node job's machines


def delete_groups(cloud: Cloud, job_id: str, wait_s: float, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Delete the job's placement groups (compute.nodes > 1); EC2 refuses while a machine of one is
    still terminating, so each is tried every few seconds for `wait_s`. The names still there."""
    left = placement.groups_of(cloud, job_id)
    deadline = time.monotonic() + wait_s
    while left:
        left = [name for name in left if not placement.delete_group(cloud, name)]
        if not left or time.monotonic() >= deadline:
            break
        sleep(3.0)
    return left


@dataclass
class Removed:
    job_id: str
    prefix: str  # the job's prefix URL
    objects: list[str] = field(default_factory=list)  # paths relative to the job's prefix
    stopped: bool = False  # --force stopped it first
    terminated: list[str] = field(default_factory=list)  # instances --force terminated
    groups_left: list[str] = field(default_factory=list)  # placement groups EC2 would not delete yet (in use)


def live_reason(view: JobView, live: list[str]) -> str | None:
    """Why the job counts as live (None: it may be removed)."""
    if view.unreadable is not None:  # no region, no attempts: whether a machine of it runs cannot be told
        return f"its record cannot be read ({view.unreadable}), so whether it runs cannot be told"
    unfinished = not view.state.terminal and view.record is not None
    if unfinished:
        return f"it is {view.state}" + (f" on {', '.join(live)}" if live else "")
    return f"its instance {', '.join(live)} is still live" if live else None


def remove_job(
    store: JobStore,
    job_id: str,
    clouds: Callable[[str], Cloud],
    force: bool = False,
    stop_wait_s: float = 0.0,
    group_wait_s: float = GROUP_WAIT_S,
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
    if view.record is not None and any(a.nodes for a in view.record.attempts):  # a multi-node job's
        removed.groups_left = delete_groups(clouds(view.record.region), job_id, group_wait_s)
    objects = store.objects(job_id)
    delete_targets(store, job_id)  # outside the job's prefix: its webhook URLs go with it
    store.delete_objects(job_id, [o for o in objects if o not in LAST])
    store.delete_objects(job_id, [o for o in objects if o in LAST])
    removed.objects = objects
    return removed
