"""What `spotctl sweep status` shows: each trial (its values, state, attempts, best metric, cost), the
best trial with its artifacts, and the sweep's cost (the sum of its trials') with savings."""

from __future__ import annotations

from collections.abc import Callable

from optuna.trial import TrialState

from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import PriceSource
from orchestrator.jobs.cost import cost_of
from orchestrator.jobs.views import read_views
from orchestrator.sweeps.driver import ENDED, PRUNED
from orchestrator.sweeps.lease import DriverLease
from orchestrator.sweeps.spec import Sweep
from orchestrator.sweeps.study import SweepStore, epoch_values, open_study
from trainer.job import layout
from trainer.job.documents import RECOVERABLE_ENDS


def sweep_status(
    store: SweepStore,
    sweep_id: str,
    sweep: Sweep,
    clouds: Callable[[str], Cloud],
    prices: Callable[[Cloud], PriceSource],
) -> dict:
    study = open_study(store, sweep_id, sweep)
    trials = study.get_trials(deepcopy=False)
    job_ids = [layout.trial_job(sweep_id, t.number) for t in trials]
    views = {v.job_id: v for v in read_views(store.jobs, job_ids, clouds, details=True)}
    objective = sweep.settings.objective
    rows, total, on_demand, known = [], 0.0, 0.0, True
    for trial in trials:
        job_id = layout.trial_job(sweep_id, trial.number)
        view = views[job_id]
        cost = cost_of(view, prices(clouds(view.record.region))) if view.record else None
        values = epoch_values(store.jobs, job_id, objective.metric) if view.record else {}
        best = (max if objective.maximize else min)(values.values()) if values else None
        if cost is not None:
            # The sweep's cost is the sum of its trials' as shown (each rounded to the micro-dollar), so
            # the table adds up to its total to the last digit.
            total += round(cost.total_usd, 6)
            if cost.on_demand_usd is None:
                known = False
            else:
                on_demand += round(cost.on_demand_usd, 6)
        rows.append(
            {
                "trial": trial.number,
                "job_id": job_id,
                "params": trial.params,
                "study_state": _state(trial),
                "job_state": str(view.state) if view.record else None,
                "attempts": len(view.record.attempts) if view.record else 0,
                "interruptions": sum(1 for a in view.record.attempts if a.end_reason in RECOVERABLE_ENDS)
                if view.record
                else 0,
                "value": trial.value if trial.state is TrialState.COMPLETE else None,
                "best_metric": best,
                "epochs": values,
                "pruned_at_epoch": trial.user_attrs.get(PRUNED),
                "ended": trial.user_attrs.get(ENDED),
                "cost_usd": None if cost is None else round(cost.total_usd, 6),
                "on_demand_usd": None if cost is None or cost.on_demand_usd is None else round(cost.on_demand_usd, 6),
            }
        )
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    best_trial = None
    if complete:
        winner = study.best_trial
        view = views[layout.trial_job(sweep_id, winner.number)]
        manifest = view.artifacts
        best_trial = {
            "trial": winner.number,
            "job_id": layout.trial_job(sweep_id, winner.number),
            "value": winner.value,
            "params": winner.params,
            "artifacts": sorted(manifest.files) if manifest is not None else [],
            "artifacts_url": store.jobs.url(view.job_id, layout.ARTIFACTS),
        }
    lease = DriverLease(store.storage, sweep_id).current()
    finished = [t for t in trials if t.state.is_finished()]
    return {
        "sweep_id": sweep_id,
        "objective": {"metric": objective.metric, "direction": "maximize" if objective.maximize else "minimize"},
        "trials_planned": sweep.settings.trials,
        "parallel": sweep.settings.parallel,
        "sampler": sweep.settings.sampler,
        "pruner": sweep.settings.pruner.kind,
        "budget_usd": sweep.settings.budget_usd,
        "state": _sweep_state(store, sweep_id, sweep, trials, finished),
        "driver": lease.holder if lease else None,
        "trials": rows,
        "best": best_trial,
        "cost": {
            "total_usd": round(total, 6),
            "on_demand_usd": round(on_demand, 6) if known and rows else None,
            "savings": round(1 - total / on_demand, 4) if known and on_demand else None,
        },
    }


def _state(trial) -> str:
    return {
        TrialState.RUNNING: "running",
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.WAITING: "waiting",
    }[trial.state]


def _sweep_state(store: SweepStore, sweep_id: str, sweep: Sweep, trials, finished) -> str:
    running = len(trials) - len(finished)
    stop = store.stop_requested(sweep_id)
    if running:
        return "stopping" if stop else "running"
    if stop or len(trials) >= sweep.settings.trials:
        return "stopped" if stop and len(trials) < sweep.settings.trials else "done"
    return "waiting"  # trials left to launch: the next `spotctl sweep resume` (or a --watch) launches them
