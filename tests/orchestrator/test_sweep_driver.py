"""The sweep driver against a moto server, with the real launch code: trials are ordinary jobs, the
study continues on another storage client after the driver died mid-pass, nothing launches twice,
and a trial the pruner rejects is stopped gracefully. The trainer's side is played by writing what
it writes (metrics parts, final.json)."""

from __future__ import annotations

import json

import boto3
import pytest
from optuna.trial import TrialState

from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import FixedPrices
from orchestrator.jobs.record import JobStore
from orchestrator.sweeps.driver import Driver
from orchestrator.sweeps.lease import DriverLease
from orchestrator.sweeps.plot import sweep_plots
from orchestrator.sweeps.run import DrivenElsewhere, create_sweep, drive, launcher
from orchestrator.sweeps.spec import load_sweep
from orchestrator.sweeps.status import sweep_status
from orchestrator.sweeps.study import SweepStore
from tests.cloud import EXAMPLE, MARKET, ON_DEMAND, STORAGE
from trainer.job import layout
from trainer.job.documents import Final


class Died(BaseException):
    """The driver's process ends mid-pass (kill -9, a closed laptop)."""


def _sweep_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"""name: sw
job: {EXAMPLE}
search:
  train.optimizer.lr: {{float: [0.0001, 0.1], log: true}}
  train.batch_size: {{choice: [16, 32]}}
objective: {{metric: val_acc1}}
trials: 4
parallel: 2
sampler: random
seed: 0
pruner: {{kind: median, startup_trials: 1}}
"""
    )
    return path


def _driver(sweep, sweep_id, launch=None):
    store = JobStore(STORAGE)  # a new storage client each time: nothing shared in memory
    clouds = lambda region: Cloud(region)  # noqa: E731
    prices = lambda cloud: FixedPrices(MARKET, ON_DEMAND)  # noqa: E731
    return Driver(SweepStore(store), sweep_id, sweep, clouds, prices, launch or launcher(clouds, prices, store))


def _trainer_reports(job_id: str, values: list[float], outcome: str | None = None) -> None:
    store = JobStore(STORAGE)
    body = "".join(
        json.dumps({"kind": "epoch", "attempt": 1, "epoch": e + 1, "val_acc1": v}) + "\n" for e, v in enumerate(values)
    )
    store.write(job_id, layout.metrics_part(1, 1), body.encode())
    if outcome:
        store.write(job_id, layout.FINAL, Final.dump({"outcome": outcome, "attempt": 1}))


def _instances_by_job() -> dict[str, int]:
    found: dict[str, int] = {}
    for reservation in boto3.client("ec2", region_name="us-east-1").describe_instances()["Reservations"]:
        for instance in reservation["Instances"]:
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            found[tags.get("spotctl:job")] = found.get(tags.get("spotctl:job"), 0) + 1
    return found


def test_a_driver_killed_mid_pass_is_continued_by_another(account, tmp_path, spotctl):
    sweep = load_sweep(_sweep_file(tmp_path))
    sweep_id = create_sweep(SweepStore(JobStore(STORAGE)), sweep)
    # Another driver holds the sweep: this one stands aside, launching nothing.
    other = DriverLease(JobStore(STORAGE).storage, sweep_id, holder="elsewhere")
    assert other.take() is None
    with pytest.raises(DrivenElsewhere, match="elsewhere"):
        drive(_driver(sweep, sweep_id), DriverLease(JobStore(STORAGE).storage, sweep_id), once=True)
    assert _instances_by_job() == {}
    other.release()
    first = _driver(sweep, sweep_id).advance()
    assert first.launched == [0, 1]
    t0, t1 = layout.trial_job(sweep_id, 0), layout.trial_job(sweep_id, 1)
    assert _instances_by_job() == {t0: 1, t1: 1}

    # t0 finishes; the next driver tells the study, asks trial 2 and dies before its job is written.
    _trainer_reports(t0, [0.5, 0.8], "succeeded")

    def dies(spec, job_id):
        raise Died

    with pytest.raises(Died):
        _driver(sweep, sweep_id, launch=dies).advance()

    # Another driver, another client: the study is the same; trial 2 is launched with its asked values, once.
    again = _driver(sweep, sweep_id)
    result = again.advance()
    trials = again.study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[0].state is TrialState.COMPLETE and trials[0].value == 0.8
    assert result.launched == [2]
    t2 = layout.trial_job(sweep_id, 2)
    assert JobStore(STORAGE).read_record(t2) is not None
    stored = JobStore(STORAGE).read_bytes(t2, layout.JOB_FILE).decode()
    assert f"batch_size: {trials[2].params['train.batch_size']}" in stored
    assert len({t.params["train.optimizer.lr"] for t in trials}) == 3  # each trial its own draw, restarts or not
    assert _instances_by_job() == {t0: 1, t1: 1, t2: 1}
    # A further pass launches nothing new while two trials run.
    assert _driver(sweep, sweep_id).advance().launched == []
    assert _instances_by_job() == {t0: 1, t1: 1, t2: 1}

    # t1 is worse than t0 at epoch 1: pruned, asked to stop (control/stop), told PRUNED once it ended.
    _trainer_reports(t1, [0.1])
    pruning = _driver(sweep, sweep_id)
    assert pruning.advance().pruned == [1]
    assert JobStore(STORAGE).read_bytes(t1, layout.CONTROL_STOP) is not None
    _trainer_reports(t1, [0.1], "stopped")
    result = drive(_driver(sweep, sweep_id), DriverLease(JobStore(STORAGE).storage, sweep_id), once=True)
    study = _driver(sweep, sweep_id)
    study.advance()
    states = {t.number: t.state for t in study.study.get_trials()}
    assert states[1] is TrialState.PRUNED
    assert 3 in states  # the pruned trial's place went to the next trial
    assert result is not None

    # What `spotctl sweep status` shows of it: one row per trial, the best, the cost as the trials' sum.
    status = sweep_status(SweepStore(JobStore(STORAGE)), sweep_id, sweep, study.clouds, study.prices)
    assert [(t["trial"], t["study_state"]) for t in status["trials"]][:3] == [
        (0, "complete"),
        (1, "pruned"),
        (2, "running"),
    ]
    assert status["trials"][1]["pruned_at_epoch"] == 1 and status["trials"][0]["best_metric"] == 0.8
    assert status["best"]["trial"] == 0 and status["best"]["job_id"] == t0
    assert status["cost"]["total_usd"] == pytest.approx(sum(t["cost_usd"] or 0 for t in status["trials"]))
    assert sweep_plots(status)[0] == "val_acc1 vs trial"
    code, out, err = spotctl("sweep", "status", sweep_id, "--storage", STORAGE)
    assert code == 0, err
    assert f"best: trial 0 ({t0}): val_acc1 0.8 with train.optimizer.lr=" in out and "(the sum of its trials)" in out
    assert "val_acc1 vs trial" in out and "val_acc1 vs train.optimizer.lr" in out
    code, out, err = spotctl("sweep", "status", sweep_id, "--storage", STORAGE, "--json")
    stable = lambda rows: [(r["trial"], r["job_id"], r["study_state"], r["params"]) for r in rows]  # noqa: E731
    assert code == 0 and stable(json.loads(out)["trials"]) == stable(status["trials"])
    code, out, err = spotctl("status", "--storage", STORAGE)
    assert code == 0 and f"sweep {sweep_id}" in out and "trials" in out, err

    # `spotctl sweep stop`: the running trials are asked to stop, and no trial is launched any more.
    code, out, err = spotctl("sweep", "stop", sweep_id, "--storage", STORAGE)
    assert code == 0, err
    assert (
        out.splitlines()[0]
        == f"stopping sweep {sweep_id}: no new trials; asked 2 running trial(s) to checkpoint and stop"
    )
    assert _driver(sweep, sweep_id).advance().launched == []
