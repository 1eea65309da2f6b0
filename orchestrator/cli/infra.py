"""`spotctl infra deploy|status|delete`: the AWS resources spotctl needs, as one CloudFormation stack
(infra/spotctl.yaml), and the local profile that lets job files leave them out (orchestrator.aws.infra)."""

from __future__ import annotations

import json

import click

from orchestrator.aws import infra
from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.errors import UserError

stack_option = click.option(
    "--stack", default=infra.DEFAULT_STACK, show_default=True, metavar="NAME", help="CloudFormation stack name."
)
region_option = click.option(
    "--region",
    metavar="REGION",
    help="AWS region (default: the deployed stack's, else $AWS_DEFAULT_REGION, else us-east-1).",
)


def _region(region: str | None) -> str:
    import os

    deployed = infra.read_profile()
    return (
        region
        or (deployed.region if deployed else None)
        or os.environ.get("AWS_DEFAULT_REGION")
        or os.environ.get("AWS_REGION")
        or "us-east-1"
    )


@click.group("infra")
def command() -> None:
    """The AWS setup: bucket, trainer instance profile, security group (one CloudFormation stack)."""


@command.command("deploy")
@stack_option
@region_option
@click.option("--bucket", metavar="NAME", help="Bucket to create (default: spotctl-<account>-<region>).")
@click.option(
    "--prefix",
    help=f"Key prefix jobs are stored under; the trainer role is limited to it (default: {infra.DEFAULT_PREFIX}).",
)
@click.option(
    "--expire-checkpoints-days",
    type=click.IntRange(0, 3650),
    help="Delete periodic checkpoints this many days after they were written (best/ and artifacts are kept); 0: never (the default).",
)
@click.option(
    "--data-read",
    "data_read",
    multiple=True,
    metavar="URL",
    help="A dataset elsewhere the trainer may list and read: s3://bucket/prefix/ or an S3 ARN (repeatable).",
)
@click.option(
    "--vpc",
    metavar="VPC_ID",
    help="The VPC for the security group, for an account without a default VPC (jobs then name their subnets in compute.subnets).",
)
@click.option(
    "--no-controller",
    is_flag=True,
    help="Leave out the controller (EC2's events and a one-minute tick to a Lambda function that recovers jobs nobody watches); removes it from a stack that has it.",
)
@click.option(
    "--notify",
    "notify",
    multiple=True,
    metavar="KIND=ADDRESS",
    help="Where jobs without a notify section send notifications: webhook=URL, slack=URL, discord=URL or sns=TOPIC_ARN (repeatable; --notify none clears).",
)
@options.profile_option
@options.json_option
@click.pass_obj
def deploy(
    app: App,
    stack: str,
    region: str | None,
    bucket: str | None,
    prefix: str | None,
    expire_checkpoints_days: int | None,
    data_read: tuple[str, ...],
    vpc: str | None,
    no_controller: bool,
    notify: tuple[str, ...],
    profile: str | None,
    as_json: bool,
) -> int:
    """Create or update the stack, wait for it, and remember its outputs for job files. On an update,
    options left out keep the stack's current values (the controller is there unless --no-controller)."""
    targets = None if not notify else [] if notify == ("none",) else infra.notify_targets(notify)
    cloud = app.cloud(_region(region), profile)
    events = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    code = None
    if not no_controller:
        from orchestrator.jobs import lambda_package

        events("building the controller's code (spotctl without torch, for Lambda)")
        code = lambda_package.build()
    deployed, repaired = infra.deploy(
        cloud,
        stack,
        bucket,
        prefix,
        expire_checkpoints_days,
        data_read or None,
        on_event=events,
        vpc=vpc,
        controller=code,
        notify=targets,
    )
    if as_json:
        click.echo(
            json.dumps({**deployed.shown(), "repaired": repaired, "profile": str(infra.profile_path())}, indent=2)
        )
        return 0
    if repaired:
        click.echo(f"set on the bucket through S3, as CloudFormation had not: {', '.join(repaired)}")
    click.echo(f"stack {deployed.stack} ready in {deployed.region}:")
    for label, value in (
        ("storage", deployed.storage),
        ("instance profile", deployed.instance_profile),
        ("security group", deployed.security_group),
        (
            "controller",
            f"{deployed.controller_function} (spotctl {deployed.controller_version})"
            if deployed.controller_function
            else "left out (jobs launched without --watch are recovered by nobody)",
        ),
    ):
        click.echo(f"  {label:<17} {value}")
    click.echo(
        f"recorded in {infra.profile_path()}: job files may now leave out storage, compute.instance_profile and compute.security_group"
    )
    return 0


@command.command("status")
@stack_option
@region_option
@options.profile_option
@options.json_option
@click.pass_obj
def status(app: App, stack: str, region: str | None, profile: str | None, as_json: bool) -> int:
    """The stack, its outputs, the bucket's protections as S3 reports them, and the local profile."""
    cloud = app.cloud(_region(region), profile)
    current = infra.stack_of(cloud, stack)
    outputs = infra.outputs_of(current)
    checks = infra.bucket_checks(cloud, outputs["BucketName"]) if "BucketName" in outputs else {}
    controller = (
        infra.controller_health(cloud, outputs, since=current.get("LastUpdatedTime") or current.get("CreationTime"))
        if current
        else None
    )
    deployed = infra.read_profile()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "stack": stack,
                    "region": cloud.region,
                    "status": current["StackStatus"] if current else None,
                    "outputs": outputs,
                    "bucket_checks": checks,
                    "controller": controller,
                    "profile": deployed.shown() if deployed else None,
                },
                indent=2,
            )
        )
        return 0 if current and _healthy(checks, controller) else 1
    if current is None:
        click.echo(f"no stack {stack} in {cloud.region}; `spotctl infra deploy` creates it")
        return 1
    out = render.console()
    out.print(f"stack {stack} in {cloud.region}: {current['StackStatus']}", markup=False)
    out.print(render.table(["output", "value"], sorted(outputs.items())))
    for name, ok in checks.items():
        mark = {True: "ok  ", False: "MISSING", None: "n/a "}[ok]
        reason = f" (plain-HTTP endpoint {infra.plain_http_endpoint(cloud)})" if ok is None else ""
        out.print(f"  {mark} {name.replace('_', ' ')}{reason}", markup=False)
    for line in _controller_lines(controller):
        out.print(line, markup=False)
    in_use = deployed and (deployed.stack, deployed.region) == (stack, cloud.region)
    out.print(
        f"job files default to this stack's outputs ({infra.profile_path()})"
        if in_use
        else "not the stack job files default to",
        markup=False,
    )
    return 0 if _healthy(checks, controller) else 1


def _healthy(checks: dict, controller: dict | None) -> bool:
    """No bucket protection missing, and a controller (if any) not late or failing."""
    return False not in checks.values() and (controller is None or controller["health"] in infra.HEALTHY)


def _controller_lines(controller: dict | None) -> list[str]:
    if controller is None:
        return ["controller: not deployed (`spotctl infra deploy` adds it; --no-controller left it out)"]
    tick, age = controller["tick"], controller["tick_age_s"]
    if tick is None:
        last = "none yet"
    else:
        errors = tick.get("errors")
        count = len(errors) if isinstance(errors, list) else errors if isinstance(errors, int) else None
        last = f"{tick.get('at', '?')}" + (f" ({age:.0f} s ago)" if age is not None else "")
        last += f", {count} error{'s' if count != 1 else ''}" if count is not None else ""
    queue = controller["queue"]
    return [
        f"controller {controller['function']}: spotctl {controller['version'] or '?'}, code sha256 {controller['code_sha256'][:12] or '?'}",
        f"  last tick          {last}",
        f"  queue              {queue['waiting']} waiting, {queue['in_flight']} in flight",
        f"  dead letters       {controller['dead_letters']}",
        f"  errors, last hour  {controller['errors_last_hour']}",
        f"  health             {controller['health']}",
    ]


@command.command("delete")
@stack_option
@region_option
@click.option(
    "--force", is_flag=True, help="Delete even though the bucket holds jobs (the bucket and its objects are kept)."
)
@click.option(
    "--terminate-instances",
    is_flag=True,
    help="Terminate spotctl's instances still running with the stack's security group or profile first (else refused).",
)
@options.profile_option
@click.pass_obj
def delete(
    app: App, stack: str, region: str | None, force: bool, terminate_instances: bool, profile: str | None
) -> int:
    """Delete the stack (refused while instances use it, or its bucket holds jobs, unless --force); the
    bucket is kept unless empty."""
    cloud = app.cloud(_region(region), profile)
    bucket = infra.delete(
        cloud,
        stack,
        force,
        on_event=lambda line: click.echo(line, err=True),
        terminate_instances=terminate_instances,
    )
    click.echo(f"deleted stack {stack} in {cloud.region}; {bucket}")
    return 0


@command.command("policy")
def policy() -> int:
    """Print the least-privilege IAM policy for whoever runs spotctl, filled in for the deployed stack."""
    deployed = infra.read_profile()
    if deployed is None:
        raise UserError(
            "no stack deployed from this machine yet",
            "run `spotctl infra deploy` first; infra/operator-policy.json is the template",
        )
    click.echo(json.dumps(infra.operator_policy(deployed), indent=1))
    return 0
