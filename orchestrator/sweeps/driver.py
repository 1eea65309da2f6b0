"""Advancing a sweep: one pass reports what the trials' jobs did to the study, prunes, tells the study
of trials that ended, and launches the next trials (ask-and-tell).

Trial k is the job `<sweep id>-t<k>` (layout.trial_job), launched by the ordinary launch code and
recovered like any job (jobs.step: this driver's `follow` runs a Watcher over its trials, and the
controller steps them too where one is deployed). The driver asks and tells, nothing more:

- **Interruption is not failure.** A trial's job that is interrupted, launching or running is left to
  its recovery; the study sees the trial RUNNING until its job is terminal, whatever the attempts.
- **Idempotent.** A trial number names its job, and the job's files are create-only, so a driver
  restarted after `ask` launches the trial the study holds RUNNING without a job, never a second one.
  The pass runs only under the sweep's lease (sweeps.lease): two drivers never ask at once.
- **Pruning** reports each finished epoch's objective (`Trial.report`), and a trial the pruner
  rejects is asked to stop (control/stop): it checkpoints and ends; the study then hears PRUNED.
- **The budget** (`budget_usd`) first stops new trials (the trials' spend plus what the running ones
  project to their end plus one more trial's mean cost would pass it), then stops the running ones
  when what they spend before the next pass would pass it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import optuna
from optuna.trial import TrialState

from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import PriceSource
from orchestrator.errors import UserError
from orchestrator.jobs.cost import JobCost, cost_of
from orchestrator.jobs.state import JobView
from orchestrator.jobs.stop import request_stop
from orchestrator.jobs.views import read_views
from orchestrator.sweeps.spec import Sweep
from orchestrator.sweeps.study import SweepStore, epoch_values, open_study, sampler_for
from trainer.job import layout
from trainer.job.documents import JobState
from trainer.job.spec import JobSpec

log = logging.getLogger(__name__)

PRUNED = "pruned"  # the trial's user attribute: the epoch at which the sweep stopped it
ENDED = "ended"  # the trial's user attribute: why it ended other than by succeeding
JOB_ID = "job_id"

Launcher = Callable[[JobSpec, str], None]  # (the trial's job spec, its job id): launch it (jobs.launch)


@dataclass
class Pass:
    """What one pass did and found."""

    launched: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)
    told: dict[int, str] = field(default_factory=dict)  # trial -> complete/pruned/fail
    budget_stopped: list[int] = field(default_factory=list)
    spent_usd: float = 0.0
    done: bool = False
    messages: list[str] = field(default_factory=list)


@dataclass
class Driver:
    store: SweepStore
    sweep_id: str
    sweep: Sweep
    clouds: Callable[[str], Cloud]
    prices: Callable[[Cloud], PriceSource]
    launch_trial: Launcher
    poll_s: float = 30.0
    study: optuna.Study | None = None

    def advance(self) -> Pass:
        """One pass (the caller holds the sweep's lease)."""
        study = self.study = self.study or open_study(self.store, self.sweep_id, self.sweep)
        done = Pass()
        trials = study.get_trials(deepcopy=False)
        open_trials = [t for t in trials if t.state is TrialState.RUNNING]
        job_ids = [layout.trial_job(self.sweep_id, t.number) for t in trials]
        views = {v.job_id: v for v in read_views(self.store.jobs, job_ids, self.clouds)}
        costs = {job_id: self._cost(view) for job_id, view in views.items()}
        done.spent_usd = sum(c.total_usd for c in costs.values() if c is not None)
        stopping = self.store.stop_requested(self.sweep_id)
        metric = self.sweep.settings.objective.metric
        for trial in open_trials:
            job_id = layout.trial_job(self.sweep_id, trial.number)
            view = views[job_id]
            if view.record is None:
                continue  # asked, never launched: launched below (or ended, when no more may start)
            values = epoch_values(self.store.jobs, job_id, metric)
            self._report(study, trial, values, view, done)
            if view.state.terminal:
                self._tell(study, trial, values, view, done)
        # The budget: first no new trials, then stop the running ones.
        budget = self.sweep.settings.budget_usd
        running = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if views.get(layout.trial_job(self.sweep_id, t.number)) is not None
            and views[layout.trial_job(self.sweep_id, t.number)].record is not None
        ]
        rate = sum(
            (costs[layout.trial_job(self.sweep_id, t.number)] or _NO_COST).current_usd_per_hour or 0.0 for t in running
        )
        if budget is not None and running and done.spent_usd + rate * 2 * self.poll_s / 3600 >= budget:
            for trial in running:
                job_id = layout.trial_job(self.sweep_id, trial.number)
                if views[job_id].record.stop_requested_at is None:
                    request_stop(
                        self.store.jobs,
                        job_id,
                        f"the sweep's budget ${budget:g} is reached",
                        JobState.BUDGET_EXCEEDED,
                    )
                    done.budget_stopped.append(trial.number)
            done.messages.append(f"the sweep's budget ${budget:g} is reached: running trials stopped")
            stopping = True
        elif budget is not None and not self._affordable(study, costs, done.spent_usd, budget):
            if not stopping:
                done.messages.append(f"no new trial: one more would pass the sweep's budget ${budget:g}")
            stopping = True
        # Launch: first a trial asked but not launched (a driver died in between), then new ones.
        active = len(running)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job_id = layout.trial_job(self.sweep_id, trial.number)
            if job_id in views and views[job_id].record is not None:
                continue
            if stopping:
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                done.told[trial.number] = "fail"
                continue
            self._launch(study, trial.number, trial.params, done)
            active += 1
        while not stopping and active < self.sweep.settings.parallel and len(study.trials) < self.sweep.settings.trials:
            study.sampler = sampler_for(self.sweep, len(study.trials))
            trial = study.ask({p.path: p.distribution() for p in self.sweep.params})
            trial.set_user_attr(JOB_ID, layout.trial_job(self.sweep_id, trial.number))
            self._launch(study, trial.number, trial.params, done)
            active += 1
        remaining = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        done.done = not remaining and (stopping or len(study.trials) >= self.sweep.settings.trials)
        return done

    # ------------------------------------------------------------------------------------------ parts
    def _cost(self, view: JobView) -> JobCost | None:
        if view.record is None:
            return None
        return cost_of(view, self.prices(self.clouds(view.record.region)))

    def _affordable(self, study, costs: dict[str, JobCost | None], spent: float, budget: float) -> bool:
        """Whether one more trial fits: what is spent, the running trials' projections to their end (their
        cost so far when they have none yet), and a finished trial's mean cost (none yet: nothing)."""
        finished = [
            costs.get(layout.trial_job(self.sweep_id, t.number))
            for t in study.get_trials(deepcopy=False)
            if t.state.is_finished()
        ]
        finished = [c.total_usd for c in finished if c is not None]
        mean = sum(finished) / len(finished) if finished else 0.0
        projected = 0.0
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            cost = costs.get(layout.trial_job(self.sweep_id, trial.number))
            if cost is not None:
                projected += (cost.projected_total_usd or cost.total_usd) - cost.total_usd
        return spent + projected + mean <= budget

    def _report(self, study, frozen, values: dict[int, float], view: JobView, done: Pass) -> None:
        trial = optuna.trial.Trial(study, frozen._trial_id)
        for epoch, value in values.items():
            if epoch not in frozen.intermediate_values:
                trial.report(value, epoch)
        if PRUNED in frozen.user_attrs or view.state.terminal or not values:
            return
        if view.record.stop_requested_at or not trial.should_prune():
            return
        epoch = max(values)
        job_id = view.job_id
        request_stop(self.store.jobs, job_id, f"pruned by sweep {self.sweep_id} at epoch {epoch}")
        trial.set_user_attr(PRUNED, epoch)
        done.pruned.append(frozen.number)
        done.messages.append(f"trial {frozen.number} ({job_id}) pruned at epoch {epoch}: stopping it")

    def _tell(self, study, frozen, values: dict[int, float], view: JobView, done: Pass) -> None:
        fresh = study._storage.get_trial(frozen._trial_id)  # the user attributes set this pass
        state = view.state
        if PRUNED in fresh.user_attrs:
            study.tell(frozen.number, state=TrialState.PRUNED)
            done.told[frozen.number] = "pruned"
            return
        if state is JobState.SUCCEEDED and values:
            best = (max if self.sweep.settings.objective.maximize else min)(values.values())
            study.tell(frozen.number, best)
            done.told[frozen.number] = "complete"
            done.messages.append(
                f"trial {frozen.number} ({view.job_id}) finished: {self.sweep.settings.objective.metric} {best:.4g}"
            )
            return
        reason = view.record.outcome_reason or (view.final.error if view.final else None) or str(state)
        optuna.trial.Trial(study, frozen._trial_id).set_user_attr(ENDED, f"{state}: {reason}")
        study.tell(frozen.number, state=TrialState.FAIL)
        done.told[frozen.number] = "fail"
        done.messages.append(f"trial {frozen.number} ({view.job_id}) ended {state}: {reason}")

    def _launch(self, study, number: int, params: dict, done: Pass) -> None:
        job_id = layout.trial_job(self.sweep_id, number)
        try:
            self.launch_trial(self.sweep.trial_spec(params), job_id)
        except UserError as exc:  # the job was refused (no capacity, a check before boot): the trial failed
            trial = optuna.trial.Trial(
                study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            )
            trial.set_user_attr(ENDED, f"not launched: {exc.message}")
            if self.store.jobs.read_record(job_id) is None:
                study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
                done.told[number] = "fail"
            done.messages.append(f"trial {number} ({job_id}) could not be launched: {exc.message}")
            return
        done.launched.append(number)
        done.messages.append(f"trial {number}: launched {job_id} ({_params(params)})")


_NO_COST = JobCost([], 0.0, None, None, 0, 0.0)


def _params(params: dict) -> str:
    return ", ".join(f"{path.rsplit('.', 1)[-1]}={_value(v)}" for path, v in params.items())


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def now() -> datetime:
    return datetime.now(timezone.utc)
