"""Options several commands share, and turning them into a Cloud, a price source and a job store."""

from __future__ import annotations

import os

import click

from orchestrator.aws import Cloud
from orchestrator.errors import UserError
from orchestrator.prices import AwsPrices, PriceSource
from orchestrator.record import JobStore

STORAGE_ENV = "SPOTCTL_STORAGE"

profile_option = click.option("--profile", metavar="NAME", help="AWS profile (default: the standard credential chain).")
region_option = click.option("--region", metavar="REGION", help="AWS region (default: the job file's).")
storage_option = click.option("--storage", metavar="URL", help=f"Storage root of the jobs, s3://bucket/prefix (default: ${STORAGE_ENV}).")
poll_option = click.option("--poll", "poll_s", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True, help="Seconds between polls of EC2 and S3 while watching.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, for scripts.")


def cloud(region: str, profile: str | None) -> Cloud:
    return Cloud(region, profile)


def prices(cloud_: Cloud) -> PriceSource:
    seed = os.environ.get("SPOTCTL_LOCAL_SEED")
    if seed is not None:  # --local: the local cloud's simulated market
        from orchestrator.local.market import SimulatedMarket

        return SimulatedMarket(int(seed))
    return AwsPrices(cloud_)


def _use_local(start: bool):
    def callback(ctx, param, value: bool) -> None:
        if not value:
            return
        from orchestrator.local import client

        cloud = client.up()[0] if start else client.require()
        client.use(cloud)

    return callback


local_option = click.option("--local", is_flag=True, expose_value=False, callback=_use_local(start=False),
                            help="Use the local cloud (`spotctl local up`) instead of AWS.")
local_starting_option = click.option("--local", is_flag=True, expose_value=False, callback=_use_local(start=True),
                                     help="Use the local cloud instead of AWS, starting it if it is not running.")


def load_job(job_file: str, region: str | None = None):
    """The job file, validated, with what it leaves out taken from the local cloud (under --local) or
    from the stack `spotctl infra deploy` recorded: storage, instance profile, security group.
    `region` (--region) replaces the file's before those are chosen: they are regional."""
    from trainer.spec_file import load_spec

    spec = load_spec(job_file, defaults=lambda data: job_defaults({**data, "region": region} if region else data))
    return spec.model_copy(update={"region": region}) if region else spec


def job_defaults(data: dict) -> dict:
    if os.environ.get("SPOTCTL_LOCAL_SEED") is not None:
        from orchestrator.local import client
        from orchestrator.local.daemon import INSTANCE_PROFILE

        return {"storage": client.LOCAL_STORAGE, "compute": {"instance_profile": INSTANCE_PROFILE}}
    from orchestrator import infra

    return infra.job_defaults(data)


def store(storage: str | None, profile: str | None) -> JobStore:
    root = storage or os.environ.get(STORAGE_ENV)
    if not root:
        raise UserError("no storage root given", f"pass --storage s3://bucket/prefix (the job file's `storage`) or set {STORAGE_ENV}")
    found = JobStore(root, **({"profile": profile} if profile and root.startswith("s3://") else {}))
    found.check()
    return found


def clouds(profile: str | None):
    """A Cloud per region, built on first use."""
    built: dict[str, Cloud] = {}

    def for_region(region: str) -> Cloud:
        if region not in built:
            built[region] = Cloud(region, profile)
        return built[region]

    return for_region
