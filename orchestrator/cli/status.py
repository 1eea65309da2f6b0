"""`spotctl status [JOB]`: the jobs of every context (orchestrator.jobs.contexts; live ones and those
that ended within 24 h, `--all` every one, `--state` some states), or one job in detail.

`--json` prints the documents of orchestrator.jobs.status (stable; `--schema` prints their JSON
Schema, every field described).

A job whose record.json cannot be read is listed as `unreadable`, and each object that could not be read
(record.json, or a trainer's document: then the job's other parts are shown and a health flag names it)
is one line under the list, `! URL: what is wrong`; every other job is listed as usual.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import click

from orchestrator.aws.instances import LIVE
from orchestrator.aws.prices import PriceSource
from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.errors import UserError
from orchestrator.jobs import artifacts
from orchestrator.jobs.caretaker import UNREAD, Care, caretaker, controller_tick
from orchestrator.jobs.contexts import Context
from orchestrator.jobs.cost import cost_of
from orchestrator.jobs.record import repair_hint
from orchestrator.jobs.state import JobView
from orchestrator.jobs.status import schema, status_document
from orchestrator.jobs.views import find_job, listed, read_views
from trainer.job import layout
from trainer.job.documents import ControllerTick, JobState
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
            care=_care(context, found),
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
    listing: list[tuple[Context, JobView]] = [
        (context, view) for context in found for view in read_views(context.store, context.job_ids, context.clouds)
    ]
    shown, hidden = listed([view for _, view in listing], states, every_job)
    chosen = {id(view) for view in shown}
    views = documents([(context, view) for context, view in listing if id(view) in chosen])
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
                    "sweeps": _trials_by_sweep(sweep_of_trials(found, [v["job_id"] for v in views])),
                },
                indent=2,
            )
        )
        return 0
    several = len(found) + len(unreachable) > 1
    trials = sweep_of_trials(found, [v["job_id"] for v in views])
    alone = [v for v in views if v["job_id"] not in trials]
    jobs = render.plural(len(alone), "job")
    title = f"{jobs} in {render.plural(len(found), 'context')}" if several else f"{jobs} under {_name(found[0])}"
    out = render.console()
    if alone or not trials:
        out.print(render.table(list_headers(several), [list_row(v, several) for v in alone], title=title, ids=("job",)))
    for sweep_id in sorted(set(trials.values()), reverse=True):  # each sweep's trials under it
        rows = [list_row(v, several) for v in views if trials.get(v["job_id"]) == sweep_id]
        out.print(
            render.table(
                list_headers(several),
                rows,
                title=f"sweep {sweep_id}: {render.plural(len(rows), 'trial')} (`spotctl sweep status {sweep_id}`)",
                ids=("job",),
            )
        )
    for u in unreachable:
        out.print(f"! {u.name}: {u.error}", markup=False, highlight=False)
    for line in unreadable_lines(views):
        out.print(line, markup=False, highlight=False)
    if hidden:
        out.print(
            f"{hidden} job{' that' if hidden == 1 else 's that'} ended more than 24 h ago "
            f"{'is' if hidden == 1 else 'are'} hidden; `spotctl status --all` shows {'it' if hidden == 1 else 'them'}",
            markup=False,
            highlight=False,
        )
    return 0


def sweep_of_trials(contexts: list[Context], job_ids: list[str]) -> dict[str, str]:
    """{job id: its sweep} for the jobs that are a sweep's trials (layout.trial_job), in these contexts."""
    sweeps = [s for context in contexts for s in context.store.storage.list(layout.SWEEPS)]
    found = {}
    for job_id in job_ids:
        for sweep_id in sweeps:
            if layout.trial_of(sweep_id, job_id) is not None:
                found[job_id] = sweep_id
    return found


def _trials_by_sweep(trials: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for job_id, sweep_id in trials.items():
        grouped.setdefault(sweep_id, []).append(job_id)
    return grouped


def unreadable_lines(views: list[dict]) -> list[str]:
    """One line per object of the listed jobs that could not be read: `! URL: what is wrong`."""
    return [f"! {u['url']}: {u['problem']}" for view in views for u in view.get("unreadable") or ()]


def _care(context: Context, view: JobView, tick: ControllerTick | None | object = UNREAD) -> Care | None:
    """Who looks after a job that is not over (None once it is: nobody needs to)."""
    if view.record is None or view.state.terminal:
        return None
    return caretaker(context.store, view.job_id, tick=tick)


def _record_problem(view: dict) -> dict | None:
    """The unreadable record.json of an `unreadable` job (the document names it among its objects)."""
    return next((u for u in view.get("unreadable") or () if u["url"].endswith("/" + layout.RECORD)), None)


def list_headers(with_context: bool) -> list[str]:
    """The list's columns; `context` only when jobs come from several."""
    headers = ["job", "state", "attempts", "instance", "progress", "val acc", "cost", "created", "care"]
    return [headers[0], "context", *headers[1:]] if with_context else headers


PRICING_THREADS = 8


def documents(listing: list[tuple[Context, JobView]]) -> list[dict]:
    """Each job's status document with its cost (the list's cost column is the detail's figure) and its
    context, priced in parallel, one price source per (context, region)."""
    sources: dict[tuple[str, str], PriceSource] = {}

    # One read of each root's controller tick; then a lease read per live job (in the pool).
    ticks = {
        context.name: controller_tick(context.store)
        for context in {c.name: c for c, v in listing if v.record is not None and not v.state.terminal}.values()
    }

    def priced(item: tuple[Context, JobView]) -> dict:
        context, view = item
        if view.record is None:
            return status_document(view, with_cost=True, context=context.name)
        cost = cost_of(view, sources[context.name, view.record.region])
        care = _care(context, view, ticks.get(context.name))
        return status_document(view, cost, with_cost=True, context=context.name, care=care)

    # A region's source is built once, before the pool (AwsPrices reads its cache file when created).
    for context, view in listing:
        key = (context.name, view.record.region) if view.record is not None else None
        if key and key not in sources:
            sources[key] = context.prices(context.clouds(view.record.region))
    with ThreadPoolExecutor(max_workers=PRICING_THREADS) as pool:
        return list(pool.map(priced, listing))


def list_row(view: dict, with_context: bool = False) -> list:
    """One job in the list, in list_headers' order."""
    cost = view.get("cost")
    row = [
        view["job_id"],
        view["state"] + "".join(f", {f['name']}" for f in view["health"]),
        _attempts(view),
        _where(view),
        progress_text(view),
        _metric(view),
        cost_text(cost) if cost else None,
        render.age(view["created_at"]),
        (view.get("care") or {}).get("by"),
    ]
    return [row[0], view.get("context"), *row[1:]] if with_context else row


def _attempts(view: dict) -> int | None:
    """The attempts made: the record's, or for a job the trainer ran alone (no record), the number its
    own documents carry (each run of `python -m trainer run` is an attempt)."""
    if view["attempts"]:
        return len(view["attempts"])
    if _record_problem(view):
        return None  # the record says how many, and it cannot be read
    return max((view["progress"] or {}).get("attempt") or 0, (view["final"] or {}).get("attempt") or 0)


def _name(context: Context) -> str:
    return f"{context.store.root} (local cloud)" if context.local else context.store.root


def _where(view: dict) -> str | None:
    """The current attempt's pool, with its $/h only while its instance is live: a finished job pays none."""
    if not view["attempts"]:
        return None
    last = view["attempts"][-1]
    where = f"{last['instance_type']} {last['zone']}"
    live = last.get("instance_state") in LIVE and not last.get("ended_at")
    return f"{where} {render.rate(last['spot_price'])}" if live else where


def progress_text(view: dict) -> str | None:
    """Where training is: `epoch 3/20 step 250/2000, ETA 29m 10s`; while the next attempt starts (its
    trainer has no step yet, or only the previous attempt has reported), from where it resumes."""
    p = view["progress"] or {}
    current = view["attempts"][-1]["number"] if view["attempts"] else None
    mine = p.get("attempt") is None or p.get("attempt") == current
    if current is not None and (not mine or p.get("step") is None) and not JobState(view["state"]).terminal:
        if mine and p.get("resumed_from_step") is not None:
            at = p["resumed_from_step"]
        else:
            at = (view.get("last_checkpoint") or {}).get("step") if not mine else None
        return f"starting attempt {current}" + (f" at step {at}" if at is not None else "")
    if p.get("step") is None:
        return None
    eta = f", ETA {render.duration(p['eta_s'])}" if p.get("eta_s") and view["state"] == "running" else ""
    return f"epoch {p.get('epoch')}/{p.get('epochs')} step {p['step']}/{p.get('total_steps')}{eta}"


def _metric(view: dict) -> str | None:
    metrics = view["metrics"] or {}
    return f"{metrics['val_acc1']:.1%}" if metrics.get("val_acc1") is not None else None


def cost_text(cost: dict) -> str:
    """The cost so far, and what the first-hour rule waived: the two together never fall."""
    total = render.money(cost["total_usd"]) if cost["total_usd"] else "no charge yet"
    waived = cost.get("waived_usd") or 0
    return total + (f" ({render.money(waived)} waived)" if waived else "")


def job_panel(view: dict):
    from rich.console import Group
    from rich.text import Text

    lines = [Text(f"{view['job_id']}  {view['state']}", style="bold")]
    broken = _record_problem(view)
    if broken:  # nothing the record says is known: not even where the job runs
        lines += [Text(f"! {broken['url']}: {broken['problem']}"), Text(f"  {repair_hint(view['job_id'])}")]
    else:
        lines.append(Text(f"region {view['region']}, created {render.age(view['created_at'])}"))
    if view.get("outcome_reason"):
        lines.append(Text(f"why: {view['outcome_reason']}"))
    if view["progress"]:
        p, gpu = view["progress"], view["gpu"] or {}
        lines.append(
            Text(
                f"progress: {progress_text(view) or '-'} ({p.get('phase')}), {p.get('images_per_sec') or 0:,.0f} img/s, data wait {(p.get('data_wait_fraction') or 0):.0%}"
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
        lines += _cost_lines(cost)
    if view["final"]:
        final = view["final"]
        lines.append(Text(f"outcome: {final.get('outcome')}" + (f": {final['error']}" if final.get("error") else "")))
    if view["artifacts"]:
        lines.append(Text(f"artifacts: {artifacts.summary(view['artifacts'])}"))
    for flag in view["health"]:
        lines.append(Text(f"! {flag['message']}" + (f" ({flag['hint']})" if flag["hint"] else "")))
    care = view.get("care")
    if care:
        lines.append(Text(f"{'! ' if care['by'] == 'nobody' else ''}looked after by: {care['detail']}"))
        if care["fix"]:
            lines.append(Text(f"  {care['fix']}"))
    if broken:
        return Group(*lines)
    per_attempt = {a["number"]: a for a in (cost or {}).get("attempts") or ()}
    rows = [
        [
            a["number"],
            a["instance_type"],
            a["zone"],
            render.price(a["spot_price"]),
            a["instance_id"],
            render.age(a["launched_at"]) if a["launched_at"] else None,
            render.age(a["ended_at"]) if a.get("ended_at") else None,
            render.money(per_attempt[a["number"]]["usd"]) if a["number"] in per_attempt else None,
            _ended(a),
        ]
        for a in view["attempts"]
    ]
    nodes = [Text(f"attempt {a['number']} nodes: {node_list(a['nodes'])}") for a in view["attempts"] if a.get("nodes")]
    return Group(*lines, render.table(ATTEMPT_HEADERS, rows, title="attempts", ids=("instance",)), *nodes)


def node_list(nodes: list[dict]) -> str:
    """`0 i-0abc (kept), 1 i-0def (lost)`: a multi-node attempt's machines by node rank."""
    said = []
    for node in nodes:
        notes = [word for word in ("kept", "lost") if node.get(word)]
        said.append(f"{node['rank']} {node['instance_id'] or '?'}" + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(said)


ATTEMPT_HEADERS = ["#", "type", "zone", "spot $/h", "instance", "started", "ended", "cost", "end / state"]


def _cost_lines(cost: dict) -> list:
    """The panel's cost: the total and its line items, what was waived, notes, the work lost."""
    from rich.text import Text

    total = cost["total_usd"]
    if total:
        saving = (
            f", {cost['savings']:.0%} below on-demand ({render.money(cost['on_demand_usd'])})"
            if cost["savings"] is not None
            else ""
        )
        head = f"cost: {render.money(total)} so far{saving}"
    else:  # nothing charged yet: "100% below on-demand" of nothing says nothing
        head = "cost: no charge yet"
    now = f"; now {render.rate(cost['current_usd_per_hour'])}" if cost["current_usd_per_hour"] is not None else ""
    projected = (
        f", projected total {render.money(cost['projected_total_usd'])}"
        if cost["projected_total_usd"] is not None
        else ""
    )
    lines = [
        Text(f"{head}{now}{projected}"),
        Text(
            f"  instance {render.money(cost['instance_usd'])}, root volume {render.money(cost['ebs_usd'])}, "
            f"public IPv4 {render.money(cost['public_ipv4_usd'])}"
        ),
    ]
    if cost.get("waived_usd"):
        lines.append(
            Text(
                f"  not charged: {render.money(cost['waived_usd'])} of instance time EC2 interrupted within its first hour"
            )
        )
    if cost.get("savings_unknown"):
        lines.append(Text(f"savings unknown: {cost['savings_unknown']}"))
    lines += [Text(f"  note: {note}") for note in cost.get("notes") or ()]
    if cost["lost_steps"]:
        lines.append(
            Text(
                f"work lost to interruptions: {render.plural(cost['lost_steps'], 'step')} redone, {render.money(cost['lost_usd'])}"
            )
        )
    return lines


def _ended(attempt: dict) -> str | None:
    """Why an attempt ended, with EC2's own reason: `interrupted (Server.SpotInstanceTermination)`; a
    crash with how the trainer died: `crashed: killed by SIGKILL (exit 137): probably out of memory (...)`."""
    if attempt.get("end_reason"):
        detail = f": {attempt['end_detail']}" if attempt.get("end_detail") else ""
        return attempt["end_reason"] + (f" ({attempt['state_reason']})" if attempt.get("state_reason") else "") + detail
    return attempt.get("instance_state") or ("launching" if not attempt.get("instance_id") else None)
