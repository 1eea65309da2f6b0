"""Reading jobs: each one's view (record, heartbeat, final word, EC2's instances) with as few calls as
are safe, one job found by id, and a job's shipped logs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from orchestrator.aws.clients import Cloud
from orchestrator.aws.ec2 import instances_of
from orchestrator.aws.instances import LIVE
from orchestrator.errors import UserError
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.state import JobView
from trainer.job import layout
from trainer.job.documents import WORKING_PHASES, Final, Heartbeat, Manifest
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
    trainer reports a running phase has not). `details` adds the artifacts manifest."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        views = list(
            pool.map(
                lambda job_id: JobView(
                    job_id, store.read_record(job_id), store.read(job_id, Heartbeat, layout.HEARTBEAT), None, None
                ),
                job_ids,
            )
        )
        by_region: dict[str, list[JobView]] = {}
        for view in views:
            if view.record and view.record.attempts and not view.record.cancelled_at:
                by_region.setdefault(view.record.region, []).append(view)
        for region, group in by_region.items():
            instances = instances_of(cloud_for_region(region), [v.job_id for v in group])
            for view in group:
                view.instances = instances.get(view.job_id, {})
                # Only the current attempt's instance tells about now; older ones are history.
                view.instance = view.instances.get(view.record.attempts[-1].number)
        maybe_ended = [v for v in views if v.record and not _certainly_running(v)]
        for view, final in zip(
            maybe_ended, pool.map(lambda v: store.read(v.job_id, Final, layout.FINAL), maybe_ended), strict=True
        ):
            view.final = final
        if details:
            for view, manifest in zip(
                views, pool.map(lambda v: store.read(v.job_id, Manifest, layout.MANIFEST), views), strict=True
            ):
                view.artifacts = manifest
    return views


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
    view = read_views(store, [job_id], cloud_for_region, details=True)[0]
    if view.record is None:
        raise UserError(
            f"no job '{job_id}' under {store.root}{did_you_mean(job_id, store.job_ids())}",
            "`spotctl status` lists the jobs there",
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
