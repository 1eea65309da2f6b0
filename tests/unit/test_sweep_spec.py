"""sweep.yaml: every searched value checked by building the job with it; problems as `file:line: path: what`."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweeps.spec import dump_sweep, load_sweep, stored_sweep
from trainer.job.spec_file import SpecError

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "examples" / "quickstart.yaml"


def _write(tmp_path, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"job: {JOB}\n{body}")
    return path


def _problems(tmp_path, body: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_sweep(_write(tmp_path, body))
    return [str(p).split("sweep.yaml", 1)[1] for p in caught.value.problems]


def test_the_example_is_valid_and_round_trips():
    sweep = load_sweep(REPO / "examples" / "sweep-local.yaml")
    assert sweep.name == "shapes-sweep" and sweep.settings.parallel == 2
    assert [p.path for p in sweep.params] == ["train.optimizer.lr", "train.batch_size", "train.optimizer.weight_decay"]
    assert sweep.trial_spec({"train.batch_size": 16, "train.optimizer.lr": 0.001}).train.batch_size == 16
    again = stored_sweep(dump_sweep(sweep), "s3://b/sweeps/x/sweep.yaml")
    assert again.base == sweep.base and again.params == sweep.params


def test_each_problem_has_its_line(tmp_path):
    body = """search:
  train.optimizer.lrr: {float: [0.1, 1]}
  train.batch_size: {choice: [32, 0]}
  train.model: {choice: [a]}
  train.optimizer.lr: {float: [1, 0.1]}
  train.epochs: {int: [1, 3], log: 7}
  train.model.name: {choice: [resnet18, resnet_nope]}
  storage: {choice: [s3://a/b]}
trials: 3
"""
    assert _problems(tmp_path, body) == [
        ":3: search.train.optimizer.lrr: names no field: 'train.optimizer' has no 'lrr'; did you mean 'lr'?",
        ":4: search.train.batch_size.choice[1]: the job refuses it: train.batch_size: 0 is below 1",
        ":5: search.train.model: 'train.model' is a section; name one of its fields, e.g. train.model.name",
        ":6: search.train.optimizer.lr.float: low (1) must be below high (0.1)",
        ":7: search.train.epochs.log: expected true or false",
        ':8: search.train.model.name.choice[1]: the job refuses it: train.model.name: "resnet_nope" unknown '
        "torchvision model 'resnet_nope'; did you mean 'resnet50'?",
        ":9: search.storage: 'storage' is not searched (the sweep sets it, or it is the account's); search train.* or compute.* fields",
    ]


def test_settings_are_checked_like_a_job_file(tmp_path):
    assert _problems(tmp_path, "search:\n  train.epochs: {int: [1, 2]}\ntrials: 0\nsampler: tpee\n") == [
        ":4: trials: must be at least 1, got 0",
        ":5: sampler: 'tpee' is not one of tpe, random, grid; did you mean 'tpe'?",
    ]


def test_a_grid_takes_choices_and_counts_its_points(tmp_path):
    assert _problems(tmp_path, "search:\n  train.batch_size: {choice: [16, 32]}\ntrials: 3\nsampler: grid\n") == [
        ":4: trials: is 3, more than the grid's 2 points; set trials: 2"
    ]


def test_an_inline_job_has_its_lines_under_job(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "job:\n  name: x\n  storage: s3://bkt/p\n  train:\n    model: {name: resnet18}\n    data: {train: s3://bkt/d}\n"
        "    batch_size: -1\nsearch:\n  train.epochs: {int: [1, 2]}\ntrials: 2\n"
    )
    with pytest.raises(SpecError) as caught:
        load_sweep(path)
    assert [str(p).split("sweep.yaml", 1)[1] for p in caught.value.problems] == [
        ":7: job.train.batch_size: must be at least 1, got -1 (e.g. 32)"
    ]


def test_a_bad_sweep_file_exits_2_and_launches_nothing(tmp_path, spotctl):
    code, out, err = spotctl(
        "sweep", "launch", str(_write(tmp_path, "search:\n  train.nope: {choice: [1]}\ntrials: 2\n"))
    )
    assert code == 2 and out == ""
    assert "sweep.yaml:3: search.train.nope: names no field: 'train' has no 'nope'" in err
