"""`spotctl watch [JOB...]`: follow jobs until each is terminal, recovering interruptions as they come
(orchestrator.jobs.watch), with a live table on a terminal and one line per event elsewhere. Exit code 0
when every job succeeded, 1 otherwise.

`--json` prints one JSON object per event (`{"at", "job_id", "level", "message"}`) and, at the end,
`{"jobs": [status --json documents, with cost]}`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

import click

from orchestrator.aws.clients import Cloud
from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.cli.status import cost_text, job_panel, progress_text
from orchestrator.jobs.cost import cost_of
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.status import status_document
from orchestrator.jobs.views import read_views
from orchestrator.jobs.watch import Event, JobRow, Watcher, WatchOptions


@click.command("watch")
@click.argument("job_ids", metavar="[JOB...]", nargs=-1)
@options.poll_option
@click.option(
    "--capacity-deadline",
    "deadline_s",
    type=click.FloatRange(0),
    default=1800.0,
    show_default=True,
    help="Seconds to keep retrying when EC2 has no capacity anywhere, before the job is no_capacity.",
)
@click.option(
    "--all",
    "every_job",
    is_flag=True,
    help="Without JOBs: also recover jobs left interrupted or pending, not just those running now.",
)
@options.storage_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(
    app: App,
    job_ids: tuple[str, ...],
    poll_s: float,
    deadline_s: float,
    every_job: bool,
    storage: str | None,
    profile: str | None,
    as_json: bool,
) -> int:
    """Follow JOBs (default: every job under the storage root running now) until each ends."""
    store, clouds = app.store(storage, profile), app.clouds(profile)
    if not job_ids:
        # Jobs left interrupted long ago are not relaunched behind the user's back: they are named.
        unfinished = [v for v in read_views(store, store.job_ids(), clouds) if not v.state.terminal]
        idle = [v.job_id for v in unfinished if v.state.idle]
        job_ids = tuple(v.job_id for v in unfinished if every_job or not v.state.idle)
        if idle and not every_job:
            click.echo(
                f"not recovering {render.plural(len(idle), 'idle job')} ({', '.join(idle[:5])}); name them, or pass --all",
                err=True,
            )
        if not job_ids:
            click.echo(f"no running job under {store.root}")
            return 0
    return follow(
        app, store, list(job_ids), clouds, WatchOptions(poll_s=poll_s, capacity_deadline_s=deadline_s), as_json
    )


def follow(
    app: App,
    store: JobStore,
    job_ids: list[str],
    clouds: Callable[[str], Cloud],
    watch_options: WatchOptions | None = None,
    as_json: bool = False,
) -> int:
    """Run a Watcher with the live view (launch --watch and resume --watch use it too)."""

    def watcher_telling(on_event) -> Watcher:
        return Watcher(store, job_ids, clouds, app.prices, watch_options, on_event=on_event)

    if as_json:
        watcher = watcher_telling(_json_event)
        code = watcher.run()
        click.echo(json.dumps({"jobs": [_document(row) for row in watcher.rows.values()]}, indent=2))
        return code
    out = render.console()
    if not sys.stdout.isatty():  # a log, a CI job: one line per event, the jobs in full at the end
        watcher = watcher_telling(lambda e: out.print(_event_line(e), markup=False))
        code = watcher.run()
    else:
        from rich.live import Live

        with Live(console=out, refresh_per_second=2, transient=True) as live:
            watcher = watcher_telling(lambda e: live.console.print(_event_line(e), markup=False))
            code = watcher.run(after_poll=lambda rows: live.update(table(rows)))
    _summary(out, store, watcher)
    return code


def _summary(out, store, watcher: Watcher) -> None:
    """Each job as `spotctl status JOB` shows it: attempts and why they ended, cost, savings, artifacts."""
    for view in read_views(store, list(watcher.rows), watcher.clouds, details=True):
        if view.record is None:
            continue
        out.print(
            job_panel(status_document(view, cost_of(view, watcher.price_source(view.record.region)), with_cost=True))
        )


WATCH_HEADERS = ["job", "state", "attempt", "progress", "cost", "health"]
# Columns keep these widths as their values change from poll to poll (a live table that jumps about is
# unreadable): the longest state, an attempt on a long type and zone, a progress line with its GPU.
WATCH_WIDTHS = {
    "state": len("budget_exceeded"),
    "attempt": len("#2 g4dn.12xlarge us-east-1d"),
    "progress": len("step 1000/2000 ep 10/20, GPU 100%"),
    "cost": len("$0.0123 ($0.0123 waived)"),
}


def table(rows: dict[str, JobRow]):
    body = []
    for job_id, row in rows.items():
        view = status_document(row.view, row.cost, with_cost=True)
        last = view["attempts"][-1] if view["attempts"] else None
        where = f"#{last['number']} {last['instance_type']} {last['zone']}" if last else None
        state = view["state"] + (
            f" (no capacity for {render.duration(row.waiting_for_capacity_s)})" if row.waiting_for_capacity_s else ""
        )
        cost = view["cost"]
        money = (
            cost_text(cost)
            + (f" ({cost['savings']:.0%} saved)" if cost["total_usd"] and cost["savings"] is not None else "")
            if cost
            else None
        )
        health = "; ".join(f"{f['name']}: {f['hint']}" if f["hint"] else f["name"] for f in view["health"]) or None
        body.append([job_id, state, where, _progress(view), money, health])
    return render.table(WATCH_HEADERS, body, ids=("job",), min_widths=WATCH_WIDTHS)


def _progress(view: dict) -> str | None:
    """The status list's progress (the same words while the next attempt starts), with the GPU."""
    p = view["progress"] or {}
    text = progress_text(view)
    if text is None or text.startswith("starting"):
        return text
    gpu = (view["gpu"] or {}).get("gpu_util_pct")
    return f"step {p['step']}/{p.get('total_steps')} ep {p.get('epoch')}/{p.get('epochs')}" + (
        f", GPU {gpu:.0f}%" if gpu is not None else ""
    )


def _event_line(event: Event) -> str:
    mark = {logging.WARNING: "! ", logging.ERROR: "x "}.get(event.level, "")
    return f"{event.at:%H:%M:%S} {event.job_id}: {mark}{event.message}"


def _json_event(event: Event) -> None:
    click.echo(
        json.dumps(
            {
                "at": event.at.isoformat(timespec="seconds"),
                "job_id": event.job_id,
                "level": logging.getLevelName(event.level).lower(),
                "message": event.message,
            }
        )
    )


def _document(row: JobRow) -> dict:
    return status_document(row.view, row.cost, with_cost=True)
