"""Reading jobs: each one's view (record, heartbeat, final word, EC2's instances) with as few calls as
are safe, one job found by id, and a job's shipped logs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from orchestrator.aws.clients import Cloud
from orchestrator.aws.ec2 import by_attempt, machines_of
from orchestrator.aws.instances import LIVE
from orchestrator.errors import UserError
from orchestrator.jobs.nodes import standing_for
from orchestrator.jobs.record import JobStore, Unreadable, repair_hint
from orchestrator.jobs.state import NOT_LISTED_GRACE_S, JobView, age_s
from trainer.job import layout
from trainer.job.documents import WORKING_PHASES, Crash, Final, Heartbeat, JobState, Manifest
from trainer.job.spec import did_you_mean


def read_views(
    store: JobStore,
    job_ids: list[str],
    cloud_for_region: Callable[[str], Cloud],
    threads: int = 32,
    details: bool = False,
) -> list[JobView]:
    """Every job's state with as few reads as are safe, in parallel: record and heartbeat; one EC2
    call per region; then final.json only where the job may have ended (a running instance whose
    trainer reports a running phase has not). `details` adds the artifacts manifest.

    A job whose record cannot be read is `unreadable` (JobView.unreadable says where and why); a trainer's
    document that fails its model is read as far as it can be, the rest unknown (JobView.problems). Either
    way every other job is read as usual."""

    def first_reads(job_id: str) -> JobView:
        beat, problems = store.read_checked(job_id, Heartbeat, layout.HEARTBEAT)
        try:
            return JobView(job_id, store.read_record(job_id), beat, None, None, problems=problems)
        except Unreadable as exc:
            return JobView(job_id, None, beat, None, None, unreadable=exc.found, problems=problems)

    def read_into(view: JobView, kind, relative: str):
        found, problems = store.read_checked(view.job_id, kind, relative)
        view.problems += problems
        return found

    with ThreadPoolExecutor(max_workers=threads) as pool:
        views = list(pool.map(first_reads, job_ids))
        by_region: dict[str, list[JobView]] = {}
        for view in views:
            if view.record and view.record.attempts and not view.record.cancelled_at:
                by_region.setdefault(view.record.region, []).append(view)
        for region, group in by_region.items():
            machines = machines_of(cloud_for_region(region), [v.job_id for v in group])
            for view in group:
                listed = machines.get(view.job_id, [])
                view.machines = {m.instance_id: m for m in listed}
                view.instances = by_attempt(listed)
                for attempt in view.record.attempts:
                    if attempt.nodes:  # several machines: one lost node stands for the attempt
                        view.instances[attempt.number] = standing_for(
                            attempt, view.machines, age_s(attempt.launched_at) > NOT_LISTED_GRACE_S
                        )
                # Only the current attempt's instance tells about now; older ones are history.
                view.instance = view.instances.get(view.record.attempts[-1].number)
        # A job without a record (the trainer alone, `python -m trainer run`) is told by its final word too.
        maybe_ended = [v for v in views if not v.record or not _certainly_running(v)]
        for view, final in zip(
            maybe_ended, pool.map(lambda v: read_into(v, Final, layout.FINAL), maybe_ended), strict=True
        ):
            view.final = final
        # The bootstrap's crash report: only where the current attempt may have ended without a word.
        silent = [v for v in maybe_ended if v.record and v.record.attempts and not _said(v)]
        for view, crash in zip(
            silent,
            pool.map(lambda v: store.read(v.job_id, Crash, layout.crash_of(v.record.current.number)), silent),
            strict=True,
        ):
            view.crash = crash
        if details:
            for view, manifest in zip(
                views, pool.map(lambda v: read_into(v, Manifest, layout.MANIFEST), views), strict=True
            ):
                view.artifacts = manifest
    return views


def _said(view: JobView) -> bool:
    """The trainer left its final word for the current attempt (then no crash report can matter)."""
    return view.final is not None and view.final.attempt == view.record.current.number


def _certainly_running(view: JobView) -> bool:
    beat = view.heartbeat
    return (
        not view.record.stop_requested_at
        and view.instance is not None
        and view.instance.state in LIVE
        and beat is not None
        and beat.of_attempt(view.record.attempts[-1].number)
        and beat.phase in WORKING_PHASES
    )


def find_job(store: JobStore, job_id: str, cloud_for_region: Callable[[str], Cloud]) -> JobView:
    """The job `job_id` under the root, in detail. A job is whatever is listed under jobs/: also one
    the trainer ran alone, without spotctl's record (its view has no record)."""
    view = read_views(store, [job_id], cloud_for_region, details=True)[0]
    if view.record is None and job_id not in store.job_ids():
        raise UserError(
            f"no job '{job_id}' under {store.root}{did_you_mean(job_id, store.job_ids())}",
            "`spotctl status` lists the jobs there",
        )
    return view


def launched(view: JobView, doing: str) -> JobView:
    """The view, when spotctl launched the job (it has a record); else what `doing` cannot do."""
    if view.unreadable is not None:
        raise UserError(
            f"job {view.job_id}: cannot {doing} it, its record cannot be read: {view.unreadable}",
            repair_hint(view.job_id),
        )
    if view.record is None:
        raise UserError(
            f"job {view.job_id} has no record.json: the trainer ran it alone (`python -m trainer run`), "
            f"so spotctl cannot {doing} it",
            "`spotctl status JOB` and `spotctl logs JOB` read it; `spotctl launch JOB.yaml` runs a job spotctl follows",
        )
    return view


def log_text(
    store: JobStore, view: JobView, attempt: int | None = None, bootstrap: bool = False
) -> tuple[int, str, bytes | None]:
    """(attempt, object name, content) of a job's shipped log: the trainer's, or the bootstrap's
    (which is also what exists while the instance is still installing)."""
    attempts = len(view.record.attempts) if view.record else 0
    number = attempt or max(attempts, 1)
    if attempt is not None and not 1 <= attempt <= max(attempts, 1):
        raise UserError(f"job {view.job_id} has no attempt {attempt} (it has {attempts})")
    names = [layout.bootstrap_log(number)] if bootstrap else [layout.trainer_log(number), layout.bootstrap_log(number)]
    for name in names:
        content = store.read_bytes(view.job_id, name)
        if content is not None:
            return number, name, content
    return number, names[0], None


# ------------------------------------------------------------------------------- which jobs a list shows
RECENT_S = 24 * 3600.0  # `spotctl status` lists ended jobs this long after they ended (`--all`: every one)


def ended_at(view: JobView) -> str | None:
    """When a terminal job ended: the latest time its record or the trainer's documents name (None
    while it is not terminal)."""
    if not view.state.terminal:
        return None
    record, final, beat = view.record, view.final, view.heartbeat
    times = [
        *((record.cancelled_at, record.created_at, *(a.ended_at for a in record.attempts)) if record else ()),
        final.finished_at if final else None,
        beat.updated_at if beat else None,
    ]
    known = [datetime.fromisoformat(t) for t in times if t]
    return max(known).isoformat(timespec="seconds") if known else None


def listed(
    views: list[JobView], states: frozenset[JobState] | None = None, every: bool = False, now: datetime | None = None
) -> tuple[list[JobView], int]:
    """(the views a list shows, how many older ended ones it hides): those in `states` (default: any),
    of which, unless `every`, the live ones and those that ended within RECENT_S."""
    now = now or datetime.now(timezone.utc)
    chosen = [v for v in views if states is None or v.state in states]
    if every:
        return chosen, 0
    shown = [
        v
        for v in chosen
        if (end := ended_at(v)) is None or (now - datetime.fromisoformat(end)).total_seconds() <= RECENT_S
    ]
    return shown, len(chosen) - len(shown)
