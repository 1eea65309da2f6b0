"""`spotctl status --json` is documented by its model's JSON Schema (`status --schema`), and what it
prints holds to that schema, every field described."""

from __future__ import annotations

import json

import jsonschema

from orchestrator.jobs.caretaker import Care
from orchestrator.jobs.cost import AttemptCost, JobCost
from orchestrator.jobs.status import JobStatus, schema, status_document
from tests.unit.jobs import attempt, beat, final, instance, record, view
from trainer.job.documents import Manifest


def documents() -> list[dict]:
    running = view(
        record(attempt(1, end="interrupted", ended=600), attempt(2, launched=300)),
        instance(number=2),
        beat(
            attempt=2,
            step=40,
            total_steps=96,
            epoch=2,
            epochs=8,
            eta_s=120.5,
            gpu_util_pct=93.5,
            last_checkpoint_step=40,
            last_checkpoint_age_s=3,
        ),
    )
    done = view(
        record(attempt(end="succeeded")),
        instance("terminated", "Client.InstanceInitiatedShutdown"),
        beat(phase="done"),
        final("succeeded", step=96, history=[{"epoch": 1}], metrics={"val_acc1": 0.9}),
    )
    done.artifacts = Manifest.model_validate(
        {
            "job_id": "j",
            "checkpoint_step": 96,
            "formats": {"onnx": {"status": "ok"}},
            "files": {"model.onnx": {"format": "onnx", "path": "x/model.onnx", "sha256": "0" * 64, "size": 10}},
        }
    )
    spent = JobCost([AttemptCost(1, 600.0, 0.0, 0.16, True, 0.0, 0.0, 0.0)], 0.0, 0.16, 1.0, 0, 0.0, 0.4, 0.01)
    return [
        status_document(running),
        status_document(
            running,
            spent,
            with_cost=True,
            context="local",
            care=Care("nobody", "nobody", "`spotctl watch j`, or deploy the controller"),
        ),
        status_document(done, None, with_cost=True),
        status_document(view(record())),
    ]


def test_every_document_holds_to_the_schema():
    for document in documents():
        jsonschema.validate(document, schema())


def test_every_field_is_described_and_nothing_printed_is_undocumented():
    fields = set(JobStatus.model_fields)
    for document in documents():
        assert set(document) <= fields
    assert set(documents()[1]) == fields  # one job, with its cost: every field
    assert all(JobStatus.model_fields[name].description for name in ("state", "final", "artifacts", "cost"))


def test_the_documents_read_as_before():
    running, with_cost, done, pending = documents()
    assert with_cost["care"] == {
        "by": "nobody",
        "detail": "nobody",
        "fix": "`spotctl watch j`, or deploy the controller",
    }
    assert "care" not in running and "care" not in done
    assert "cost" not in running and with_cost["cost"]["current_usd_per_hour"] == 0.4 and done["cost"] is None
    assert [a.get("instance_state") for a in running["attempts"]] == [
        None,
        "running",
    ] and "instance_state" not in running["attempts"][0]
    assert (
        running["progress"]["step"] == 40
        and running["gpu"]["gpu_util_pct"] == 93.5
        and running["last_checkpoint"]["step"] == 40
    )
    assert done["final"] == {
        "outcome": "succeeded",
        "attempt": 1,
        "step": 96,
        "metrics": {"val_acc1": 0.9},
    }  # as written, without its history
    assert (
        done["artifacts"]["files"]["model.onnx"]["size"] == 10
        and pending["state"] == "pending"
        and pending["progress"] is None
    )


def test_status_schema_prints_it(spotctl):
    code, out, _ = spotctl("status", "--schema")
    assert code == 0 and json.loads(out) == schema()
