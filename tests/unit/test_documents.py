"""The documents the planes exchange (trainer.job.documents) read leniently, field by field, and are
written strictly and as given; the layout's one inverse (a person's job URL) reads both spellings."""

from __future__ import annotations

import json

import pytest

from orchestrator.jobs.state import derive_state
from tests.unit.jobs import attempt, instance, record
from trainer.job import layout
from trainer.job.documents import Final, Heartbeat, JobState, Manifest


def test_one_unreadable_field_does_not_hide_the_rest():
    said = Final.parse(b'{"outcome": "failed", "attempt": 1, "error": "boom", "traceback": "one string, not a list"}')
    assert (said.outcome, said.attempt, said.error, said.traceback) == ("failed", 1, "boom", None)
    assert said.written() == {
        "outcome": "failed",
        "attempt": 1,
        "error": "boom",
        "traceback": "one string, not a list",
    }  # shown as written
    beat = Heartbeat.parse(json.dumps({"attempt": 2, "phase": "interrupted", "step": 10.5, "future_field": 1}))
    assert (beat.attempt, beat.phase, beat.step) == (2, "interrupted", None)


@pytest.mark.parametrize("body", [None, b"", b"{torn", b"[1, 2]", b'"text"', b"{}"])
def test_what_is_no_document_reads_as_none(body):
    assert Heartbeat.parse(body) is None and Final.parse(body) is None and Manifest.parse(body) is None


def test_writers_store_what_they_give_and_only_known_fields():
    fields = {"attempt": 1, "phase": "training", "step": 3, "images_per_sec": 87}
    assert json.loads(Heartbeat.dump(fields)) == fields  # as given: no nulls for fields not set, 87 stays 87
    with pytest.raises(TypeError, match="Heartbeat has no field stpe"):
        Heartbeat.dump({"attempt": 1, "stpe": 3})
    with pytest.raises(TypeError, match="Final has no field outcom"):
        Final.of(outcom="succeeded")


def test_a_state_this_version_does_not_know_is_unknown_not_a_crash():
    job = record(attempt(end="stopped", ended=60), outcome="paused_by_a_newer_spotctl")
    assert derive_state(job, None, None, instance("terminated")) is JobState.UNKNOWN


@pytest.mark.parametrize(
    ("url", "job_id"),
    [
        ("s3://b/spotctl/jobs/j-1/job.yaml", "j-1"),
        ("s3://b/spotctl/jobs/j-1/job.yml", "j-1"),
        ("examples/quickstart.yaml", None),
        ("s3://b/jobs/j-1/other.yaml", None),
    ],
)
def test_a_job_url_names_its_job(url, job_id):
    assert layout.job_id_in(url) == job_id
    if job_id:
        assert layout.job_url("s3://b/spotctl", job_id) in (url, url.replace(".yml", ".yaml"))
