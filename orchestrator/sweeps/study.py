"""The sweep's Optuna study: where it lives (jobs under the sweep's prefix), its sampler and pruner,
and what a trial's job reported per epoch."""

from __future__ import annotations

import json
import logging

import optuna

from orchestrator.jobs.record import JobStore
from orchestrator.sweeps.journal import StorageJournal
from orchestrator.sweeps.spec import Sweep
from trainer.job import layout
from trainer.job.spec_file import SpecError

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver says what happens, once, in its own words
log = logging.getLogger(__name__)


class SweepStore:
    """The sweeps under one storage root (next to its jobs, through the same JobStore)."""

    def __init__(self, jobs: JobStore):
        self.jobs = jobs
        self.storage = jobs.storage

    def sweep_ids(self) -> list[str]:
        return self.storage.list(layout.SWEEPS)

    def write_sweep(self, sweep_id: str, body: bytes) -> None:
        self.storage.write_bytes(layout.in_sweep(sweep_id, layout.SWEEP_FILE), body, create_only=True)

    def read_sweep(self, sweep_id: str) -> Sweep:
        from orchestrator.sweeps.spec import stored_sweep

        url = self.storage.url_of(layout.in_sweep(sweep_id, layout.SWEEP_FILE))
        try:
            return stored_sweep(self.storage.read_bytes(layout.in_sweep(sweep_id, layout.SWEEP_FILE)), url)
        except FileNotFoundError:
            from orchestrator.errors import UserError
            from trainer.job.spec import did_you_mean

            raise UserError(
                f"no sweep '{sweep_id}' under {self.jobs.root}{did_you_mean(sweep_id, self.sweep_ids())}",
                "`spotctl sweep status` with no sweep lists them",
            ) from None
        except SpecError as exc:
            from orchestrator.errors import UserError

            raise UserError(f"{url} cannot be read: {exc}", "restore it, or launch the sweep again") from None

    def stop_requested(self, sweep_id: str) -> bool:
        return self.storage.exists(layout.in_sweep(sweep_id, layout.SWEEP_STOP))

    def request_stop(self, sweep_id: str, reason: str) -> None:
        self.storage.write_bytes(layout.in_sweep(sweep_id, layout.SWEEP_STOP), json.dumps({"reason": reason}).encode())

    def clear_stop(self, sweep_id: str) -> None:
        if self.stop_requested(sweep_id):
            self.storage.delete(layout.in_sweep(sweep_id, layout.SWEEP_STOP))


def open_study(store: SweepStore, sweep_id: str, sweep: Sweep) -> optuna.Study:
    """The study, created on first use, else replayed from its journal (any machine, any driver)."""
    settings = sweep.settings
    sampler = sampler_for(sweep, 0)
    pruner_spec = settings.pruner
    if pruner_spec.kind == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=pruner_spec.startup_trials, n_warmup_steps=pruner_spec.warmup_epochs
        )
    elif pruner_spec.kind == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs(sweep))
    else:
        pruner = optuna.pruners.NopPruner()
    storage = optuna.storages.JournalStorage(StorageJournal(store.storage, sweep_id))
    return optuna.create_study(
        storage=storage,
        study_name=sweep_id,
        direction="maximize" if settings.objective.maximize else "minimize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def sampler_for(sweep: Sweep, trial: int):
    """The sampler that chooses trial `trial`'s values. Seeded by (the sweep's seed, the trial number), not
    once per process: a restarted driver with the sweep's seed would otherwise draw the values it drew
    before (a seeded stream starts over) and repeat trials."""
    settings = sweep.settings
    seed = None if settings.seed is None else settings.seed + trial
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler({p.path: p.grid() for p in sweep.params}, seed=seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def max_epochs(sweep: Sweep) -> int:
    for param in sweep.params:
        if param.path == "train.epochs":
            return int(max(param.grid()) if param.kind == "choice" else param.high)
    return sweep.base.train.epochs


def epoch_values(jobs: JobStore, job_id: str, metric: str) -> dict[int, float]:
    """The trial's value of `metric` at each epoch it finished (1-based), from its metrics parts. An
    epoch trained twice (an interruption after it and before its checkpoint) counts as the later
    attempt reported it: that is the run that continued."""
    values: dict[int, tuple[int, float]] = {}
    for name in sorted(jobs.storage.list(layout.in_job(job_id, layout.METRICS))):
        attempt = layout.attempt_of_metrics(name)
        if attempt is None:
            continue
        body = jobs.read_bytes(job_id, f"{layout.METRICS}/{name}") or b""
        for line in body.decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            value, epoch = record.get(metric), record.get("epoch")
            if record.get("kind") != "epoch" or not isinstance(epoch, int) or not isinstance(value, int | float):
                continue
            if epoch not in values or values[epoch][0] <= attempt:
                values[epoch] = (attempt, float(value))
    return {epoch: value for epoch, (_, value) in sorted(values.items())}
