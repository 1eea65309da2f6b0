"""Every malformed job file gets one line per problem (file:line: field: what; fix), exit code 2.

Each case is a file in bad_specs/: NAME.yaml and NAME.expected, the exact stderr of
`spotctl validate NAME.yaml`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainer.job.spec_file import SpecError

CASES = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=lambda path: path.stem)
def test_bad_spec_is_reported_exactly(case, spotctl, monkeypatch):
    monkeypatch.chdir(case.parent)
    code, out, err = spotctl("validate", case.name)
    assert (code, out) == (2, "")
    assert err == case.with_suffix(".expected").read_text()
    problems = err.splitlines()[:-1]
    for line in problems:
        assert re.match(rf"{re.escape(case.name)}(:\d+)?: ", line), line


def test_every_problem_is_reported_at_once(tmp_path, spotctl):
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: demo\n"
        "storage: s3://bucket-a/x\n"
        "train:\n"
        "  model:\n"
        "    name: resnet50\n"
        "  data:\n"
        "    train: ./data\n"
        "    workers: -1\n"
        "  epochs: 0\n"
        "  optimizer: {lr: 0, nmae: sgd}\n"
    )
    code, _, err = spotctl("validate", str(job))
    assert code == 2
    assert err.splitlines() == [
        f"{job}:8: train.data.workers: must be at least 0, got -1 (e.g. 4)",
        f"{job}:9: train.epochs: must be at least 1, got 0 (e.g. 10)",
        f"{job}:10: train.optimizer.lr: must be greater than 0, got 0 (e.g. 0.01)",
        f"{job}:10: train.optimizer.nmae: unknown key 'nmae'; did you mean 'name'?",
        f"error: {job} is not a valid job spec (4 problems)",
    ]


def test_json_mode_reports_problems_as_data(tmp_path, spotctl):
    job = tmp_path / "job.yaml"
    job.write_text("name: demo\nstorage: ./runs\ntrain:\n  model: {name: resnet5}\n  data: {train: ./d}\n")
    code, out, err = spotctl("validate", "--json", str(job))
    assert (code, err) == (2, "")
    assert json.loads(out) == {
        "valid": False,
        "problems": [
            {
                "file": str(job),
                "line": 4,
                "field": "train.model.name",
                "message": "unknown torchvision model 'resnet5'; did you mean 'resnet50'?",
            }
        ],
    }


def test_missing_file(tmp_path, spotctl):
    code, out, err = spotctl("validate", str(tmp_path / "nope.yaml"))
    assert (code, out) == (2, "")
    assert (
        err.splitlines()[0]
        == f"{tmp_path / 'nope.yaml'}: no such file; check the path (examples/ has job files to start from)"
    )


def test_a_folder_is_not_a_job_file(tmp_path, spotctl):
    code, _, err = spotctl("validate", str(tmp_path))
    assert code == 2
    assert err.splitlines()[0] == f"{tmp_path}: is a folder; give the path of a job .yaml file inside it"


def test_binary_file(tmp_path, spotctl):
    job = tmp_path / "job.yaml"
    job.write_bytes(b"name: \xff\xfe\n")
    code, _, err = spotctl("validate", str(job))
    assert code == 2
    assert err.splitlines()[0] == f"{job}:1: is not UTF-8 text (byte 0xff at column 7); save the job file as UTF-8"


def test_debug_shows_the_traceback(tmp_path, spotctl):
    job = tmp_path / "job.yaml"
    job.write_text("name: demo\n")
    with pytest.raises(SpecError):
        spotctl("--debug", "validate", str(job))
