"""What every command works with, built once per invocation and handed down as click's context object
(`@click.pass_obj`): the settings, and the local cloud when `--local` asked for it. `--local` changes
nothing else: it is this value, so clients, prices, storage and job defaults are chosen from it and
the process environment is never edited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.aws.clients import Cloud, Endpoint, storage_options
from orchestrator.aws.prices import AwsPrices, PriceSource
from orchestrator.errors import UserError
from orchestrator.jobs.record import JobStore
from orchestrator.local.client import LocalCloud
from trainer.job.settings import Settings
from trainer.job.spec import JobSpec


def aws_cloud(region: str, profile: str | None) -> Cloud:
    """A Cloud on AWS itself (the standard credential chain, or a profile)."""
    return Cloud(region, profile)


def aws_prices(cloud: Cloud) -> PriceSource:
    return AwsPrices(cloud)


@dataclass
class App:
    settings: Settings
    local: LocalCloud | None = None  # set by --local: the running local cloud, used instead of AWS
    filled_in: dict[str, str] = field(default_factory=dict)  # by load_job: dotted path -> where its value came from
    job_warnings: list = field(default_factory=list)  # by load_job: the file's LocatedProblem warnings

    @property
    def endpoint(self) -> Endpoint | None:
        if self.local is None:
            return None
        return Endpoint(self.local.endpoint, *self.local.credentials)

    def cloud(self, region: str, profile: str | None) -> Cloud:
        if self.local is not None:
            return Cloud(region, max_attempts=self.local.max_attempts, endpoint=self.endpoint)
        return aws_cloud(region, profile)

    def clouds(self, profile: str | None) -> Callable[[str], Cloud]:
        """A Cloud per region, built on first use."""
        built: dict[str, Cloud] = {}

        def for_region(region: str) -> Cloud:
            if region not in built:
                built[region] = self.cloud(region, profile)
            return built[region]

        return for_region

    def prices(self, cloud: Cloud) -> PriceSource:
        if self.local is not None:  # the local cloud's simulated market
            from orchestrator.local.market import SimulatedMarket

            return SimulatedMarket(self.local.seed)
        return aws_prices(cloud)

    def store(self, storage: str | None, profile: str | None) -> JobStore:
        root = storage or self.settings.storage or (self.local.storage if self.local else None)
        if not root:
            raise UserError(
                "no storage root given",
                "pass --storage s3://bucket/prefix (the job file's `storage`) or set SPOTCTL_STORAGE",
            )
        found = JobStore(root, **(storage_options(self.endpoint, profile) if root.startswith("s3://") else {}))
        found.check()
        return found

    def load_job(self, job_file: str, region: str | None = None) -> JobSpec:
        """The job file, validated, with what it leaves out taken from the local cloud (under --local) or
        from the stack `spotctl infra deploy` recorded: storage, instance profile, security group.
        `region` (--region) replaces the file's before those are chosen: they are regional. What was
        filled in, and from where, is kept in `filled_in`; the file's warnings in `job_warnings`."""
        from trainer.job.spec_file import load_checked

        def defaults(data: dict) -> dict:
            found, source = self.job_defaults({**data, "region": region} if region else data)
            self.filled_in = {path: source for path in _missing_paths(data, found)}
            return found

        spec, self.job_warnings = load_checked(job_file, defaults=defaults)
        return spec.model_copy(update={"region": region}) if region else spec

    def job_defaults(self, data: dict) -> tuple[dict, str]:
        """(what a job file may leave out, where it comes from). Under --local the local cloud's values
        only: never the deployed stack's (its security group is in another account's VPC)."""
        if self.local is not None:
            return (
                {"storage": self.local.storage, "compute": {"instance_profile": self.local.instance_profile}},
                "the local cloud",
            )
        from orchestrator.aws import infra

        deployed = infra.read_profile()
        return infra.job_defaults(data), f"the deployed stack {deployed.stack}" if deployed else ""


def _missing_paths(data: dict, defaults: dict, prefix: str = "") -> list[str]:
    """The dotted paths of `defaults` that `data` leaves out (null included): the ones filled in."""
    paths = []
    for key, value in defaults.items():
        given = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, dict) and isinstance(given or {}, dict):
            paths += _missing_paths(given or {}, value, f"{prefix}{key}.")
        elif given is None:
            paths.append(f"{prefix}{key}")
    return paths
