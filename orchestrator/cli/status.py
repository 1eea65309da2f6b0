"""`spotctl status [JOB]`: the jobs of every context (orchestrator.jobs.contexts; live ones and those
that ended within 24 h, `--all` every one, `--state` some states), or one job in detail.

`--json` prints the documents of orchestrator.jobs.status (stable; `--schema` prints their JSON
Schema, every field described).
"""

from __future__ import annotations

import json

import click

from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.errors import UserError
from orchestrator.jobs import artifacts
from orchestrator.jobs.contexts import Context
from orchestrator.jobs.cost import cost_of
from orchestrator.jobs.state import JobView
from orchestrator.jobs.status import schema, status_document
from orchestrator.jobs.views import find_job, listed, read_views
from trainer.job.documents import JobState
from trainer.job.spec import did_you_mean


def _states(ctx: click.Context, param, value: str | None) -> frozenset[JobState] | None:
    """`--state running,failed`: JobStates, each checked."""
    if not value:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    valid = [state.value for state in JobState]
    wrong = [name for name in names if name not in valid]
    if wrong:
        raise click.BadParameter(
            f"{', '.join(repr(w) for w in wrong)} {'is not a state' if len(wrong) == 1 else 'are not states'}"
            f"{did_you_mean(wrong[0], valid)} (states: {', '.join(valid)})"
        )
    return frozenset(JobState(name) for name in names)


@click.command("status")
@click.argument("job_id", metavar="[JOB]", required=False)
@click.option(
    "--all", "every_job", is_flag=True, help="Also list jobs that ended more than 24 h ago (default: live and recent)."
)
@click.option(
    "--state",
    "states",
    metavar="STATE[,STATE...]",
    callback=_states,
    help="List only jobs in these states, e.g. running,failed.",
)
@click.option("--schema", "print_schema", is_flag=True, help="Print the JSON Schema of the --json documents and exit.")
@options.storage_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(
    app: App,
    job_id: str | None,
    every_job: bool,
    states: frozenset[JobState] | None,
    print_schema: bool,
    storage: str | None,
    profile: str | None,
    as_json: bool,
) -> int:
    """Show the jobs (live, and ended within 24 h), or JOB (its id or a unique prefix) in detail."""
    if print_schema:
        click.echo(json.dumps(schema(), indent=2))
        return 0
    if job_id:
        context, job_id = app.locate(job_id, storage, profile)
        found = find_job(context.store, job_id, context.clouds)
        view = status_document(
            found,
            cost_of(found, context.prices(context.clouds(found.record.region))) if found.record else None,
            with_cost=True,
            context=context.name,
        )
        if as_json:
            click.echo(json.dumps(view, indent=2))
        else:
            render.console().print(job_panel(view))
        return 0
    found, unreachable = app.contexts(storage, profile)
    if not found:  # every root failed: nothing to list
        raise UserError(
            "; ".join(f"{u.name}: {u.error}" for u in unreachable),
            "check the credentials, or name the jobs' storage: --storage URL or --local",
        )
    listing: list[tuple[str, JobView]] = [
        (context.name, view) for context in found for view in read_views(context.store, context.job_ids, context.clouds)
    ]
    shown, hidden = listed([view for _, view in listing], states, every_job)
    chosen = {id(view) for view in shown}
    views = [status_document(view, context=name) for name, view in listing if id(view) in chosen]
    views.sort(key=lambda v: v["created_at"] or "", reverse=True)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "storage": found[0].store.root if len(found) == 1 and not unreachable else None,
                    "contexts": [{"name": c.name, "storage": c.store.root} for c in found],
                    "unreachable": [{"context": u.name, "error": u.error} for u in unreachable],
                    "hidden": hidden,
                    "jobs": views,
                },
                indent=2,
            )
        )
        return 0
    several = len(found) + len(unreachable) > 1
    rows = [
        [
            v["job_id"],
            *([v["context"]] if several else []),
            v["state"] + "".join(f", {f['name']}" for f in v["health"]),
            len(v["attempts"]),
            _where(v),
            _progress(v),
            _metric(v),
        ]
        for v in views
    ]
    jobs = f"{len(views)} job{'' if len(views) == 1 else 's'}"
    title = (
        f"{jobs} in {len(found)} context{'' if len(found) == 1 else 's'}"
        if several
        else f"{jobs} under {_name(found[0])}"
    )
    out = render.console()
    out.print(
        render.table(
            ["job", *(["context"] if several else []), "state", "attempts", "instance", "progress", "val acc"],
            rows,
            title=title,
        )
    )
    for u in unreachable:
        out.print(f"! {u.name}: {u.error}", markup=False, highlight=False)
    if hidden:
        out.print(
            f"{hidden} job{' that' if hidden == 1 else 's that'} ended more than 24 h ago "
            f"{'is' if hidden == 1 else 'are'} hidden; `spotctl status --all` shows {'it' if hidden == 1 else 'them'}",
            markup=False,
            highlight=False,
        )
    return 0


def _name(context: Context) -> str:
    return f"{context.store.root} (local cloud)" if context.local else context.store.root


def _where(view: dict) -> str | None:
    if not view["attempts"]:
        return None
    last = view["attempts"][-1]
    return f"{last['instance_type']} {last['zone']} {render.money(last['spot_price'])}/h"


def _progress(view: dict) -> str | None:
    p = view["progress"]
    if not p or p.get("step") is None:
        return None
    eta = f", ETA {render.duration(p['eta_s'])}" if p.get("eta_s") and view["state"] == "running" else ""
    return f"epoch {p.get('epoch')}/{p.get('epochs')} step {p['step']}/{p.get('total_steps')}{eta}"


def _metric(view: dict) -> str | None:
    metrics = view["metrics"] or {}
    return f"{metrics['val_acc1']:.1%}" if metrics.get("val_acc1") is not None else None


def job_panel(view: dict):
    from rich.console import Group
    from rich.text import Text

    lines = [
        Text(f"{view['job_id']}  {view['state']}", style="bold"),
        Text(f"region {view['region']}, created {view['created_at']}"),
    ]
    if view.get("outcome_reason"):
        lines.append(Text(f"why: {view['outcome_reason']}"))
    if view["progress"]:
        p, gpu = view["progress"], view["gpu"] or {}
        lines.append(
            Text(
                f"progress: {_progress(view) or '-'} ({p.get('phase')}), {p.get('images_per_sec') or 0:,.0f} img/s, data wait {(p.get('data_wait_fraction') or 0):.0%}"
            )
        )
        util = (
            "no GPU telemetry"
            if gpu.get("gpu_util_pct") is None
            else ", ".join(
                part
                for part in (
                    f"GPU {gpu['gpu_util_pct']:.0f}%",
                    f"{gpu['gpu_mem_used_gib']:.1f}/{gpu['gpu_mem_total_gib']:.0f} GiB"
                    if gpu.get("gpu_mem_used_gib") is not None and gpu.get("gpu_mem_total_gib")
                    else None,
                    f"{gpu['gpu_power_w']:.0f} W" if gpu.get("gpu_power_w") is not None else None,
                )
                if part
            )
        )
        lines.append(Text(f"{util}; heartbeat {render.duration(view['heartbeat_age_s'])} ago"))
    known = {k: v for k, v in (view["metrics"] or {}).items() if v is not None}
    if known:
        lines.append(Text("metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in known.items())))
    if view["last_checkpoint"] and view["last_checkpoint"]["step"] is not None:
        lines.append(
            Text(
                f"last checkpoint: step {view['last_checkpoint']['step']}, {render.duration(view['last_checkpoint']['age_s'])} ago"
            )
        )
    cost = view.get("cost")
    if cost:
        saving = (
            f", {cost['savings']:.0%} below on-demand ({render.money(cost['on_demand_usd'])})"
            if cost["savings"] is not None
            else ""
        )
        now = (
            f"; now {render.money(cost['current_usd_per_hour'])}/h" if cost["current_usd_per_hour"] is not None else ""
        )
        projected = (
            f", projected total {render.money(cost['projected_total_usd'])}"
            if cost["projected_total_usd"] is not None
            else ""
        )
        lines.append(Text(f"cost: {render.money(cost['total_usd'])} so far{saving}{now}{projected}"))
        lines.append(
            Text(
                f"  instance {render.money(cost['instance_usd'])}, root volume {render.money(cost['ebs_usd'])}, "
                f"public IPv4 {render.money(cost['public_ipv4_usd'])}"
            )
        )
        if cost.get("savings_unknown"):
            lines.append(Text(f"savings unknown: {cost['savings_unknown']}"))
        lines += [Text(f"  note: {note}") for note in cost.get("notes") or ()]
        if cost["lost_steps"]:
            lines.append(
                Text(f"work lost to interruptions: {cost['lost_steps']} steps redone, {render.money(cost['lost_usd'])}")
            )
    if view["final"]:
        final = view["final"]
        lines.append(Text(f"outcome: {final.get('outcome')}" + (f": {final['error']}" if final.get("error") else "")))
    if view["artifacts"]:
        lines.append(Text(f"artifacts: {artifacts.summary(view['artifacts'])}"))
    for flag in view["health"]:
        lines.append(Text(f"! {flag['message']}" + (f" ({flag['hint']})" if flag["hint"] else "")))
    rows = [
        [
            a["number"],
            a["instance_type"],
            a["zone"],
            render.money(a["spot_price"]),
            a["instance_id"],
            a["launched_at"],
            a.get("ended_at"),
            _ended(a),
        ]
        for a in view["attempts"]
    ]
    return Group(
        *lines,
        render.table(
            ["#", "type", "zone", "spot $/h", "instance", "started", "ended", "end / state"], rows, title="attempts"
        ),
    )


def _ended(attempt: dict) -> str | None:
    """Why an attempt ended, with EC2's own reason: `interrupted (Server.SpotInstanceTermination)`."""
    if attempt.get("end_reason"):
        return attempt["end_reason"] + (f" ({attempt['state_reason']})" if attempt.get("state_reason") else "")
    return attempt.get("instance_state") or ("launching" if not attempt.get("instance_id") else None)
