"""`spotctl local up|status|down|interrupt`: the local cloud (orchestrator.local), the whole product on
one machine with no AWS account. Other commands use it with `--local`."""

from __future__ import annotations

import json
import re
import shlex

import click

from orchestrator.aws import quotas
from orchestrator.cli import options, render
from orchestrator.errors import UserError
from orchestrator.local import client


@click.group("local")
def command() -> None:
    """A local cloud: EC2, S3 and a spot market on this machine (state under $SPOTCTL_HOME, default ~/.spotctl)."""


@command.command("up")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the simulated spot market (prices, random interruptions).",
)
@click.option(
    "--interrupt-rate",
    type=click.FloatRange(0),
    help="Random spot interruptions per instance-hour, drawn from the seed (default 0). Also changes a running cloud.",
)
@click.option(
    "--notice",
    "notice_s",
    type=click.FloatRange(0, 600),
    default=5.0,
    show_default=True,
    help="Seconds between a spot notice and the machine going (AWS: 120).",
)
@click.option(
    "--interrupt-at-step",
    type=click.IntRange(0),
    help="Interrupt each job's first attempt once its trainer reports this step (the demo's scheduled interruption; 0: none). Also changes a running cloud.",
)
@click.option(
    "--lenient",
    is_flag=True,
    help="Without the strict proxy: moto's own answers, kinder than AWS's (a missing key is 404, nothing is ever refused).",
)
@click.option(
    "--refuse-pool",
    "refused_pools",
    multiple=True,
    metavar="TYPE/ZONE",
    help="A spot pool without capacity (InsufficientInstanceCapacity, as EC2 says it), e.g. g5.xlarge/us-east-1a or g5.xlarge/*. Repeatable.",
)
@click.option(
    "--spot-quota",
    "spot_quotas",
    multiple=True,
    metavar="CODE=VCPUS",
    help="A Spot vCPU quota of the account, e.g. L-3819A6DF=0 (All G and VT: a new account). Repeatable.",
)
@options.json_option
def up(
    seed: int,
    interrupt_rate: float | None,
    notice_s: float,
    interrupt_at_step: int | None,
    lenient: bool,
    refused_pools: tuple[str, ...],
    spot_quotas: tuple[str, ...],
    as_json: bool,
) -> int:
    """Start the local cloud in the background (nothing happens if it is running); print its endpoint.

    It answers like AWS where moto would be kinder (the strict proxy: S3's 403 for missing keys, EC2's
    capacity, quota and throttling refusals, IAM's delays, eventual consistency); `--lenient` for moto alone."""
    strictness = _strictness(refused_pools, spot_quotas)
    if lenient and strictness:
        raise UserError("--refuse-pool and --spot-quota need the strict proxy", "leave out --lenient")
    cloud, started = client.up(seed, interrupt_rate, notice_s, interrupt_at_step, strictness, lenient)
    if as_json:
        click.echo(json.dumps({**vars(cloud), "started": started}, indent=2))
    else:
        click.echo(
            f"local cloud {'started' if started else 'already running'}: {cloud.endpoint} (pid {cloud.pid}, market seed {cloud.seed}"
            f"{', lenient: moto alone' if lenient and started else ''})"
        )
        click.echo(
            f"use it with --local, e.g. `spotctl launch examples/quickstart.yaml --local --watch`; storage {client.LOCAL_STORAGE}"
        )
    return 0


def _strictness(refused_pools: tuple[str, ...], spot_quotas: tuple[str, ...]) -> dict:
    changes: dict = {}
    for pool in refused_pools:
        if not re.fullmatch(r"[a-z0-9-]+\.[a-z0-9]+/([a-z]{2}-[a-z]+-\d[a-z]|\*)", pool):
            raise UserError(
                f"--refuse-pool: '{pool}' is not TYPE/ZONE", "write it like g5.xlarge/us-east-1a or g5.xlarge/*"
            )
        changes.setdefault("refused_pools", []).append(pool)
    known = {q.code for q in quotas.ALL}
    for quota in spot_quotas:
        code, _, vcpus = quota.partition("=")
        if code not in known or not vcpus.isdigit():
            raise UserError(
                f"--spot-quota: '{quota}' is not CODE=VCPUS with a Spot quota code",
                f"write it like L-3819A6DF=0; the codes: {', '.join(sorted(known))}",
            )
        changes.setdefault("spot_vcpu_quotas", {})[code] = int(vcpus)
    return changes


@command.command("env")
def env() -> int:
    """Print `export` lines that point AWS tools at the local cloud: `eval "$(spotctl local env)"`."""
    cloud = client.require()
    for name, value in {**cloud.environment(), "SPOTCTL_STORAGE": client.LOCAL_STORAGE}.items():
        click.echo(f"export {name}={shlex.quote(value)}")
    return 0


@command.command("status")
@options.json_option
def status(as_json: bool) -> int:
    """Describe the local cloud: endpoint, market seed and the machines it runs."""
    cloud = client.find()
    if cloud is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo(f"no local cloud running (home {client.home()}); start one with `spotctl local up`")
        return 1
    described = cloud.call("GET", "/status")
    if as_json:
        click.echo(json.dumps({"running": True, **described}, indent=2))
        return 0
    click.echo(
        f"local cloud: {described['endpoint']} (pid {described['pid']}, up since {described['started_at']}, market seed {described['seed']})"
    )
    rows = [
        [
            m["instance_id"],
            m["job_id"],
            m["attempt"],
            m["instance_type"],
            m["zone"],
            m["pid"],
            "notice served" if m["interrupting"] else "running",
        ]
        for m in described["machines"]
    ]
    render.console().print(
        render.table(["instance", "job", "#", "type", "zone", "pid", "state"], rows, title=f"{len(rows)} machines")
    )
    return 0


@command.command("down")
def down() -> int:
    """Stop the local cloud and every machine it runs."""
    cloud = client.down()
    click.echo("local cloud stopped" if cloud else "no local cloud was running")
    return 0


@command.command("interrupt")
@click.argument("target", metavar="JOB|INSTANCE")
@click.option(
    "--notice",
    "notice_s",
    type=click.FloatRange(0, 600),
    default=5.0,
    show_default=True,
    help="Seconds between the spot notice and the machine going (AWS: 120).",
)
def interrupt(target: str, notice_s: float) -> int:
    """A spot interruption: the notice on the instance's metadata service, then EC2 takes it."""
    cloud = client.require()
    machines = cloud.call("GET", "/status")["machines"]
    chosen = [m for m in machines if m["instance_id"] == target] or sorted(
        (m for m in machines if m["job_id"] == target), key=lambda m: m["attempt"]
    )[-1:]
    if not chosen:
        raise UserError(f"no running local instance of '{target}'", "`spotctl local status` lists them")
    machine = cloud.call("POST", "/interrupt", {"instance_id": chosen[0]["instance_id"], "notice_s": notice_s})
    click.echo(
        f"spot notice served to {machine['instance_id']} (job {machine['job_id']} attempt {machine['attempt']}); it goes in {notice_s:g}s"
    )
    return 0
