"""`spotctl resume JOB`: start the next attempt of a job whose instance is gone (interrupted, stopped
at its budget, out of capacity, or cancelled with --force); it continues from the latest checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.jobs.recover import resume
from orchestrator.jobs.views import find_job, launched


@click.command("resume")
@click.argument("job_id", metavar="JOB")
@click.option("--force", is_flag=True, help="Also resume a job cancelled by `spotctl stop`.")
@click.option(
    "--budget",
    type=click.FloatRange(0, 1_000_000, min_open=True),
    metavar="USD",
    help="A new budget.max_cost_usd (needed to resume a budget_exceeded job).",
)
@click.option("--watch", "then_watch", is_flag=True, help="Then follow the job like `spotctl watch` until it ends.")
@options.poll_option
@options.storage_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(
    app: App,
    job_id: str,
    force: bool,
    budget: float | None,
    then_watch: bool,
    poll_s: float,
    storage: str | None,
    profile: str | None,
    as_json: bool,
) -> int:
    """Start attempt k+1 of JOB on the best pool not interrupted lately; it resumes from the latest checkpoint."""
    context, job_id = app.locate(job_id, storage, profile)
    store, clouds = context.store, context.clouds
    view = launched(find_job(store, job_id, clouds), "resume")
    cloud = clouds(view.record.region)
    attempt = resume(store, view, cloud, context.prices(cloud), force=force, budget=budget)
    if as_json and not then_watch:
        click.echo(json.dumps({"job_id": job_id, "attempt": asdict(attempt)}, indent=2))
        return 0
    click.echo(
        f"resumed {job_id}: attempt {attempt.number} on {attempt.instance_type} in {attempt.zone} at {render.rate(attempt.spot_price)} ({attempt.instance_id})"
    )
    if then_watch:
        from orchestrator.cli.watch import follow
        from orchestrator.jobs.watch import WatchOptions

        return follow(app, store, [job_id], clouds, WatchOptions(poll_s=poll_s))
    return 0
