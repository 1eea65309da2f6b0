"""A sweep on the local cloud, end to end: six trials, two at a time, every trial's first attempt
interrupted (a spot notice at step 3) and resumed, trials pruned by the median rule, through
`spotctl sweep launch --watch` alone (no controller: the sweep's driver recovers its trials)."""

from __future__ import annotations

import json

import pytest
import yaml

from testbed import REPO
from tests.e2e.test_local_cloud import local_home, point_aws_tools_at_the_local_cloud

__all__ = ["local_home"]  # the fixture, used by name


@pytest.mark.slow
def test_a_sweep_survives_interruptions_and_prunes_on_the_local_cloud(local_home, tmp_path, spotctl, monkeypatch):
    up = ["local", "up", "--seed", "3", "--interrupt-at-step", "3", "--notice", "3", "--no-controller", "--json"]
    code, out, err = spotctl(*up)
    assert code == 0, err
    try:
        point_aws_tools_at_the_local_cloud(spotctl, monkeypatch)
        code, _, err = spotctl("local", "data", "shapes", "--per-class", "16", "--size", "32")
        assert code == 0, err
        job = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
        job["train"]["epochs"] = 3
        job["train"]["data"]["image_size"] = 32
        job["train"]["checkpoint"] = {"every_steps": 2, "keep": 2}
        job["train"]["export"] = {"formats": ["state_dict"]}
        sweep = {
            "name": "e2e",
            "job": job,
            # Half the grid trains at all (lr 0.003), half does not (1e-7): with seed 3 the grid's order
            # is good, bad, good, bad, bad, good, so the bad ones after the first two are pruned.
            "search": {
                "train.optimizer.lr": {"choice": [0.003, 1e-7]},
                "train.batch_size": {"choice": [16, 32]},
                "train.optimizer.weight_decay": {"choice": [0.0, 0.01]},
            },
            "objective": {"metric": "train_loss", "direction": "minimize"},
            "trials": 6,
            "parallel": 2,
            "sampler": "grid",
            "seed": 3,
            "pruner": {"kind": "median", "startup_trials": 2},
            "budget_usd": 20,
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep))
        code, out, err = spotctl("sweep", "launch", str(path), "--local", "--watch", "--poll", "1")
        assert code == 0, err + out[-3000:]
        sweep_id = out.split()[1].rstrip(":")

        code, out, err = spotctl("sweep", "status", sweep_id, "--local", "--json")
        assert code == 0, err
        status = json.loads(out)
        trials = status["trials"]
        assert [t["trial"] for t in trials] == list(range(6))  # every trial number exactly once
        assert [t["job_id"] for t in trials] == [f"{sweep_id}-t{k}" for k in range(6)]
        assert {t["study_state"] for t in trials} <= {"complete", "pruned"}, trials  # none failed
        resumed = [t for t in trials if t["interruptions"] >= 1 and t["attempts"] >= 2]
        assert len(resumed) >= 2, trials
        assert sum(t["study_state"] == "pruned" for t in trials) >= 1, trials
        assert status["state"] == "done"
        best = status["best"]
        assert best is not None and best["artifacts"], status
        assert status["cost"]["total_usd"] == pytest.approx(sum(t["cost_usd"] for t in trials), abs=1e-5)
        assert status["cost"]["total_usd"] > 0 and 0 < status["cost"]["savings"] < 1

        code, out, _ = spotctl("sweep", "status", sweep_id, "--local")
        assert code == 0 and f"best: trial {best['trial']} ({best['job_id']})" in out
        assert "train_loss vs trial" in out and "(the sum of its trials)" in out
        code, out, _ = spotctl("status", "--local")
        assert code == 0 and sweep_id in out
    finally:
        spotctl("local", "down")
