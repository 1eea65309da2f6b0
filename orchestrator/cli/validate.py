"""`spotctl validate JOB.yaml`: check a job file and show the spec as it will run."""

from __future__ import annotations

import json

import click

from orchestrator.cli import options, render
from orchestrator.cli.context import App
from trainer.job.shown import printable
from trainer.job.spec_file import SpecError


@click.command("validate")
@click.argument("job_file", metavar="JOB.yaml")
@options.local_option
@click.option("--json", "as_json", is_flag=True, help="Print the resolved spec (or the problems) as JSON.")
@click.pass_obj
def command(app: App, job_file: str, as_json: bool) -> int:
    """Check JOB.yaml and print the resolved spec, defaults filled in (those of the deployed stack, or of
    the local cloud under --local, marked as such); fields that do not apply are left out.

    Every problem is reported on its own line as FILE:LINE: FIELD: MESSAGE; the exit code is 2
    when there is any. A field set where it has no effect is a warning (FILE:LINE: warning: ...), exit 0.
    A sweep file (`search:` and `job:`) is checked as `spotctl sweep launch` would.
    """
    if _is_sweep(job_file):
        return _validate_sweep(app, job_file, as_json)
    try:
        spec = app.load_job(job_file)
    except SpecError as exc:
        if not as_json:
            raise
        return _refused(exc)
    warnings = [{"file": p.source, "line": p.line, "field": p.path, "message": p.message} for p in app.job_warnings]
    if as_json:
        click.echo(
            json.dumps(
                {"valid": True, "spec": spec.model_dump(mode="json"), "filled_in": app.filled_in, "warnings": warnings},
                indent=2,
            )
        )
        return 0
    for warning in app.job_warnings:
        click.echo(warning.as_warning(), err=True)
    title = f"{printable(job_file)}: valid"  # a file name may hold a terminal escape
    render.console().print(render.spec_tree(spec, title=title, filled_in=app.filled_in))
    return 0


def _refused(exc: SpecError) -> int:
    """The problems of a file, as `--json` tells them."""
    problems = [{"file": p.source, "line": p.line, "field": p.path, "message": p.message} for p in exc.problems]
    click.echo(json.dumps({"valid": False, "problems": problems}, indent=2))
    return exc.exit_code


def _is_sweep(path: str) -> bool:
    """A sweep file (orchestrator.sweeps.spec), told by its top-level `search:` and `job:` keys."""
    from trainer.job.spec_file import read_mapping

    try:
        data = read_mapping(path)[0]
    except SpecError:
        return False  # the job file's reading says what is wrong with it
    return isinstance(data, dict) and "search" in data and "job" in data


def _validate_sweep(app: App, path: str, as_json: bool) -> int:
    from orchestrator.sweeps.spec import load_sweep

    try:
        sweep = load_sweep(path, defaults=lambda data: app.job_defaults(data)[0])
    except SpecError as exc:
        if not as_json:
            raise
        return _refused(exc)
    settings = sweep.settings
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": True,
                    "sweep": settings.model_dump(mode="json", exclude={"job"}),
                    "job": sweep.base.model_dump(mode="json"),
                    "params": [p.model_dump(mode="json") for p in sweep.params],
                },
                indent=2,
            )
        )
        return 0
    click.echo(f"{printable(path)}: valid")
    click.echo(
        f"sweep {sweep.name}: {settings.trials} trials of job {sweep.base.name}, {settings.parallel} at a time, "
        f"{settings.sampler} sampler, {settings.pruner.kind} pruner, "
        f"{'maximize' if settings.objective.maximize else 'minimize'} {settings.objective.metric}"
        + (f", budget ${settings.budget_usd:g}" if settings.budget_usd else "")
    )
    for param in sweep.params:
        space = (
            ", ".join(map(str, param.choices))
            if param.kind == "choice"
            else f"{param.low:g} .. {param.high:g}{' (log)' if param.log else ''}"
        )
        click.echo(f"  {param.path}: {param.kind} {space}")
    return 0
