"""`spotctl tensorboard`: the trainer's segments of a resumed job, synced from S3 (moto) incrementally
and read back by TensorBoard's EventAccumulator as one run, one value per step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator.jobs.tensorboard import viewer_command
from trainer.job.spec import TensorBoardSpec
from trainer.job.storage import Storage

ROOT = "s3://spotctl-test/spotctl"


def attempt(tmp_path: Path, number: int, resumed: int, last: int, value: float) -> int:
    """One attempt's event log: the trainer's writer, uploading to the job's prefix on S3."""
    from trainer.tensorboard import EventLog

    events = EventLog(Storage(f"{ROOT}/jobs/j1"), number, TensorBoardSpec(), local_dir=tmp_path / f"a{number}")
    events.begin(resumed)
    for step in range(resumed + 1, last + 1):
        events.record("step", {"step": step, "loss": value})
    assert events.close()
    return events.uploaded_bytes


def test_a_resumed_jobs_events_sync_incrementally_and_read_as_one_run(s3_bucket, spotctl, tmp_path):
    first = attempt(tmp_path, 1, 0, 10, 1.0)  # killed after logging step 10; its checkpoint was step 6
    second = attempt(tmp_path, 2, 6, 12, 2.0)
    folder = tmp_path / "tb" / "j1"
    code, out, err = spotctl("tensorboard", "j1", "--storage", ROOT, "--sync-only", "--dir", str(tmp_path / "tb"))
    assert (code, err) == (0, "")
    assert out == f"j1: 2 new segments ({first + second:,} bytes), 2 in {folder}\n"

    events = EventAccumulator(str(folder))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, 1.0) for s in range(1, 7)] + [
        (s, 2.0) for s in range(7, 13)
    ]

    third = attempt(tmp_path, 3, 12, 14, 3.0)
    code, out, _ = spotctl(
        "tensorboard", "j1", "--storage", ROOT, "--sync-only", "--dir", str(tmp_path / "tb"), "--json"
    )
    assert code == 0 and '"new": 1' in out and f'"new_bytes": {third}' in out and '"segments": 3' in out
    code, out, _ = spotctl("tensorboard", "j1", "--storage", ROOT, "--sync-only", "--dir", str(tmp_path / "tb"))
    assert out == f"j1: 0 new segments (0 bytes), 3 in {folder}\n"  # nothing fetched twice


def test_a_job_without_events_says_so(s3_bucket, spotctl, tmp_path):
    Storage(f"{ROOT}/jobs/quiet").write_bytes("status/heartbeat.json", b"{}")
    code, out, _ = spotctl("tensorboard", "quiet", "--storage", ROOT, "--sync-only", "--dir", str(tmp_path / "tb"))
    assert code == 0
    assert (
        out
        == "quiet: no TensorBoard events yet (the trainer uploads a segment every train.tensorboard.segment_seconds)\n"
    )


def test_without_tensorboard_installed_the_error_names_the_extra(s3_bucket, spotctl, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    code, _, err = spotctl("tensorboard", "j1", "--storage", ROOT, "--no-open")
    assert code == 1
    assert "TensorBoard is not installed" in err and "pip install 'spotctl[tensorboard]'" in err


def test_several_jobs_are_one_run_each_named_by_the_job():
    command = viewer_command({"a-1": Path("/t/a-1"), "b-2": Path("/t/b-2")}, 6007)
    assert command[-2:] == ["--logdir_spec", "a-1:/t/a-1,b-2:/t/b-2"] and "6007" in command
    assert viewer_command({"a-1": Path("/t/a-1")}, 6006)[-2:] == ["--logdir", "/t/a-1"]
