"""`spotctl local up|status|data|down|interrupt|crash|env`: the local cloud (orchestrator.local), the whole
product on one machine with no AWS account. Other commands use it with `--local`."""

from __future__ import annotations

import json
import re
import shlex

import click

from orchestrator.aws import quotas
from orchestrator.cli import options, render
from orchestrator.errors import UserError
from orchestrator.local import client, datasets
from orchestrator.local.daemon import BUCKET

# The options of `up` a running cloud can take, by the name its settings use.
FLAGS = {
    "seed": "--seed",
    "interrupt_rate": "--interrupt-rate",
    "interrupt_at_step": "--interrupt-at-step",
    "notice_s": "--notice",
    "lenient": "--lenient",
    "refused_pools": "--refuse-pool",
    "spot_vcpu_quotas": "--spot-quota",
    "controller": "--no-controller",
    "events": "--events",
    "tick_s": "--tick",
}


@click.group("local")
def command() -> None:
    """A local cloud: EC2, S3 and a spot market on this machine (state under $SPOTCTL_HOME, default ~/.spotctl)."""


@command.command("up")
@click.option(
    "--seed",
    type=int,
    help=f"Seed of the simulated spot market (prices, random interruptions); default {client.DEFAULT_SEED}, or the one of the cloud `local down --keep` kept.",
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
    help=f"Seconds between a spot notice and the machine going (AWS: 120); default {client.DEFAULT_NOTICE_S:g}. Also changes a running cloud.",
)
@click.option(
    "--interrupt-at-step",
    type=click.IntRange(0),
    help="Interrupt each job's first attempt once its trainer reports this step (the demo's scheduled interruption; 0: none). Also changes a running cloud.",
)
@click.option(
    "--lenient",
    is_flag=True,
    help="Without the strict proxy: moto's own answers, kinder than AWS's (a missing key is 404, nothing is ever refused). Only for a cloud started now.",
)
@click.option(
    "--refuse-pool",
    "refused_pools",
    multiple=True,
    metavar="TYPE/ZONE",
    help="A spot pool without capacity (InsufficientInstanceCapacity, as EC2 says it), e.g. g5.xlarge/us-east-1a or g5.xlarge/*. Repeatable; also changes a running cloud.",
)
@click.option(
    "--spot-quota",
    "spot_quotas",
    multiple=True,
    metavar="CODE=VCPUS",
    help="A Spot vCPU quota of the account, e.g. L-3819A6DF=0 (All G and VT: a new account). Repeatable; also changes a running cloud.",
)
@click.option(
    "--no-controller",
    is_flag=True,
    help="Deploy no controller (by default the local cloud runs it as the stack does on AWS: EC2's events and a schedule to its handler). Only for a cloud started now.",
)
@click.option(
    "--events/--no-events",
    default=None,
    help="Deliver EC2's events to the controller (default) or lose them all, as best-effort events may be: the schedule's tick still recovers jobs. Also changes a running cloud.",
)
@click.option(
    "--tick",
    "tick_s",
    type=click.FloatRange(0.5),
    help="Seconds between the controller's schedule ticks (AWS: 60, rate(1 minute)); default 60. Also changes a running cloud.",
)
@options.json_option
def up(
    seed: int | None,
    interrupt_rate: float | None,
    notice_s: float | None,
    interrupt_at_step: int | None,
    lenient: bool,
    refused_pools: tuple[str, ...],
    spot_quotas: tuple[str, ...],
    no_controller: bool,
    events: bool | None,
    tick_s: float | None,
    as_json: bool,
) -> int:
    """Start the local cloud in the background, or change the running one; print its endpoint.

    It answers like AWS where moto would be kinder (the strict proxy: S3's 403 for missing keys, EC2's
    capacity, quota and throttling refusals, IAM's delays, eventual consistency); `--lenient` for moto alone.
    On a running cloud the interruption and strictness options apply at once; --seed and --lenient
    need a new one (`spotctl local down` first)."""
    strictness = _strictness(refused_pools, spot_quotas)
    if lenient and strictness:
        raise UserError("--refuse-pool and --spot-quota need the strict proxy", "leave out --lenient")
    done = client.up(
        seed, interrupt_rate, notice_s, interrupt_at_step, strictness, lenient, not no_controller, events, tick_s
    )
    cloud = done.cloud
    contents = done.cloud.contents() if done.started else None
    if as_json:
        document = {**vars(cloud), "started": done.started, "changed": done.changed, "ignored": done.ignored}
        if contents is not None:
            document["contents"] = contents.as_dict()
        click.echo(json.dumps(document, indent=2))
        return 0
    click.echo(
        f"local cloud {'started' if done.started else 'already running'}: {cloud.endpoint} (pid {cloud.pid}, market seed {cloud.seed}"
        f"{', lenient: moto alone' if lenient and done.started else ''})"
    )
    if contents is not None:
        click.echo(describe_contents(cloud, contents))
    if done.changed:
        click.echo(
            "changed: "
            + "; ".join(
                f"{FLAGS[k]} {_setting(before)} -> {_setting(after)}" for k, (before, after) in done.changed.items()
            )
        )
    if done.ignored:
        why = {
            "seed": f"it keeps market seed {cloud.seed}, which priced its jobs",
            "lenient": "it runs the strict proxy",
            "controller": "it runs the controller",
        }
        asked = ", ".join(f"{FLAGS[k]}{'' if v is True else f' {v}'} ({why[k]})" for k, v in done.ignored.items())
        click.echo(
            f"not changed while it runs: {asked}; `spotctl local down --keep`, then `spotctl local up` with them, "
            "starts a new one with its jobs and data"
        )
    click.echo(
        f"use it with --local, e.g. `spotctl launch examples/quickstart.yaml --local --watch`; storage {client.LOCAL_STORAGE}"
    )
    return 0


def describe_contents(cloud: client.LocalCloud, contents) -> str:
    """What a cloud started now holds: nothing, or what `local down --keep` kept (`launch --local` says it too)."""
    if not (contents.jobs or contents.wheels or contents.data):  # at most the controller's first tick
        return (
            f"the local cloud is new: bucket {BUCKET} holds no data; "
            f"`spotctl local data {datasets.QUICKSTART.name}` uploads the quickstart's"
        )
    restored = cloud.call("GET", "/status").get("restored_objects") or 0
    where = "restored from `spotctl local down --keep`" if restored else f"bucket {BUCKET} holds"
    missing = (
        ""
        if datasets.QUICKSTART.url.removeprefix(f"s3://{BUCKET}/") in contents.data
        else (f"; no quickstart data (`spotctl local data {datasets.QUICKSTART.name}` uploads it)")
    )
    return f"{where}: {contents.describe()}{missing}"


def _setting(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == [] or value == {}:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return f"{value:.10g}" if isinstance(value, float) else str(value)


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
    """Describe the local cloud: endpoint, market seed, interruption and strictness settings, and the machines it runs."""
    cloud = client.find()
    if cloud is None:
        if as_json:
            click.echo(json.dumps({"running": False, "kept": client.kept()}))
        else:
            click.echo(f"no local cloud running (home {client.home()}); start one with `spotctl local up`")
            if client.kept():
                click.echo("`spotctl local down --keep` kept its jobs and data: `spotctl local up` puts them back")
        return 1
    described = cloud.call("GET", "/status")
    if as_json:
        click.echo(json.dumps({"running": True, **described}, indent=2))
        return 0
    click.echo(
        f"local cloud: {described['endpoint']} (pid {described['pid']}, up since {described['started_at']}, market seed {described['seed']})"
    )
    click.echo(f"interruptions: {_interruptions(described['interruptions'])}")
    click.echo(f"strictness: {_strictness_line(described)}")
    click.echo(f"controller: {_controller_line(described.get('controller') or {})}")
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


def _interruptions(settings: dict) -> str:
    """'each job's first attempt at step 40; at random 0 per instance-hour; notice 5s'."""
    step = settings["interrupt_at_step"]
    scheduled = f"each job's first attempt at step {step}" if step else "none scheduled"
    return (
        f"{scheduled} ({FLAGS['interrupt_at_step']}); at random {_setting(settings['interrupt_rate'])} per instance-hour "
        f"({FLAGS['interrupt_rate']}); notice {_setting(settings['notice_s'])}s ({FLAGS['notice_s']})"
    )


def _controller_line(controller: dict) -> str:
    """'orchestrator.controller.handler:handler; events on (--events): 12 published, 0 lost; 15 messages
    delivered in 9 invocations; tick every 60s (--tick), last 2026-...; 0 handler errors, 0 dead letters'."""
    if not controller.get("deployed"):
        return f"not deployed ({controller.get('why_not') or '--no-controller'})"
    tick = f"tick every {_setting(controller['tick_s'])}s ({FLAGS['tick_s']}), last {controller['last_tick'] or 'none yet'}"
    errors = f"{controller['handler_errors']} handler errors"
    if controller["last_error"]:
        errors += f" (last: {controller['last_error']})"
    return (
        f"{controller['handler']}; events {_setting(controller['events'])} ({FLAGS['events']}): "
        f"{controller['published']} published, {controller['suppressed']} lost; "
        f"{controller['delivered']} messages delivered in {controller['invocations']} invocations; {tick}; "
        f"{errors}, {controller['dead_letters']} dead letters"
    )


def _strictness_line(described: dict) -> str:
    if not described["strict"]:
        return "lenient: moto's own answers, no strict proxy (--lenient)"
    changed = described["strictness_changed"]
    if not changed:
        return "AWS's answers, the strict proxy's defaults"
    return "AWS's answers, changed from the defaults: " + "; ".join(f"{k} {_setting(v)}" for k, v in changed.items())


@command.command("data")
@click.argument("name", type=click.Choice(sorted(datasets.SAMPLES)))
@click.option(
    "--per-class", type=click.IntRange(1), help="Training images per class (validation gets a quarter); default 80."
)
@click.option("--size", type=click.IntRange(8, 1024), help="Image side in pixels; default 64.")
@click.option("--seed", type=int, help="Seed of the drawing; default 0.")
@options.json_option
def data(name: str, per_class: int | None, size: int | None, seed: int | None, as_json: bool) -> int:
    """Upload a sample dataset to the local cloud's bucket: `shapes` is the quickstart's (examples/quickstart.yaml).

    Drawn on this machine, no network needed; what was there before under its folder is replaced."""
    cloud = client.require()
    asked = {"per_class": per_class, "size": size, "seed": seed}
    done = datasets.upload(cloud.endpoint, name, {k: v for k, v in asked.items() if v is not None})
    if as_json:
        click.echo(json.dumps(done.as_dict(), indent=2))
        return 0
    sample = datasets.SAMPLES[name]
    splits = ", ".join(
        f"{split}/ {count}" for split, count in sorted(done.images.items(), key=lambda i: i[0] != "train")
    )
    click.echo(
        f"uploaded {sum(done.images.values())} images of {done.classes} classes ({sample.description}) to {done.url}: {splits}"
    )
    click.echo(f"{sample.used_by} reads it: `spotctl launch {sample.used_by} --local --watch`")
    return 0


@command.command("down")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the bucket's jobs and data for the next `spotctl local up` (copied to $SPOTCTL_HOME/local/kept/).",
)
def down(keep: bool) -> int:
    """Stop the local cloud and every machine it runs; its bucket (jobs, data) goes with it unless --keep."""
    done = client.down(keep)
    if done is None:
        click.echo("no local cloud was running")
        return 0
    held = done.contents.describe() if done.contents else "its bucket"
    if done.kept:
        click.echo(
            f"local cloud stopped; kept {held} in {client.kept_folder()}: the next `spotctl local up` puts them back"
        )
    elif keep:
        raise UserError(f"the local cloud stopped without keeping {held}", f"see {client.home() / 'daemon.log'}")
    elif done.contents is None:
        click.echo("local cloud stopped; what its bucket held is gone")
    elif done.contents.empty:
        click.echo("local cloud stopped; its bucket was empty")
    else:
        click.echo(f"local cloud stopped; deleted {held} (`spotctl local down --keep` keeps them for the next `up`)")
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
    chosen = _machine_of(cloud, target)
    machine = cloud.call("POST", "/interrupt", {"instance_id": chosen["instance_id"], "notice_s": notice_s})
    click.echo(
        f"spot notice served to {machine['instance_id']} (job {machine['job_id']} attempt {machine['attempt']}); it goes in {notice_s:g}s"
    )
    return 0


# What kills a trainer on a real machine: the OOM killer (KILL), a native crash (SEGV, ABRT, BUS), a stop
# before it could checkpoint (TERM, INT).
CRASH_SIGNALS = ("KILL", "SEGV", "ABRT", "BUS", "TERM", "INT")


@command.command("crash")
@click.argument("target", metavar="JOB|INSTANCE")
@click.option(
    "--signal",
    "signal_name",
    type=click.Choice(CRASH_SIGNALS, case_sensitive=False),
    default="KILL",
    show_default=True,
    help="The signal: KILL as the OOM killer sends it, SEGV or ABRT as a native crash raises it.",
)
def crash(target: str, signal_name: str) -> int:
    """Kill the trainer on an instance with a signal, no spot notice: what the OOM killer or a native crash does.

    The bootstrap reports the crash and shuts the machine down; `spotctl watch` recovers the job from
    its last checkpoint (within recovery.max_crashes). The trainer must have sent a heartbeat (its pid)."""
    cloud = client.require()
    chosen = _machine_of(cloud, target)
    machine = cloud.call("POST", "/crash", {"instance_id": chosen["instance_id"], "signal": signal_name})
    click.echo(
        f"{machine['signal']} sent to the trainer of {machine['instance_id']} (job {machine['job_id']} attempt "
        f"{machine['attempt']}, pid {machine['trainer_pid']})"
    )
    return 0


def _machine_of(cloud: client.LocalCloud, target: str) -> dict:
    """The running machine of an instance id, or a job's latest one."""
    machines = cloud.call("GET", "/status")["machines"]
    chosen = [m for m in machines if m["instance_id"] == target] or sorted(
        (m for m in machines if m["job_id"] == target), key=lambda m: m["attempt"]
    )[-1:]
    if not chosen:
        raise UserError(f"no running local instance of '{target}'", "`spotctl local status` lists them")
    return chosen[0]
