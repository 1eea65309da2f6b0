"""The checkpoint protocol (docs/architecture.md), on a local folder and on S3 (moto server)."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import torch

from testbed.trainer_runs import RefusingDeletes
from trainer.checkpoint import MANIFEST, POINTER, STATE_FILE, Checkpointer, CheckpointMismatch
from trainer.job.storage import Storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return Storage(str(tmp_path / "job"))
    bucket = request.getfixturevalue("s3_bucket")
    return Storage(f"s3://{bucket}/spotctl/jobs/demo")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_state(step: int) -> dict:
    model = torch.nn.Linear(4, 3)
    torch.manual_seed(step)
    with torch.no_grad():
        model.weight.normal_()
    return {"model": model.state_dict(), "step": step, "rng": [1, 2, 3], "nested": {"epoch": 2, "t": torch.arange(5)}}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key])
        else:
            assert a[key] == b[key]


def test_save_commits_then_loads_bit_for_bit(storage):
    ckpt = Checkpointer(storage, every_steps=5)
    state = make_state(5)
    assert ckpt.save(5, lambda: state, meta={"epoch": 0})
    ckpt.wait()
    assert sorted(storage.list("checkpoints")) == [POINTER, "step-5"]
    assert sorted(storage.list("checkpoints/step-5")) == [MANIFEST, STATE_FILE]
    manifest = json.loads(storage.read_bytes(f"checkpoints/step-5/{MANIFEST}"))
    assert manifest["step"] == 5 and manifest["epoch"] == 0 and manifest["world_size"] == 1
    assert manifest["torch"] == torch.__version__
    assert manifest["files"][STATE_FILE]["size"] == len(storage.read_bytes(f"checkpoints/step-5/{STATE_FILE}"))
    committed, loaded = Checkpointer(storage).load_latest()
    assert committed.step == 5
    assert_same_state(loaded, state)


def test_the_checkpointer_decides_when_to_save(storage):
    clock = FakeClock()
    ckpt = Checkpointer(storage, every_steps=3, every_seconds=100, clock=clock)
    calls = []

    def state():
        calls.append(1)
        return {"x": torch.zeros(1)}

    saved = [step for step in range(1, 8) if ckpt.save(step, state)]
    assert saved == [3, 6]
    clock.now = 150
    assert ckpt.save(7, state)  # timed save
    assert not ckpt.save(7, state, force=True)  # never the same step twice
    assert ckpt.save(8, state, force=True)  # epoch end or spot notice
    ckpt.wait()
    assert len(calls) == 4  # the state is only built when saving
    assert ckpt.committed_steps() == [6, 7, 8]  # keep=3


def test_training_waits_only_for_the_copy_to_host(tmp_path):
    release = threading.Event()

    class SlowStorage(Storage):
        def upload(self, local_file, relative, move=False, tags=None):
            release.wait(10)
            super().upload(local_file, relative, move, tags)

    storage = SlowStorage(str(tmp_path / "job"))
    ckpt = Checkpointer(storage)
    weights = torch.ones(3)
    assert ckpt.save(1, lambda: {"w": weights}, force=True)
    assert ckpt.busy  # returned while the upload is still blocked
    weights.add_(1)  # training goes on mutating its tensors
    release.set()
    ckpt.wait()
    _, loaded = ckpt.load_latest()
    assert torch.equal(loaded["w"], torch.ones(3))  # the snapshot, not the later value


def test_a_folder_without_manifest_is_not_a_checkpoint(storage):
    ckpt = Checkpointer(storage)
    ckpt.save(10, lambda: make_state(10), force=True)
    ckpt.wait()
    storage.write_bytes(f"checkpoints/step-20/{STATE_FILE}", b"half an upload")  # killed before its manifest
    committed, _ = Checkpointer(storage).load_latest()
    assert committed.step == 10
    assert Checkpointer(storage).committed_steps() == [10]


def test_corrupt_checkpoint_is_skipped_with_a_warning(storage, caplog):
    ckpt = Checkpointer(storage, keep=5)
    for step in (1, 2):
        ckpt.save(step, lambda step=step: make_state(step), force=True)
        ckpt.wait()
    storage.write_bytes(f"checkpoints/step-2/{STATE_FILE}", b"bit rot")
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        committed, loaded = Checkpointer(storage).load_latest()
    assert committed.step == 1 and loaded["step"] == 1
    assert "step 2 is corrupt" in caplog.text
    assert not storage.exists(f"checkpoints/step-2/{MANIFEST}")  # uncommitted: no longer a checkpoint
    ckpt = Checkpointer(storage, keep=5)
    ckpt.save(2, lambda: make_state(2), force=True)  # the resumed run reaches step 2 again: written afresh
    ckpt.wait()
    assert Checkpointer(storage).load_latest()[1]["step"] == 2


def test_a_checkpoint_commits_only_after_the_upload_it_depends_on(tmp_path):
    release = threading.Event()

    class SlowBest(Storage):
        def upload(self, local_file, relative, move=False, tags=None):
            if relative.startswith("best/"):
                release.wait(10)
            super().upload(local_file, relative, move, tags)

    storage = SlowBest(str(tmp_path / "job"))
    best, checkpoints = Checkpointer(storage, prefix="best", keep=1), Checkpointer(storage)
    checkpoints.depends_on = best
    best.save(4, lambda: make_state(4), force=True)
    checkpoints.save(4, lambda: make_state(4), force=True)
    time.sleep(0.3)
    assert not storage.exists(
        f"checkpoints/step-4/{MANIFEST}"
    )  # a kill now leaves no checkpoint claiming a best not saved
    release.set()
    checkpoints.wait()
    assert storage.exists(f"best/step-4/{MANIFEST}") and storage.exists(f"checkpoints/step-4/{MANIFEST}")


@pytest.mark.parametrize("pointer", [b"{not json", json.dumps({"step": 99, "manifest_sha256": "x"}).encode()])
def test_broken_or_stale_pointer_falls_back_to_listing(storage, pointer, caplog):
    ckpt = Checkpointer(storage, keep=5)
    for step in (4, 8):
        ckpt.save(step, lambda step=step: make_state(step), force=True)
        ckpt.wait()
    storage.write_bytes(f"checkpoints/{POINTER}", pointer)
    assert Checkpointer(storage).latest().step == 8


def test_latest_takes_a_constant_number_of_requests(tmp_path):
    class CountingStorage(Storage):
        reads = lists = 0

        def read_bytes(self, relative):
            CountingStorage.reads += 1
            return super().read_bytes(relative)

        def list(self, relative):
            CountingStorage.lists += 1
            return super().list(relative)

    storage = CountingStorage(str(tmp_path / "job"))
    ckpt = Checkpointer(storage, keep=100)
    for step in range(1, 31):
        ckpt.save(step, lambda step=step: {"s": torch.tensor(step)}, force=True)
    ckpt.wait()
    CountingStorage.reads = CountingStorage.lists = 0
    assert Checkpointer(storage).latest().step == 30
    assert (CountingStorage.reads, CountingStorage.lists) == (2, 0)  # pointer + manifest, no listing


def test_retention_keeps_the_last_k_and_the_one_in_use(storage):
    ckpt = Checkpointer(storage, keep=2)
    ckpt.protected.add(1)  # this run resumed from step 1
    for step in range(1, 6):
        ckpt.save(step, lambda step=step: {"s": torch.tensor(step)}, force=True)
        ckpt.wait()
    assert ckpt.committed_steps() == [1, 4, 5]
    assert sorted(storage.list("checkpoints")) == [POINTER, "step-1", "step-4", "step-5"]


def test_a_refused_retention_delete_never_fails_training(tmp_path, caplog):
    ckpt = Checkpointer(RefusingDeletes(str(tmp_path)), keep=1)
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        for step in range(1, 5):
            assert ckpt.save(step, lambda step=step: {"s": torch.tensor(step)}, force=True)
            ckpt.wait()  # re-raises what the background save hit: nothing may reach the loop
    assert ckpt.committed_steps() == [1, 2, 3, 4]  # none could be removed, every one is still whole
    _, newest = ckpt.load_latest()
    assert newest["s"].item() == 4 and ckpt.latest().step == 4
    assert ckpt.undeleted == {1, 2, 3}
    assert (
        "retention could not remove checkpoints/step-1 (PermissionError: AccessDenied: DeleteObject checkpoints/step-1/MANIFEST.json)"
        in caplog.text
    )


def test_a_committed_step_is_never_overwritten(storage):
    first = Checkpointer(storage)
    first.save(3, lambda: {"v": torch.tensor(1)}, force=True)
    first.wait()
    manifest = storage.read_bytes(f"checkpoints/step-3/{MANIFEST}")
    second = Checkpointer(storage)  # e.g. a resumed attempt reaching the same step again
    second.save(3, lambda: {"v": torch.tensor(2)}, force=True)
    second.wait()
    assert storage.read_bytes(f"checkpoints/step-3/{MANIFEST}") == manifest
    _, loaded = second.load_latest()
    assert loaded["v"].item() == 1


def test_checkpoint_of_another_model_is_refused_with_the_reason(storage):
    ckpt = Checkpointer(storage, identity={"model": "resnet18", "num_classes": 3})
    ckpt.save(1, lambda: {"v": torch.tensor(1)}, force=True)
    ckpt.wait()
    other = Checkpointer(storage, identity={"model": "resnet50", "num_classes": 3})
    with pytest.raises(CheckpointMismatch, match="model: checkpoint has 'resnet18', this run has 'resnet50'"):
        other.load_latest()
    Checkpointer(storage, prefix="nested", identity={"train": {"optimizer": {"lr": 0.05, "name": "sgd"}}}).write(
        1, {}, {}
    )
    nested = Checkpointer(storage, prefix="nested", identity={"train": {"optimizer": {"lr": 0.1, "name": "sgd"}}})
    with pytest.raises(
        CheckpointMismatch,
        match=r"was written for another run: train\.optimizer\.lr: checkpoint has 0\.05, this run has 0\.1; use a new job name",
    ):
        nested.load_latest()


def test_a_failed_upload_surfaces_and_leaves_the_latest_intact(tmp_path):
    class FailingStorage(Storage):
        fail = False

        def upload(self, local_file, relative, move=False, tags=None):
            if self.fail:
                raise PermissionError("access denied")
            super().upload(local_file, relative, move, tags)

    storage = FailingStorage(str(tmp_path / "job"))
    ckpt = Checkpointer(storage)
    ckpt.save(1, lambda: {"v": torch.tensor(1)}, force=True)
    ckpt.wait()
    storage.fail = True
    ckpt.save(2, lambda: {"v": torch.tensor(2)}, force=True)
    with pytest.raises(PermissionError):
        ckpt.wait()
    assert Checkpointer(storage).latest().step == 1


def test_transient_storage_errors_are_retried_and_permanent_ones_are_not(tmp_path):
    sleeps = []
    storage = Storage(str(tmp_path / "job"), sleep=sleeps.append)
    storage.write_bytes("a.json", b"{}")

    class Flaky:  # the first two reads hit a dropped connection
        def __init__(self, fs):
            self.fs, self.failures = fs, 2

        def cat_file(self, path):
            if self.failures:
                self.failures -= 1
                raise ConnectionResetError("connection reset by peer")
            return self.fs.cat_file(path)

    storage.fs = Flaky(storage.fs)
    assert storage.read_bytes("a.json") == b"{}"
    assert len(sleeps) == 2
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("missing.json")
    assert len(sleeps) == 2


def test_loading_a_healthy_latest_checkpoint_lists_nothing(tmp_path):
    class CountingStorage(Storage):
        lists = 0

        def list(self, relative):
            CountingStorage.lists += 1
            return super().list(relative)

    storage = CountingStorage(str(tmp_path / "job"))
    ckpt = Checkpointer(storage, keep=10)
    for step in (1, 2, 3):
        ckpt.save(step, lambda step=step: {"s": torch.tensor(step)}, force=True)
        ckpt.wait()
    CountingStorage.lists = 0
    committed, _ = Checkpointer(storage).load_latest()
    assert committed.step == 3 and CountingStorage.lists == 0


def test_checkpoint_objects_are_tagged_for_the_buckets_expiry_rule(s3_bucket):
    import boto3

    storage = Storage(f"s3://{s3_bucket}/spotctl/jobs/demo")
    for prefix, kind in (("checkpoints", "checkpoint"), ("best", "best")):
        Checkpointer(storage, prefix, kind=kind).write(3, make_state(3), {})
        for name in (STATE_FILE, MANIFEST):
            tags = boto3.client("s3").get_object_tagging(
                Bucket=s3_bucket, Key=f"spotctl/jobs/demo/{prefix}/step-3/{name}"
            )["TagSet"]
            assert tags == [{"Key": "spotctl:kind", "Value": kind}], (prefix, name)
    pointer = boto3.client("s3").get_object_tagging(Bucket=s3_bucket, Key=f"spotctl/jobs/demo/checkpoints/{POINTER}")[
        "TagSet"
    ]
    assert pointer == []  # the pointer is tiny and tells where the newest is: never expired by age


@pytest.mark.parametrize(
    "manifest",
    [
        b"[1, 2]",
        b"\x89PNG",
        json.dumps({"files": {STATE_FILE: {"size": "big", "sha256": "x"}}}).encode(),
        b"",
        "folder",
    ],
)
@pytest.mark.parametrize("pointer", [b'{"step": true}', b'{"step": "8"}', b"[8]", "folder", None])
def test_an_unreadable_manifest_or_pointer_falls_back_to_the_previous_checkpoint(tmp_path, manifest, pointer):
    """Bug: a newest manifest that was JSON but no checkpoint's (a list, a wrong type) raised in
    load; one that was no JSON made the run start from step 0 although step 4 was committed."""
    storage = Storage(str(tmp_path / "job"))
    ckpt = Checkpointer(storage, keep=5)
    for step in (4, 8):
        ckpt.save(step, lambda step=step: make_state(step), force=True)
        ckpt.wait()
    path = tmp_path / "job" / "checkpoints" / "step-8" / MANIFEST
    path.unlink()
    path.mkdir() if manifest == "folder" else path.write_bytes(manifest)
    target = tmp_path / "job" / "checkpoints" / POINTER
    if pointer == "folder":
        target.unlink()
        target.mkdir()
    elif pointer is not None:
        target.write_bytes(pointer)
    committed, loaded = Checkpointer(storage).load_latest()
    assert (committed.step, loaded["step"]) == (4, 4)
