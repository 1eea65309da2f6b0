"""`spotctl sweep launch|status|stop|resume`: an Optuna search whose trials are spotctl jobs.

Without `--watch`, `sweep launch` launches the first `parallel` trials and returns; the sweep then
advances each time someone runs `spotctl sweep resume SWEEP` (one pass) or `--watch` (until it is
done): the trials' jobs themselves are recovered by the controller where one is deployed, or by that
driver's own steps, like `spotctl watch`.
"""

from __future__ import annotations

import json

import click

from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.errors import UserError
from orchestrator.jobs.contexts import remember
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.stop import request_stop
from orchestrator.jobs.views import read_views


@click.group("sweep")
def command() -> None:
    """Hyper-parameter sweeps: an Optuna study whose trials are spot jobs that resume, never fail, when interrupted."""


def _require_optuna() -> None:
    """Optuna is the `sweep` extra: without it, one line saying how to add it, not an ImportError."""
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise UserError("spotctl sweep needs Optuna, which is not installed", "pip install 'spotctl[sweep]'")


def _driver(app: App, store: JobStore, sweep_id: str, sweep, clouds, prices, poll_s: float):
    from orchestrator.sweeps.driver import Driver
    from orchestrator.sweeps.run import launcher
    from orchestrator.sweeps.study import SweepStore

    return Driver(SweepStore(store), sweep_id, sweep, clouds, prices, launcher(clouds, prices, store), poll_s=poll_s)


def _say(result) -> None:
    for message in result.messages:
        click.echo(message)


@command.command("launch")
@click.argument("sweep_file", metavar="SWEEP.yaml")
@click.option("--watch", "then_watch", is_flag=True, help="Then drive the sweep until every trial has ended.")
@options.poll_option
@options.local_starting_option
@options.profile_option
@click.pass_obj
def launch_command(app: App, sweep_file: str, then_watch: bool, poll_s: float, profile: str | None) -> int:
    """Validate SWEEP.yaml, then launch its first trials (each an ordinary job `<sweep>-t<k>`)."""
    _require_optuna()
    from orchestrator.sweeps.lease import DriverLease
    from orchestrator.sweeps.run import create_sweep, drive
    from orchestrator.sweeps.spec import load_sweep
    from orchestrator.sweeps.study import SweepStore

    def defaults(data: dict) -> dict:
        return app.job_defaults(data)[0]

    sweep = load_sweep(sweep_file, defaults=defaults)
    cloud = app.cloud(sweep.base.region, profile)
    store = JobStore(sweep.base.storage, **cloud.storage_options)
    sweep_id = create_sweep(SweepStore(store), sweep)
    remember(sweep.base.storage, local=app.local is not None, profile=profile)
    click.echo(f"sweep {sweep_id}: {sweep.settings.trials} trials, {sweep.settings.parallel} at a time")
    driver = _driver(app, store, sweep_id, sweep, app.clouds(profile), app.prices, poll_s)
    result = drive(driver, DriverLease(store.storage, sweep_id), once=not then_watch, on_pass=_say)
    flags = " --local" if app.local is not None else ""
    if not then_watch:
        click.echo(
            f"advance it:  spotctl sweep resume {sweep_id}{flags} --watch   (launches the next trials as these end)"
        )
        click.echo(f"             spotctl sweep status {sweep_id}{flags}")
    return 0 if result.done or not then_watch else 1


def _locate(app: App, sweep_id: str, storage: str | None, profile: str | None):
    from orchestrator.sweeps.study import SweepStore

    found, unreachable = app.contexts(storage, profile)
    for context in found:
        sweeps = SweepStore(context.store)
        if sweep_id in sweeps.sweep_ids():
            return context, sweeps
    ids = [s for context in found for s in SweepStore(context.store).sweep_ids()]
    matches = [s for s in ids if s.startswith(sweep_id)]
    if len(matches) == 1:
        return _locate(app, matches[0], storage, profile)
    from trainer.job.spec import did_you_mean

    raise UserError(
        f"no sweep '{sweep_id}' found{did_you_mean(sweep_id, ids)}",
        "`spotctl sweep status` lists the sweeps; give --storage or --local where it lives",
    )


@command.command("status")
@click.argument("sweep_id", metavar="SWEEP", required=False)
@options.storage_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def status_command(app: App, sweep_id: str | None, storage: str | None, profile: str | None, as_json: bool) -> int:
    """The sweep's trials (values, state, attempts, best metric, cost), its best trial and plots; no SWEEP: the sweeps."""
    _require_optuna()
    from orchestrator.sweeps.plot import sweep_plots
    from orchestrator.sweeps.status import sweep_status
    from orchestrator.sweeps.study import SweepStore

    if sweep_id is None:
        found, _ = app.contexts(storage, profile)
        ids = sorted({s for context in found for s in SweepStore(context.store).sweep_ids()})
        click.echo(json.dumps({"sweeps": ids}, indent=2) if as_json else ("\n".join(ids) or "no sweeps"))
        return 0
    context, sweeps = _locate(app, sweep_id, storage, profile)
    sweep_id = next(s for s in sweeps.sweep_ids() if s.startswith(sweep_id))
    sweep = sweeps.read_sweep(sweep_id)
    status = sweep_status(sweeps, sweep_id, sweep, context.clouds, context.prices)
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
        return 0
    out = render.console()
    headers = [
        "trial",
        "job",
        *[p.path.rsplit(".", 1)[-1] for p in sweep.params],
        "state",
        "attempts",
        status["objective"]["metric"],
        "cost",
    ]
    rows = []
    for row in status["trials"]:
        # A running trial shows its job's state: interrupted, launching, running, stopping.
        state = (row["job_state"] or "asked") if row["study_state"] == "running" else row["study_state"]
        rows.append(
            [
                str(row["trial"]),
                row["job_id"],
                *[_value(row["params"].get(p.path)) for p in sweep.params],
                state,
                str(row["attempts"]),
                "-" if row["best_metric"] is None else f"{row['best_metric']:.4g}",
                "-" if row["cost_usd"] is None else f"${row['cost_usd']:.4f}",
            ]
        )
    done = sum(1 for r in status["trials"] if r["study_state"] != "running")
    out.print(
        render.table(
            headers, rows, title=f"sweep {sweep_id}: {status['state']}, {done}/{status['trials_planned']} trials ended"
        )
    )
    cost = status["cost"]
    saving = (
        f", {cost['savings']:.0%} below on-demand (${cost['on_demand_usd']:.4f})" if cost["savings"] is not None else ""
    )
    budget = f" of ${status['budget_usd']:g}" if status["budget_usd"] else ""
    click.echo(f"cost: ${cost['total_usd']:.4f}{budget} (the sum of its trials){saving}")
    best = status["best"]
    if best:
        values = ", ".join(f"{k}={_value(v)}" for k, v in best["params"].items())
        click.echo(
            f"best: trial {best['trial']} ({best['job_id']}): {status['objective']['metric']} {best['value']:.4g} with {values}"
        )
        click.echo(f"      artifacts: {', '.join(best['artifacts']) or 'none yet'} ({best['artifacts_url']})")
    log_params = {p.path for p in sweep.params if p.log}
    for line in sweep_plots(status, log_params):
        click.echo(line)
    return 0


def _value(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@command.command("stop")
@click.argument("sweep_id", metavar="SWEEP")
@options.storage_option
@options.local_option
@options.profile_option
@click.pass_obj
def stop_command(app: App, sweep_id: str, storage: str | None, profile: str | None) -> int:
    """Launch no more trials and stop the running ones gracefully (each checkpoints first)."""
    _require_optuna()
    from orchestrator.sweeps.study import open_study

    context, sweeps = _locate(app, sweep_id, storage, profile)
    sweep_id = next(s for s in sweeps.sweep_ids() if s.startswith(sweep_id))
    sweep = sweeps.read_sweep(sweep_id)
    sweeps.request_stop(sweep_id, "spotctl sweep stop")
    from optuna.trial import TrialState

    from trainer.job import layout

    study = open_study(sweeps, sweep_id, sweep)
    running = [
        layout.trial_job(sweep_id, t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ]
    stopped = []
    for view in read_views(context.store, running, context.clouds):
        if view.record is not None and not view.state.terminal and not view.record.stop_requested_at:
            request_stop(context.store, view.job_id, f"sweep {sweep_id} stopped")
            stopped.append(view.job_id)
    click.echo(
        f"stopping sweep {sweep_id}: no new trials; asked {len(stopped)} running trial(s) to checkpoint and stop"
    )
    click.echo(f"`spotctl sweep resume {sweep_id}` records their ends in the study")
    return 0


@command.command("resume")
@click.argument("sweep_id", metavar="SWEEP")
@click.option("--watch", "then_watch", is_flag=True, help="Keep driving the sweep until every trial has ended.")
@options.poll_option
@options.storage_option
@options.local_option
@options.profile_option
@click.pass_obj
def resume_command(
    app: App, sweep_id: str, then_watch: bool, poll_s: float, storage: str | None, profile: str | None
) -> int:
    """Advance the sweep: record ended trials, prune, launch the next ones (one pass, or --watch to the end)."""
    _require_optuna()
    from orchestrator.sweeps.lease import DriverLease
    from orchestrator.sweeps.run import drive

    context, sweeps = _locate(app, sweep_id, storage, profile)
    sweep_id = next(s for s in sweeps.sweep_ids() if s.startswith(sweep_id))
    sweep = sweeps.read_sweep(sweep_id)
    driver = _driver(app, context.store, sweep_id, sweep, context.clouds, context.prices, poll_s)
    result = drive(driver, DriverLease(context.store.storage, sweep_id), once=not then_watch, on_pass=_say)
    click.echo(f"sweep {sweep_id}: {'done' if result.done else 'advanced'}; spent ${result.spent_usd:.4f}")
    return 0
