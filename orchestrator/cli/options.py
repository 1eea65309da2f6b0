"""Options several commands share. `--local` sets the context's local cloud (orchestrator.cli.context)."""

from __future__ import annotations

import click

from orchestrator.cli.context import App

profile_option = click.option("--profile", metavar="NAME", help="AWS profile (default: the standard credential chain).")
region_option = click.option("--region", metavar="REGION", help="AWS region (default: the job file's).")
storage_option = click.option(
    "--storage", metavar="URL", help="Storage root of the jobs, s3://bucket/prefix (default: $SPOTCTL_STORAGE)."
)
poll_option = click.option(
    "--poll",
    "poll_s",
    type=click.FloatRange(0.1, 3600),
    default=10.0,
    show_default=True,
    help="Seconds between polls of EC2 and S3 while watching.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, for scripts.")


def _use_local(start: bool):
    def callback(ctx: click.Context, param, value: bool) -> None:
        if not value:
            return
        from orchestrator.local import client

        if not start:
            ctx.find_object(App).local = client.require()
            return
        done = client.up()
        if done.started:  # say so: a fresh cloud holds no data, a kept one what `local down --keep` kept
            from orchestrator.cli.local import describe_contents

            click.echo(f"no local cloud was running: started one at {done.cloud.endpoint}", err=True)
            click.echo(describe_contents(done.cloud, done.cloud.contents()), err=True)
        ctx.find_object(App).local = done.cloud

    return callback


local_option = click.option(
    "--local",
    is_flag=True,
    expose_value=False,
    callback=_use_local(start=False),
    help="Use the local cloud (`spotctl local up`) instead of AWS.",
)
local_starting_option = click.option(
    "--local",
    is_flag=True,
    expose_value=False,
    callback=_use_local(start=True),
    help="Use the local cloud instead of AWS, starting it if it is not running.",
)
