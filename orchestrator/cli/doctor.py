"""`spotctl doctor JOB.yaml`: is the account ready for the job? One line per check: ok, or the
problem and its fix (orchestrator.aws.doctor). Exit 1 when any check found a problem."""

from __future__ import annotations

import json

import click

from orchestrator.aws.doctor import Check, Verdict, run_checks
from orchestrator.cli import options
from orchestrator.cli.context import App
from orchestrator.errors import ExitCode
from orchestrator.jobs.preflight import budget_checks

MARKS = {Verdict.OK: "ok", Verdict.PROBLEM: "PROBLEM", Verdict.WARNING: "warning", Verdict.UNKNOWN: "unknown"}


def render_checks(checks: list[Check]) -> list[str]:
    lines = []
    for check in checks:
        lines.append(f"{MARKS[check.verdict]:<8} {check.name}: {check.detail}")
        if check.fix and check.verdict is not Verdict.OK:
            lines.append(f"{'':<8}   fix: {check.fix}")
    return lines


@click.command("doctor")
@click.argument("job_file", metavar="JOB.yaml")
@options.region_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(app: App, job_file: str, region: str | None, profile: str | None, as_json: bool) -> int:
    """Check the account before the first job: credentials, Spot role and quotas, subnets, S3 endpoint,
    bucket, data and weights, budget, instance role and AMI; each problem with its fix. Changes nothing."""
    spec = app.load_job(job_file, region)
    cloud = app.cloud(spec.region, profile)
    checks = run_checks(spec, cloud, app.prices(cloud), with_offers=lambda found: budget_checks(spec, found))
    problems = sum(c.verdict is Verdict.PROBLEM for c in checks)
    if as_json:
        click.echo(json.dumps({"ready": not problems, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        for line in render_checks(checks):
            click.echo(line)
        click.echo(f"{problems} problem{'s' * (problems != 1)}" if problems else "ready to launch")
    return ExitCode.FAILED if problems else ExitCode.OK
