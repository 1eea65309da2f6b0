"""Running a sweep: launching it, and the driver's loop (under the lease, stepping the trials' jobs)."""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import PriceSource
from orchestrator.errors import UserError
from orchestrator.jobs import caretaker
from orchestrator.jobs.launch import launch, new_job_id, plan_launch
from orchestrator.jobs.preflight import before_boot, refuse_problems
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.watch import Watcher, WatchOptions
from orchestrator.sweeps.driver import Driver, Launcher, Pass
from orchestrator.sweeps.lease import DriverLease
from orchestrator.sweeps.spec import Sweep, dump_sweep
from orchestrator.sweeps.study import SweepStore, open_study
from trainer.job import layout


def launcher(cloud_for: Callable[[str], Cloud], prices: Callable[[Cloud], PriceSource], store: JobStore) -> Launcher:
    """Launch a trial's job as `spotctl launch` does: the plan, the checks before a boot, then the job."""

    def launch_trial(spec, job_id: str) -> None:
        cloud = cloud_for(spec.region)
        plan = plan_launch(spec, cloud, prices(cloud), job_id=job_id)
        refuse_problems(before_boot(spec, cloud, plan.offers))
        launch(plan, cloud, store)

    return launch_trial


def create_sweep(store: SweepStore, sweep: Sweep) -> str:
    """Write the sweep under a new id (create-only); its id."""
    store.jobs.check()
    sweep_id = new_job_id(sweep.name)
    try:
        store.write_sweep(sweep_id, dump_sweep(sweep))
    except FileExistsError:
        raise UserError(f"sweep {sweep_id} already exists", "launch it again for a new id") from None
    return sweep_id


class DrivenElsewhere(UserError):
    def __init__(self, sweep_id: str, holder: str | None, until: str | None):
        super().__init__(
            f"sweep {sweep_id} is being advanced by another driver ({holder}, lease until {until})",
            "let it run (`spotctl sweep status` shows its progress), or stop that driver; its lease then expires within 2 minutes",
        )


def drive(
    driver: Driver,
    lease: DriverLease,
    once: bool,
    on_pass: Callable[[Pass], None] = lambda p: None,
    sleep: Callable[[float], None] = time.sleep,
    watch_options: WatchOptions | None = None,
) -> Pass:
    """Advance the sweep under its lease: once, or (watch) until it is done, stepping its trials' jobs
    (recovery, retries, budget stops) before each pass like `spotctl watch`."""
    options = watch_options or WatchOptions(poll_s=driver.poll_s)
    # The watch's leases on the trials' jobs: `spotctl status` says this driver looks after them.
    watcher = Watcher(
        driver.store.jobs, [], driver.clouds, driver.prices, options, lease=caretaker.Lease(options.poll_s)
    )
    try:
        while True:
            started = time.monotonic()
            other = lease.take()
            if other is not None:
                raise DrivenElsewhere(driver.sweep_id, other.holder, other.expires_at)
            driver.study = driver.study or open_study(driver.store, driver.sweep_id, driver.sweep)
            for trial in driver.study.get_trials(deepcopy=False):
                job_id = layout.trial_job(driver.sweep_id, trial.number)
                if job_id not in watcher.job_ids and driver.store.jobs.read_record(job_id) is not None:
                    watcher.job_ids.append(job_id)
            if watcher.job_ids:
                watcher.poll()  # the trials' jobs: recovered, retried, stopped like under `spotctl watch`
            result = driver.advance()
            on_pass(result)
            if once or result.done:
                return result
            sleep(max(0.0, driver.poll_s - (time.monotonic() - started)))
    finally:
        watcher.release()
        lease.release()
