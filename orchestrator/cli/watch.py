"""`spotctl watch [JOB...]`: follow jobs until each is terminal, recovering interruptions as they come
(orchestrator.jobs.watch), with a live table on a terminal and one line per event elsewhere. Exit code 0
when every job succeeded, 4 when one could not be followed (its record.json or job.yaml unreadable: given
up after a few polls, the others followed to their end), 1 otherwise.

`--json` prints one JSON object per event (`{"at", "job_id", "level", "message"}`) and, at the end,
`{"jobs": [status --json documents, with cost], "given_up": [{"job_id", "reason"}]}`.

Ctrl-C ends the watch, never the jobs: it says they keep running and who, if anyone, recovers them now
(orchestrator.jobs.caretaker), and exits 130.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

import click

from orchestrator.aws.clients import Cloud
from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.cli.status import cost_text, job_panel, progress_text
from orchestrator.errors import ExitCode
from orchestrator.jobs.caretaker import Lease, left_alone
from orchestrator.jobs.contexts import Context
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
    """Follow JOBs (ids or unique prefixes; default: every job running now) until each ends."""
    watch_options = WatchOptions(poll_s=poll_s, capacity_deadline_s=deadline_s)
    if job_ids:
        groups: dict[str, tuple[Context, list[str]]] = {}
        for named in job_ids:
            context, job_id = app.locate(named, storage, profile)
            groups.setdefault(context.name, (context, []))[1].append(job_id)
        return follow_contexts(list(groups.values()), watch_options, as_json)
    found, unreachable = app.contexts(storage, profile)
    for u in unreachable:
        click.echo(f"! {u.name}: {u.error}", err=True)
    chosen, idle, unreadable = [], [], []
    for context in found:
        # Jobs left interrupted long ago are not relaunched behind the user's back: they are named.
        unfinished = [v for v in read_views(context.store, context.job_ids, context.clouds) if not v.state.terminal]
        unreadable += [v.job_id for v in unfinished if v.unreadable is not None]
        unfinished = [v for v in unfinished if v.record is not None]  # the trainer alone: nothing to recover
        idle += [v.job_id for v in unfinished if v.state.idle]
        ids = [v.job_id for v in unfinished if every_job or not v.state.idle]
        if ids:
            chosen.append((context, ids))
    if idle and not every_job:
        click.echo(
            f"not recovering {render.plural(len(idle), 'idle job')} ({', '.join(idle[:5])}); name them, or pass --all",
            err=True,
        )
    if unreadable:
        click.echo(
            f"not following {render.plural(len(unreadable), 'unreadable job')} ({', '.join(unreadable[:5])}); "
            "`spotctl status` says what is wrong with each",
            err=True,
        )
    if not chosen:
        click.echo(f"no running job under {' or '.join(c.store.root for c in found) or 'any storage root'}")
        return 0
    return follow_contexts(chosen, watch_options, as_json)


def follow(
    app: App,
    store: JobStore,
    job_ids: list[str],
    clouds: Callable[[str], Cloud],
    watch_options: WatchOptions | None = None,
    as_json: bool = False,
) -> int:
    """Run a Watcher with the live view (launch --watch and resume --watch use it too)."""
    context = Context(store.root, store, clouds, app.prices, local=app.local is not None)
    return follow_contexts([(context, job_ids)], watch_options, as_json)


def follow_contexts(
    groups: list[tuple[Context, list[str]]], watch_options: WatchOptions | None = None, as_json: bool = False
) -> int:
    """One Watcher per context, polled in turn, with one live view. Ctrl-C ends the watch, not the jobs."""
    watchers: list[Watcher] = []
    lease = Lease((watch_options or WatchOptions()).poll_s)  # `spotctl status` shows this watch looks after them

    def watchers_telling(on_event) -> list[Watcher]:
        watchers[:] = [
            Watcher(context.store, ids, context.clouds, context.prices, watch_options, on_event=on_event, lease=lease)
            for context, ids in groups
        ]
        return watchers

    try:
        if as_json:
            code = _run(watchers_telling(_json_event))
            click.echo(
                json.dumps(
                    {
                        "jobs": [_document(row) for w in watchers for row in w.rows.values()],
                        "given_up": [
                            {"job_id": job_id, "reason": reason}
                            for w in watchers
                            for job_id, reason in w.given_up.items()
                        ],
                    },
                    indent=2,
                )
            )
            return code
        out = render.console()
        if not sys.stdout.isatty():  # a log, a CI job: one line per event, the jobs in full at the end
            code = _run(watchers_telling(lambda e: out.print(_event_line(e), markup=False)))
        else:
            from rich.live import Live

            with Live(console=out, refresh_per_second=2, transient=True) as live:
                code = _run(
                    watchers_telling(lambda e: live.console.print(_event_line(e), markup=False)),
                    after_poll=lambda rows: live.update(table(rows)),
                )
    except KeyboardInterrupt:
        for watcher in watchers:
            watcher.release()
        left = [
            (w.store, [j for j in w.job_ids if not (j in w.rows and w.rows[j].view.state.terminal)] or w.job_ids)
            for w in watchers
        ] or [(context.store, ids) for context, ids in groups]
        click.echo(interrupted_message(left, lease.holder), err=True)
        return ExitCode.ABORTED
    finally:
        for watcher in watchers:
            watcher.release()  # a second time after Ctrl-C: nothing left to release
    for watcher in watchers:
        _summary(out, watcher.store, watcher)
    return code


def interrupted_message(groups: list[tuple[JobStore, list[str]]], holder: str | None = None) -> str:
    """What Ctrl-C in watch leaves behind: the jobs go on, and who (if anyone) recovers them now (this
    watch, lease `holder`, no longer)."""
    job_ids = [job_id for _, ids in groups for job_id in ids]
    jobs = ", ".join(job_ids)
    who = "; ".join(left_alone(store, ids, but=holder) for store, ids in groups if ids)
    return (
        f"stopped watching; {'the job keeps' if len(job_ids) == 1 else 'the jobs keep'} running ({jobs}): "
        f"{who}. `spotctl stop JOB` stops one."
    )


def _run(watchers: list[Watcher], sleep: Callable[[float], None] = time.sleep, after_poll=None) -> int:
    """Watcher.run over several watchers (one per context): every poll, each in turn."""
    if len(watchers) == 1:
        return watchers[0].run(sleep=sleep, after_poll=after_poll)
    poll_s = watchers[0].options.poll_s
    while True:
        started = time.monotonic()
        rows: dict[str, JobRow] = {}
        for watcher in watchers:
            rows.update(watcher.poll())
        if after_poll:
            after_poll(rows)
        if all(w.done() for w in watchers):
            return max(w.exit_code() for w in watchers)
        sleep(max(0.0, poll_s - (time.monotonic() - started)))


def _summary(out, store, watcher: Watcher) -> None:
    """Each job as `spotctl status JOB` shows it: attempts and why they ended, cost, savings, artifacts."""
    for job_id, reason in watcher.given_up.items():
        out.print(f"x {job_id}: not followed to its end: {reason}", markup=False, highlight=False)
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
