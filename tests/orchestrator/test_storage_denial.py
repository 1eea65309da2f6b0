"""The control plane on S3 as AWS answers the operator: its s3:ListBucket holds only under an s3:prefix
condition, so a GET or HEAD of a missing key is 403, not 404 (`s3_denies_missing_keys`). launch (the
wheel's existence check, the create-only job file and record), status (final.json not there yet) and
stop must read "missing" as missing."""

from __future__ import annotations

import hashlib
import json

import boto3

from orchestrator.jobs.record import JobStore
from tests.cloud import BUCKET, EXAMPLE, STORAGE, launched_id
from trainer.job import layout


def test_launch_status_and_stop_read_missing_objects_as_missing(account, s3_denies_missing_keys, spotctl):
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    job_id = launched_id(out)
    refused = {what for _, what in s3_denies_missing_keys.denials}
    assert any(what.startswith(f"{BUCKET}/spotctl/wheels/") for what in refused)  # checked before the upload
    wheels = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="spotctl/wheels/")["Contents"]
    assert len(wheels) == 1

    code, out, err = spotctl("status", job_id, "--storage", STORAGE, "--json")
    assert code == 0, err
    view = json.loads(out)
    assert view["state"] == "running" and view["attempts"][0]["instance_state"] == "running"
    assert f"{BUCKET}/spotctl/jobs/{job_id}/{layout.HEARTBEAT}" in {w for _, w in s3_denies_missing_keys.denials}

    code, out, err = spotctl("stop", job_id, "--storage", STORAGE, "--wait", "0")
    assert code == 0, err
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
    assert json.loads(out)["state"] == "cancelled"


def test_the_record_and_documents_of_a_job_read_under_403(account, s3_denies_missing_keys, tmp_path):
    store = JobStore(STORAGE)
    assert store.read_record("demo-261201-abcd") is None
    assert store.read_bytes("demo-261201-abcd", layout.FINAL) is None
    wheel = tmp_path / "spotctl-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    digest = hashlib.sha256(b"wheel").hexdigest()
    url = store.upload_wheel(wheel, digest)
    assert url == f"{STORAGE}/wheels/{digest}/{wheel.name}"
    wheel.write_bytes(b"changed")  # content-addressed: what is stored under its digest is not uploaded again
    store.upload_wheel(wheel, digest)
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"spotctl/wheels/{digest}/{wheel.name}")["Body"].read()
    assert body == b"wheel"
