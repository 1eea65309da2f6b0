"""Storage on S3 as AWS answers the trainer role and the operator: their s3:ListBucket holds only under
an s3:prefix condition, so a GET or HEAD of a missing key is 403 AccessDenied, not 404
(`s3_denies_missing_keys`). A missing object must still read as missing, a real refusal as one; and
what relies on "not there yet" (the first checkpoint, the resume lookup, the control/stop poll) works."""

from __future__ import annotations

import hashlib
import os

import boto3
import pytest
import torch

from trainer.checkpoint import MANIFEST, POINTER, Checkpointer
from trainer.job import layout
from trainer.job.storage import Conflict, Storage
from trainer.reporting import Reporter

ROOT = "spotctl/jobs/demo"


@pytest.fixture
def denial(s3_denies_missing_keys):
    return s3_denies_missing_keys


@pytest.fixture
def storage(s3_bucket, denial):
    return Storage(f"s3://{s3_bucket}/{ROOT}")


def key(bucket: str, relative: str) -> str:
    return f"{bucket}/{ROOT}/{relative}"


def refused(denial) -> set[str]:
    """The keys S3 answered 403 for (GET or HEAD): proof that the test ran under that regime."""
    return {what for _, what in denial.denials}


def test_a_missing_object_is_missing_although_s3_answers_403(storage, s3_bucket, denial, tmp_path):
    storage.write_bytes("checkpoints/step-10/MANIFEST.json", b"{}")  # a longer key the missing one prefixes
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("checkpoints/step-1")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("status/final.json")
    assert storage.exists("status/final.json") is False
    with pytest.raises(FileNotFoundError):
        storage.download("status/final.json", str(tmp_path / "final.json"))
    with pytest.raises(FileNotFoundError):
        storage.read_versioned("record.json")
    assert key(s3_bucket, "status/final.json") in refused(denial)  # S3 did answer 403
    assert storage.exists("checkpoints/step-10/MANIFEST.json") is True


def test_an_object_refused_for_real_is_a_permission_error(storage, s3_bucket, denial):
    storage.write_bytes("record.json", b"{}")
    denial.strictness.denied_keys.append(key(s3_bucket, "record.json"))
    url = f"s3://{s3_bucket}/{ROOT}/record.json"
    message = f"access denied reading {url}: the object exists, and this identity may not read it (s3:GetObject)"
    with pytest.raises(PermissionError) as caught:
        storage.read_bytes("record.json")
    assert str(caught.value) == message
    with pytest.raises(PermissionError, match="the object exists"):
        storage.exists("record.json")
    with pytest.raises(PermissionError, match="the object exists"):
        storage.read_versioned("record.json")


def test_a_refused_listing_leaves_a_403_a_permission_error(storage, s3_bucket, denial):
    denial.strictness.denied_listings.append(f"{s3_bucket}/{ROOT}")
    with pytest.raises(PermissionError) as caught:
        storage.read_bytes("status/final.json")
    assert str(caught.value) == (
        f"access denied reading s3://{s3_bucket}/{ROOT}/status/final.json, and listing s3://{s3_bucket} under "
        f"{ROOT}/status/final.json to tell whether it exists was denied too: this identity needs s3:GetObject "
        "on the object and s3:ListBucket for that prefix"
    )


def test_the_first_checkpoint_and_the_resume_lookup_work_under_403(storage, s3_bucket, denial):
    checkpointer = Checkpointer(storage, layout.CHECKPOINTS, keep=2)
    assert checkpointer.latest() is None  # a fresh job: no pointer, no steps
    assert checkpointer.load_latest() is None
    state = {"weights": torch.arange(6.0)}
    checkpointer.write(1, state, {"epoch": 0})  # reads the manifest and the pointer first: both missing
    assert key(s3_bucket, f"checkpoints/step-1/{MANIFEST}") in refused(denial)
    assert key(s3_bucket, f"checkpoints/{POINTER}") in refused(denial)

    resumed = Checkpointer(storage, layout.CHECKPOINTS, keep=2)
    committed, loaded = resumed.load_latest()
    assert committed.step == 1 and torch.equal(loaded["weights"], state["weights"])
    with pytest.raises(FileExistsError):  # the manifest is create-only, checked by S3 itself
        storage.write_bytes(f"checkpoints/step-1/{MANIFEST}", b"{}", create_only=True)


def test_the_control_poll_under_403_waits_then_sees_a_stop(storage, s3_bucket, denial):
    reporter = Reporter(storage, attempt=1)
    reporter._poll_control()
    assert not reporter.stop_requested.is_set()
    assert key(s3_bucket, layout.CONTROL_STOP) in refused(denial)
    storage.write_bytes(layout.CONTROL_STOP, b'{"reason": "budget"}')
    reporter._poll_control()
    assert reporter.stop_requested.is_set() and reporter.stop_reason == "budget"


def test_conditional_writes_are_checked_by_s3(storage):
    storage.write_bytes("record.json", b"1", create_only=True)
    with pytest.raises(FileExistsError):
        storage.write_bytes("record.json", b"2", create_only=True)
    body, version = storage.read_versioned("record.json")
    storage.write_if("record.json", b"3", version)
    with pytest.raises(Conflict):
        storage.write_if("record.json", b"4", version)  # someone (we) wrote since that version
    assert storage.read_bytes("record.json") == b"3"


def test_a_large_upload_is_multipart_whole_and_tagged(storage, s3_bucket, tmp_path):
    local = tmp_path / "state.pt"
    local.write_bytes(os.urandom(20 * 2**20))  # three 8 MiB parts
    storage.upload(str(local), "checkpoints/step-5/state.pt", tags={"spotctl:kind": "checkpoint"})
    s3 = boto3.client("s3")
    head = s3.head_object(Bucket=s3_bucket, Key=f"{ROOT}/checkpoints/step-5/state.pt")
    assert head["ETag"].strip('"').endswith("-3")  # parallel parts, not one PutObject
    data = s3.get_object(Bucket=s3_bucket, Key=f"{ROOT}/checkpoints/step-5/state.pt")["Body"].read()
    assert hashlib.sha256(data).digest() == hashlib.sha256(local.read_bytes()).digest()
    tags = s3.get_object_tagging(Bucket=s3_bucket, Key=f"{ROOT}/checkpoints/step-5/state.pt")["TagSet"]
    assert tags == [{"Key": "spotctl:kind", "Value": "checkpoint"}]
    assert storage.exists("checkpoints/step-5/state.pt")


@pytest.mark.slow
def test_a_whole_trainer_run_under_403(s3_bucket, denial, aws, image_folder, tmp_path):
    from testbed.trainer_runs import read_json, run_trainer, trainer_env, write_job
    from trainer.run import EXIT_SUCCEEDED

    data = image_folder(f"s3://{s3_bucket}/datasets/shapes", per_class={"train": 10})
    job = write_job(
        tmp_path / "job.yaml", f"s3://{s3_bucket}/spotctl", data.split("train"), None, name="demo", train__epochs=1
    )
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{ROOT}/job.yaml", Body=job.read_bytes())
    env = trainer_env(
        {**aws.environment(), "AWS_ENDPOINT_URL": denial.endpoint, "SPOTCTL_CACHE_DIR": str(tmp_path / "cache")}
    )
    out = tmp_path / "out.log"
    assert run_trainer(f"s3://{s3_bucket}/{ROOT}/job.yaml", env, log=out) == EXIT_SUCCEEDED, out.read_text()
    assert read_json(f"s3://{s3_bucket}/{ROOT}/{layout.FINAL}")["outcome"] == "succeeded"
    assert {key(s3_bucket, name) for name in (layout.FINAL, layout.CONTROL_STOP, f"checkpoints/{POINTER}")} <= (
        refused(denial)
    )


def test_the_writing_client_reaches_what_the_storage_options_name(s3_bucket, aws, monkeypatch, tmp_path):
    """The local cloud's way: endpoint and credentials given as options, none in the environment."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    storage = Storage(f"s3://{s3_bucket}/{ROOT}", key="testing", secret="testing", endpoint_url=aws.endpoint)
    local = tmp_path / "state.pt"
    local.write_bytes(b"state")
    storage.upload(str(local), "checkpoints/step-1/state.pt")
    storage.write_bytes("record.json", b"{}", create_only=True)
    _, version = storage.read_versioned("record.json")
    storage.write_if("record.json", b"[]", version)
    s3 = boto3.client("s3", endpoint_url=aws.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    read = lambda name: s3.get_object(Bucket=s3_bucket, Key=f"{ROOT}/{name}")["Body"].read()  # noqa: E731
    assert (read("checkpoints/step-1/state.pt"), read("record.json")) == (b"state", b"[]")


def test_an_object_written_between_the_403_and_the_listing_is_read(storage, s3_bucket, monkeypatch):
    """S3's 403 for a key not there yet, then the key appears before the listing (a checkpoint finishing
    its upload): the object is read, not reported as denied."""
    from trainer.job import storage as storage_module

    real = storage_module.absent_or_denied

    def written_meanwhile(fs, path):
        boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{ROOT}/status/final.json", Body=b"{}")
        return real(fs, path)

    monkeypatch.setattr(storage_module, "absent_or_denied", written_meanwhile)
    assert storage.read_bytes("status/final.json") == b"{}"
