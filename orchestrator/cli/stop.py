"""`spotctl stop JOB`: checkpoint and stop a job gracefully, then terminate its instance."""

from __future__ import annotations

import json

import click

from orchestrator.cli import options
from orchestrator.cli.context import App
from orchestrator.jobs.stop import stop_job


@click.command("stop")
@click.argument("job_id", metavar="JOB")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0, 3600),
    default=45.0,
    show_default=True,
    help="Seconds to wait for the final checkpoint before terminating (10 at most when the trainer sends no heartbeat).",
)
@options.storage_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(app: App, job_id: str, wait_s: float, storage: str | None, profile: str | None, as_json: bool) -> int:
    """Ask JOB's trainer to checkpoint and exit, then terminate the instance; the job becomes cancelled."""
    context, job_id = app.locate(job_id, storage, profile)
    result = stop_job(context.store, job_id, context.clouds, wait_s=wait_s)
    if as_json:
        click.echo(json.dumps(vars(result), indent=2))
        return 0
    saved = (
        f"final checkpoint at step {result.checkpoint_step}"
        if result.graceful
        else "no final checkpoint in time; the last committed one stays"
    )
    ended = f"; terminated {result.terminated}" if result.terminated else ""
    click.echo(
        f"stopped {job_id}: {saved}{ended}. It is cancelled; `spotctl resume {job_id} --force` would continue it."
    )
    return 0
