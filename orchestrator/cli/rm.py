"""`spotctl rm JOB...`: delete jobs' objects (checkpoints, logs, artifacts, the record), refusing a live
one unless `--force` (orchestrator.jobs.remove). Exit code 0 when every job named was removed, 1
otherwise (each refusal is one line; the others are still removed).

`--json` prints `{"removed": [{"job_id", "context", "prefix", "objects", "stopped", "terminated", "groups_left"}],
"errors": [{"job", "error", "hint"}]}`.
"""

from __future__ import annotations

import json
from collections import Counter

import click

from orchestrator.cli import options
from orchestrator.cli.context import App
from orchestrator.errors import ExitCode, UserError
from orchestrator.jobs.remove import Removed, remove_job


@click.command("rm")
@click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
@click.option(
    "--force",
    is_flag=True,
    help="Also remove a live job: stop it and terminate its instance first (no final checkpoint).",
)
@options.storage_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(
    app: App, job_ids: tuple[str, ...], force: bool, storage: str | None, profile: str | None, as_json: bool
) -> int:
    """Delete JOBs (ids or unique prefixes) and everything they stored; a live one needs --force."""
    removed: list[tuple[str, Removed]] = []
    errors: list[tuple[str, UserError]] = []
    for named in dict.fromkeys(job_ids):
        try:
            context, job_id = app.locate(named, storage, profile)
            removed.append((context.name, remove_job(context.store, job_id, context.clouds, force=force)))
        except UserError as exc:
            errors.append((named, exc))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "removed": [{"context": name, **vars(r)} for name, r in removed],
                    "errors": [{"job": named, "error": e.message, "hint": e.hint} for named, e in errors],
                },
                indent=2,
            )
        )
    else:
        for _, r in removed:
            click.echo(_line(r))
        for _, e in errors:
            click.echo(f"error: {e.message}", err=True)
            if e.hint:
                click.echo(f"hint: {e.hint}", err=True)
    return ExitCode.FAILED if errors else ExitCode.OK


def _line(r: Removed) -> str:
    """`removed JOB: 14 objects under URL/ (checkpoints 6, logs 2, ...)`, and what --force did first."""
    before = []
    if r.stopped:
        before.append("stopped it")
    if r.terminated:
        before.append(f"terminated {', '.join(r.terminated)}")
    parts = Counter(o.split("/", 1)[0] if "/" in o else o for o in r.objects)
    what = ", ".join(f"{name} {count}" if count > 1 else name for name, count in sorted(parts.items()))
    count = f"{len(r.objects)} object{'' if len(r.objects) == 1 else 's'}"
    left = (
        f"; placement group {', '.join(r.groups_left)} still in use: delete it once its machines are gone "
        f"(aws ec2 delete-placement-group --group-name {r.groups_left[0]})"
        if r.groups_left
        else ""
    )
    return (
        f"removed {r.job_id}: "
        + (f"{'; '.join(before)}; " if before else "")
        + f"{count} under {r.prefix}/"
        + (f" ({what})" if what else "")
        + left
    )
