"""`spotctl logs JOB`: print an attempt's shipped log (`--follow` keeps printing until the job ends)."""

from __future__ import annotations

import sys
import time

import click

from orchestrator.cli import options
from orchestrator.cli.context import App
from orchestrator.jobs.views import find_job, log_text


@click.command("logs")
@click.argument("job_id", metavar="JOB")
@click.option("--attempt", type=click.IntRange(1), help="Attempt number (default: the latest).")
@click.option(
    "--bootstrap",
    is_flag=True,
    help="The instance's bootstrap log (install, trainer output, shutdown) instead of the trainer's.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 600),
    default=5.0,
    show_default=True,
    help="Seconds between reads with --follow.",
)
@options.storage_option
@options.local_option
@options.profile_option
@click.pass_obj
def command(
    app: App,
    job_id: str,
    attempt: int | None,
    bootstrap: bool,
    follow: bool,
    interval: float,
    storage: str | None,
    profile: str | None,
) -> int:
    """Print JOB's log (its id or a unique prefix) as last shipped (every minute and at exit)."""
    context, job_id = app.locate(job_id, storage, profile)
    store, clouds = context.store, context.clouds
    view = find_job(store, job_id, clouds)
    shown, showing = 0, None
    while True:
        number, name, content = log_text(store, view, attempt, bootstrap)
        if (number, name) != showing:  # another file (the trainer's log appeared, a new attempt): from its start
            shown, showing = 0, (number, name)
        if content is None and not follow:
            click.echo(f"no log of attempt {number} yet (the instance ships it every minute)", err=True)
            return 1
        if content is not None and len(content) > shown:
            sys.stdout.buffer.write(content[shown:])
            sys.stdout.flush()
            shown = len(content)
        if not follow or view.state.terminal:
            return 0
        time.sleep(interval)
        view = find_job(store, job_id, clouds)
