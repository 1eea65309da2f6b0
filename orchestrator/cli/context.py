"""What every command works with, built once per invocation and handed down as click's context object
(`@click.pass_obj`): the settings, and the local cloud when `--local` asked for it. `--local` changes
nothing else: it is this value, so clients, prices, storage and job defaults are chosen from it and
the process environment is never edited.

Without `--storage` or `--local`, the commands that read jobs look in every context
(orchestrator.jobs.contexts): `SPOTCTL_STORAGE`, the roots this machine launched into, the deployed
stack's, and the local cloud when one runs (found, never started).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.aws.clients import Cloud, Endpoint, as_user_error, storage_options
from orchestrator.aws.prices import AwsPrices, PriceSource
from orchestrator.errors import UserError
from orchestrator.jobs import contexts
from orchestrator.jobs.contexts import LOCAL, Context, Unreachable
from orchestrator.jobs.record import JobStore
from orchestrator.local import client
from orchestrator.local.client import LocalCloud
from trainer.job.settings import Settings
from trainer.job.spec import JobSpec


def aws_cloud(region: str, profile: str | None) -> Cloud:
    """A Cloud on AWS itself (the standard credential chain, or a profile)."""
    return Cloud(region, profile)


def aws_prices(cloud: Cloud) -> PriceSource:
    return AwsPrices(cloud)


def _endpoint(local: LocalCloud | None) -> Endpoint | None:
    return None if local is None else Endpoint(local.endpoint, *local.credentials)


def _cloud(local: LocalCloud | None, region: str, profile: str | None) -> Cloud:
    if local is not None:
        return Cloud(region, max_attempts=local.max_attempts, endpoint=_endpoint(local))
    return aws_cloud(region, profile)


def _clouds(local: LocalCloud | None, profile: str | None) -> Callable[[str], Cloud]:
    """A Cloud per region, built on first use."""
    built: dict[str, Cloud] = {}

    def for_region(region: str) -> Cloud:
        if region not in built:
            built[region] = _cloud(local, region, profile)
        return built[region]

    return for_region


def _prices(local: LocalCloud | None) -> Callable[[Cloud], PriceSource]:
    if local is not None:  # the local cloud's simulated market
        from orchestrator.local.market import SimulatedMarket

        return lambda cloud: SimulatedMarket(local.seed)
    return aws_prices


def error_line(exc: Exception, doing: str) -> str:
    """One line for an error reading a context (the message of the UserError it would be)."""
    if isinstance(exc, UserError):
        return exc.message
    if isinstance(exc, PermissionError):
        return f"access denied while {doing}: {exc}"
    import botocore.exceptions

    if isinstance(exc, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
        return as_user_error(exc, doing).message
    return f"{doing} failed: {type(exc).__name__}: {exc}"


@dataclass
class App:
    settings: Settings
    local: LocalCloud | None = None  # set by --local: the running local cloud, used instead of AWS
    running: LocalCloud | None = None  # the local cloud found running without --local (contexts)
    filled_in: dict[str, str] = field(default_factory=dict)  # by load_job: dotted path -> where its value came from
    job_warnings: list = field(default_factory=list)  # by load_job: the file's LocatedProblem warnings

    @property
    def endpoint(self) -> Endpoint | None:
        return _endpoint(self.local)

    def cloud(self, region: str, profile: str | None) -> Cloud:
        return _cloud(self.local, region, profile)

    def clouds(self, profile: str | None) -> Callable[[str], Cloud]:
        """A Cloud per region, built on first use."""
        return _clouds(self.local, profile)

    def prices(self, cloud: Cloud) -> PriceSource:
        return _prices(self.local)(cloud)

    def store(self, storage: str | None, profile: str | None) -> JobStore:
        """The one storage root a command writes to: --storage, else SPOTCTL_STORAGE, else the local
        cloud's under --local."""
        root = storage or self.settings.storage or (self.local.storage if self.local else None)
        if not root:
            raise UserError("no storage root given", contexts.NO_CONTEXT_HINT)
        found = self._store(root, self.local, profile)
        found.check()
        return found

    def _store(self, root: str, local: LocalCloud | None, profile: str | None) -> JobStore:
        return JobStore(root, **(storage_options(_endpoint(local), profile) if root.startswith("s3://") else {}))

    def _context(self, root: str, local: LocalCloud | None, profile: str | None) -> Context:
        name = root.rstrip("/")
        if local is not None:
            name = LOCAL if name == local.storage else f"{LOCAL} {name}"
        return Context(
            name,
            self._store(root, local, profile),
            _clouds(local, profile),
            _prices(local),
            local=local is not None,
        )

    # ------------------------------------------------------------------------ where the jobs are
    def _candidates(self, storage: str | None, profile: str | None) -> list[tuple[str, LocalCloud | None, str | None]]:
        """(root, local cloud, profile) of every context in play, in order, without reading any."""
        if storage:
            return [(storage, None, profile)]
        if self.local is not None:
            return [(self.local.storage, self.local, None)]
        from orchestrator.aws import infra

        running = self.running = client.find()  # a local cloud that runs, never started here
        found: list[tuple[str, LocalCloud | None, str | None]] = []
        if self.settings.storage:
            found.append((self.settings.storage, None, profile))
        for entry in contexts.remembered():
            if entry.local:  # read through the local cloud, and only while one runs
                if running is not None:
                    found.append((entry.storage, running, None))
            else:
                found.append((entry.storage, None, profile or entry.profile))
        deployed = infra.read_profile()
        if deployed is not None:
            found.append((deployed.storage, None, profile))
        if running is not None:
            found.append((running.storage, running, None))
        unique: dict[str, tuple[str, LocalCloud | None, str | None]] = {}
        for root, local, named in found:
            key = root.rstrip("/")
            # The local cloud's root (SPOTCTL_STORAGE after `spotctl local env` names it too) is read
            # as the local context: through its endpoint, whatever the shell's AWS settings say.
            if key not in unique or (local is not None and unique[key][1] is None):
                unique[key] = (root, local, named)
        return list(unique.values())

    def would_find(self, storage: str) -> bool:
        """Whether a command given no flags (a new invocation: no --storage, no --local) would look under
        `storage`."""
        fresh = App(self.settings)
        return storage.rstrip("/") in {root.rstrip("/") for root, _, _ in fresh._candidates(None, None)}

    def contexts(self, storage: str | None, profile: str | None) -> tuple[list[Context], list[Unreachable]]:
        """The contexts a command reads, each with its job ids listed, and those that could not be
        read. Given --storage or --local: that one, and an error reading it is the command's."""
        candidates = self._candidates(storage, profile)
        if not candidates:
            raise UserError(
                "no storage root given, none launched into from this machine or deployed, and no local cloud runs",
                contexts.NO_CONTEXT_HINT,
            )
        found = [self._context(root, local, named) for root, local, named in candidates]
        if storage or self.local is not None:
            [only] = found
            only.store.check()
            only.job_ids = only.store.job_ids()
            return found, []
        unreachable = contexts.reach(found, error_line)
        return found, unreachable

    def locate(self, job_id: str, storage: str | None, profile: str | None) -> tuple[Context, str]:
        """The context holding JOB (its id or a unique prefix) and its whole id. A local context
        found becomes this invocation's local cloud, as if --local had been given."""
        found, unreachable = self.contexts(storage, profile)
        context, whole = contexts.locate(found, job_id, unreachable)
        if context.local and self.local is None:
            self.local = self.running
        return context, whole

    def load_job(self, job_file: str, region: str | None = None) -> JobSpec:
        """The job file, validated, with what it leaves out taken from the local cloud (under --local) or
        from the stack `spotctl infra deploy` recorded: storage, instance profile, security group.
        `region` (--region) replaces the file's before those are chosen: they are regional. What was
        filled in, and from where, is kept in `filled_in`; the file's warnings in `job_warnings`."""
        from trainer.job.spec_file import load_checked

        def defaults(data: dict) -> dict:
            found, source = self.job_defaults({**data, "region": region} if region else data)
            self.filled_in = {path: source for path in _missing_paths(data, found)} | _from_recipe(data)
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


def _from_recipe(data: dict) -> dict[str, str]:
    """The dotted paths `train.recipe` sets because the file left them out -> "recipe NAME"."""
    from trainer.job.spec import RECIPES

    train = data.get("train") if isinstance(data, dict) else None
    name = train.get("recipe") if isinstance(train, dict) else None
    if not isinstance(name, str) or name not in RECIPES:
        return {}
    return {path: f"recipe {name}" for path in _missing_paths(train, RECIPES[name], "train.")}


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
