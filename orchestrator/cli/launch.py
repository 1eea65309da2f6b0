"""`spotctl launch JOB.yaml`: start the job on the cheapest spot offer (or `--dry-run`: show the plan)."""

from __future__ import annotations

import json

import click

from orchestrator.aws.doctor import Verdict, run_checks
from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.cli.doctor import render_checks
from orchestrator.cli.offers import offer_headers, offer_rows, warn
from orchestrator.errors import ExitCode
from orchestrator.jobs.caretaker import DEPLOY_HINT, caretaker
from orchestrator.jobs.contexts import remember
from orchestrator.jobs.launch import check_permissions, launch, plan_launch
from orchestrator.jobs.preflight import before_boot, budget_checks, refuse_problems
from orchestrator.jobs.record import JobStore


@click.command("launch")
@click.argument("job_file", metavar="JOB.yaml")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show the plan (offers, AMI, user-data, price), check permissions, the account (`spotctl doctor`), the data, weights and budget; start nothing, write nothing.",
)
@click.option(
    "--watch",
    "then_watch",
    is_flag=True,
    help="Then follow the job like `spotctl watch`, recovering interruptions, until it ends.",
)
@options.poll_option
@options.region_option
@options.local_starting_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(
    app: App,
    job_file: str,
    dry_run: bool,
    then_watch: bool,
    poll_s: float,
    region: str | None,
    profile: str | None,
    as_json: bool,
) -> int:
    """Launch JOB.yaml on the cheapest spot offer; print the job id and how to follow it."""
    spec = app.load_job(job_file, region)
    cloud = app.cloud(spec.region, profile)
    plan = plan_launch(spec, cloud, app.prices(cloud))
    warn(plan.offers)
    best = plan.best
    if dry_run:
        verdict = check_permissions(plan, cloud)
        # what `spotctl doctor` says of the account, with the checks before a boot (data, weights, budget)
        checks = run_checks(spec, cloud, app.prices(cloud), with_offers=lambda found: budget_checks(spec, found))
        ready = not any(c.verdict is Verdict.PROBLEM for c in checks)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "job_id": plan.job_id,
                        "offer": best.as_dict(),
                        "offers": [o.as_dict() for o in plan.offers.ranked],
                        "ami": plan.ami,
                        "wheel_url": plan.wheel_url,
                        "user_data": plan.user_data,
                        "permission_check": verdict,
                        "doctor": [c.as_dict() for c in checks],
                    },
                    indent=2,
                )
            )
            return ExitCode.OK if ready else ExitCode.FAILED
        out = render.console()
        out.print(
            render.table(
                offer_headers(plan.spec.compute.nodes),
                offer_rows(plan.offers.ranked[:10], plan.spec.compute.nodes),
                title=f"offers ({len(plan.offers.ranked)}, cheapest first)",
            )
        )
        out.print(
            f"would launch {plan.job_id} on {_nodes_of(plan.spec.compute.nodes)}{best.instance.name} in {best.zone} "
            f"at {render.rate(best.spot_price)}{_each(plan.spec.compute.nodes, best.spot_price)} (AMI {plan.ami})"
        )
        out.print("user-data:")
        out.print(plan.user_data, markup=False, highlight=False)
        out.print(f"permission check (DryRun): {verdict}")
        out.print("the account (spotctl doctor):")
        for line in render_checks(checks):
            out.print(line, markup=False, highlight=False)
        return ExitCode.OK if ready else ExitCode.FAILED
    checks = before_boot(spec, cloud, plan.offers)
    for check in checks:
        if check.verdict in (Verdict.WARNING, Verdict.UNKNOWN):
            click.echo(f"warning: {check.name}: {check.detail}", err=True)
    refuse_problems(checks)  # what the boot would find out after paying for it: nothing started
    store = JobStore(spec.storage, **cloud.storage_options)
    record = launch(plan, cloud, store)
    # The follow-up commands find the job with no flags: this root is one of the contexts now.
    remembered = remember(spec.storage, local=app.local is not None, profile=profile)
    attempt = record.attempts[-1]
    care = None if then_watch else caretaker(store, record.job_id)
    if as_json and not then_watch:
        if care.by == "nobody":
            click.echo(f"warning: {unwatched(record.job_id)}", err=True)
        click.echo(
            json.dumps(
                {
                    "job_id": record.job_id,
                    "instance_id": attempt.instance_id,
                    "offer": best.as_dict() if best.pool == (attempt.instance_type, attempt.zone) else None,
                    "instance_type": attempt.instance_type,
                    "zone": attempt.zone,
                    "spot_price": attempt.spot_price,
                    "job_url": record.job_url,
                    "nodes": [{"rank": n.rank, "instance_id": n.instance_id} for n in attempt.nodes or []],
                    "care": {"by": care.by, "detail": care.detail, "fix": care.fix},
                },
                indent=2,
            )
        )
        return 0
    saving = (
        f", {1 - attempt.spot_price / attempt.on_demand_price:.0%} below on-demand" if attempt.on_demand_price else ""
    )
    if not as_json:
        click.echo(
            f"launched {record.job_id}: {_nodes_of(len(attempt.nodes or []))}{attempt.instance_type} in {attempt.zone} "
            f"at {render.rate(attempt.spot_price)} spot{_each(len(attempt.nodes or []), attempt.spot_price)}{saving} "
            f"({', '.join(n.instance_id or '?' for n in attempt.nodes) if attempt.nodes else attempt.instance_id})"
        )
    if then_watch:
        from orchestrator.cli.watch import follow
        from orchestrator.jobs.watch import WatchOptions

        return follow(app, store, [record.job_id], app.clouds(profile), WatchOptions(poll_s=poll_s), as_json=as_json)
    flags = _follow_up_flags(app, spec.storage, profile, remembered)
    click.echo(f"follow it:  spotctl watch {record.job_id}{flags}   (recovers interruptions)")
    click.echo(f"            spotctl status {record.job_id}{flags}")
    click.echo(f"            spotctl logs {record.job_id}{flags} --follow")
    if care.by == "controller":
        click.echo(f"{care.detail} looks after it: interruptions are recovered with no watch running")
    else:
        click.echo(f"warning: {unwatched(record.job_id)}", err=True)
    return 0


def unwatched(job_id: str) -> str:
    """What a launch without --watch says when no controller ticks for the storage root."""
    return (
        f"no controller looks after {job_id}: nobody recovers an interruption until you run "
        f"`spotctl watch {job_id}` ({DEPLOY_HINT})"
    )


def _follow_up_flags(app: App, storage: str, profile: str | None, remembered: bool) -> str:
    """What the printed follow-up commands need to find the job: nothing, when a command without flags
    looks where it is (orchestrator.jobs.contexts); else the root (and the profile) to read."""
    if remembered and app.would_find(storage):
        return ""
    if app.local is not None:
        return " --local"
    return f" --storage {storage}" + (f" --profile {profile}" if profile else "")


def _nodes_of(nodes: int) -> str:
    return f"{nodes} x " if nodes > 1 else ""


def _each(nodes: int, price: float) -> str:
    """Several nodes: the price is each one's, and what all of them cost an hour."""
    return f" each ({render.rate(price * nodes)} for all {nodes})" if nodes > 1 else ""
