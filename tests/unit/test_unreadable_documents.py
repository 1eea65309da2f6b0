"""Every document read from storage against its model, and what is wrong with one that fails, in one
line (trainer.job.problems): several hostile bodies per kind of document. Pure: no storage."""

from __future__ import annotations

import json

import pytest

from trainer.job.documents import Final, Heartbeat, JobRecord, Manifest, StopRequest
from trainer.job.problems import MAX_DEPTH

RECORD = {
    "job_id": "j",
    "name": "n",
    "region": "us-east-1",
    "storage": "s3://b/p",
    "job_url": "s3://b/p/jobs/j/job.yaml",
    "wheel_url": "s3://b/w.whl",
    "ami": "ami-1",
    "created_at": "2026-12-01T12:00:00+00:00",
    "attempts": [
        {
            "number": 1,
            "instance_type": "g5.xlarge",
            "zone": "us-east-1a",
            "spot_price": 0.4,
            "on_demand_price": 1.0,
            "client_token": "t",
            "launched_at": "2026-12-01T12:00:00+00:00",
        }
    ],
}


def changed(**fields) -> bytes:
    return json.dumps({**RECORD, **fields}).encode()


def attempt_with(**fields) -> bytes:
    return changed(attempts=[{**RECORD["attempts"][0], **fields}])


# Any body that is no JSON object, whichever document it should be.
NOT_AN_OBJECT = [
    (b"", "empty (0 bytes)"),
    (b" \n\t", "empty (only whitespace, 3 bytes)"),
    (b"\x89PNG\r\n\x1a\n", "not UTF-8 text (byte 0x89 at byte 0)"),
    (b'{"a": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at byte 10)"),
    (b'{"job_id": "j", "name', "not JSON (cut short: it ends at byte 21)"),
    (b'{"job_id": "j",', "not JSON (cut short: it ends at byte 15)"),
    (b"garbage", "not JSON (garbage at byte 0)"),
    (b'{"a": 1} trailing', "not JSON (extra data at byte 9)"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b'"a string"', "a JSON string, not an object"),
    (b"42", "a JSON number, not an object"),
    (b"true", "a JSON boolean, not an object"),
    (b"null", "JSON null, not an object"),
    (b"1" * 5000, "not JSON spotctl can read (an integer of thousands of digits)"),
    (b"[" * 100_000 + b"]" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
    (json.dumps({"a": json.loads("[" * 100 + "]" * 100)}).encode(), f"nested deeper than {MAX_DEPTH} levels"),
]


@pytest.mark.parametrize(("body", "problem"), NOT_AN_OBJECT)
def test_a_record_that_is_no_json_object_says_what_it_is(body, problem):
    with pytest.raises(ValueError) as caught:
        JobRecord.from_json(body)
    assert str(caught.value) == problem


@pytest.mark.parametrize("kind", [Heartbeat, Final, Manifest, StopRequest])
@pytest.mark.parametrize(("body", "problem"), NOT_AN_OBJECT)
def test_a_trainers_document_that_is_no_json_object_reads_as_none_with_the_problem(kind, body, problem):
    assert kind.read(body) == (None, [problem])
    assert kind.parse(body) is None  # the trainer's own reading: as before, absent


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (changed(created_at="yesterday"), 'created_at: "yesterday" is not a date-time'),
        (attempt_with(launched_at="yesterday"), 'attempts[0].launched_at: "yesterday" is not a date-time'),
        (
            attempt_with(ended_at="2026-12-01T12:00:00"),
            'attempts[0].ended_at: "2026-12-01T12:00:00" is a date-time without a time zone',
        ),
        (changed(job_id=None), "job_id: null is not a string"),
        (changed(attempts=None), "attempts: null is not a list"),
        (changed(attempts={"number": 1}), 'attempts: {"number": 1} is not a list'),
        (attempt_with(number="one"), 'attempts[0].number: "one" is not an integer'),
        (attempt_with(number=0), "attempts[0].number: 0 is below 1"),
        (attempt_with(spot_price=1e999), "attempts[0].spot_price: Infinity is not a finite number"),
        (changed(budget_usd=float("nan")), "budget_usd: NaN is not a finite number"),
        (attempt_with(end_step=1e300), "attempts[0].end_step: 1e+300 is not an integer"),
        (changed(region="us east 1"), 'region: "us east 1" is not an AWS region'),
        (changed(name={"nested": {"deeper": 1}}), 'name: {"nested": {"deeper": 1}} is not a string'),
        (changed(name="x" * 100), 'name: "' + "x" * 100 + '" is not a string'),
        (
            json.dumps({"record": RECORD}).encode(),
            'missing job_id, name, region, storage, job_url, wheel_url, ami (it holds "record")',
        ),
    ],
)
def test_a_record_with_a_bad_field_names_the_field_and_its_value(body, problem):
    if problem.startswith('name: "xxx'):  # a long string is a string: it reads
        assert JobRecord.from_json(body).name == "x" * 100
        return
    with pytest.raises(ValueError) as caught:
        JobRecord.from_json(body)
    assert str(caught.value) == problem
    assert "\n" not in problem


def test_a_bad_value_is_quoted_escaped_and_cut_to_one_line():
    with pytest.raises(ValueError) as caught:
        JobRecord.from_json(changed(created_at="\x1b[31mred\nline two" + "z" * 80))
    shown = '"\\u001b[31mred\\nline two' + "z" * 80 + '"'  # JSON-quoted: the escape and the newline written out
    assert str(caught.value) == f"created_at: {shown[:60]}... ({len(shown)} characters) is not a date-time"


@pytest.mark.parametrize(
    ("kind", "body", "kept", "problems"),
    [
        (Heartbeat, {"phase": "training", "step": "seven"}, {"phase": "training"}, ['step: "seven" is not an integer']),
        (
            Heartbeat,
            {"step": 3, "updated_at": "yesterday"},
            {"step": 3},
            ['updated_at: "yesterday" is not a date-time'],
        ),
        (Heartbeat, {"step": 3, "eta_s": 1e999}, {"step": 3}, ["eta_s: Infinity is not a finite number"]),
        (Heartbeat, {"step": None, "phase": "training"}, {"phase": "training"}, []),  # null: unknown, as written
        (Heartbeat, {"startup": [1], "attempt": 2}, {"attempt": 2}, ["startup: [1] is not an object"]),
        (Heartbeat, {"heartbeat": {"step": 1}}, {}, ['no field a Heartbeat has (it holds "heartbeat")']),
        (Final, {"outcome": "failed", "finished_at": 5}, {"outcome": "failed"}, ["finished_at: 5 is not a string"]),
        (
            Final,
            {"outcome": "succeeded", "warnings": [{"name": 1}]},
            {"outcome": "succeeded"},
            ["warnings[0].name: 1 is not a string", "warnings[0].message: missing"],
        ),
        (
            Final,
            {"outcome": "failed", "traceback": "one string"},
            {"outcome": "failed"},
            ['traceback: "one string" is not a list'],
        ),
        (Manifest, {"export_id": "e", "files": []}, {"export_id": "e"}, ["files: [] is not an object"]),
        (
            Manifest,
            {"export_id": "e", "files": {"m.onnx": {"format": "onnx"}}},
            {"export_id": "e"},
            ["files.m.onnx.sha256: missing", "files.m.onnx.size: missing"],
        ),
        (StopRequest, {"reason": ["a", "b"]}, {}, ['reason: ["a", "b"] is not a string']),
    ],
)
def test_a_trainers_document_keeps_what_it_can_and_names_each_bad_field(kind, body, kept, problems):
    found, told = kind.read(json.dumps(body).encode())
    assert found is not None
    assert {k: v for k, v in found.model_dump(exclude_unset=True).items() if v not in ({}, None)} == kept
    assert told == problems


def test_a_valid_record_reads_as_written():
    record = JobRecord.from_json(json.dumps(RECORD).encode())
    assert json.loads(record.to_json())["attempts"][0]["launched_at"] == RECORD["attempts"][0]["launched_at"]
