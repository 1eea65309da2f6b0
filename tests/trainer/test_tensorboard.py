"""The trainer's TensorBoard event files: closed segments uploaded once each under the job's
tensorboard/, read back with TensorBoard's own EventAccumulator, continuous and step-keyed across a
resumed job (what a killed attempt logged past its last checkpoint is dropped)."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from testbed.trainer_runs import write_job
from trainer.job import layout
from trainer.job.spec import TensorBoardSpec
from trainer.job.storage import Storage
from trainer.run import EXIT_STOPPED, EXIT_SUCCEEDED, run
from trainer.tensorboard import EventLog


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_killed_attempts_steps_past_its_checkpoint_give_way_to_the_resumed_attempts(tmp_path):
    storage = Storage(str(tmp_path / "job"))
    first = EventLog(storage, 1, TensorBoardSpec(), local_dir=tmp_path / "a1")
    first.begin(0)
    for step in range(1, 11):  # its last checkpoint was step 6; it was killed after logging step 10
        first.record("step", {"step": step, "loss": 1.0, "lr": 0.1})
        if step == 5:
            first.rotate()  # a timed rotation: two segments from this attempt
    assert first.close()
    second = EventLog(storage, 2, TensorBoardSpec(), local_dir=tmp_path / "a2")
    second.begin(6)
    for step in range(7, 13):
        second.record("step", {"step": step, "loss": 2.0, "lr": 0.1})
    second.telemetry({"step": 12, "gpu_util_pct": 97.0, "gpu_mem_used_gib": None})
    assert second.close()

    names = storage.list(layout.TENSORBOARD)
    assert names == [
        "events.out.tfevents.a001-000001",
        "events.out.tfevents.a001-000002",
        "events.out.tfevents.a002-000001",
    ]
    loss = scalars(tmp_path / "job" / layout.TENSORBOARD, "train/loss")
    assert loss == [(s, 1.0) for s in range(1, 7)] + [(s, 2.0) for s in range(7, 13)]
    assert scalars(tmp_path / "job" / layout.TENSORBOARD, "gpu/util_pct") == [(12, 97.0)]
    on_disk = sum((tmp_path / "job" / layout.TENSORBOARD / name).stat().st_size for name in names)
    assert first.uploaded_bytes + second.uploaded_bytes == on_disk  # each byte uploaded once
    assert not (tmp_path / "a1").exists() and not (tmp_path / "a2").exists()  # local segments cleaned up


def test_segments_rotate_on_time_and_size(tmp_path):
    now = [0.0]
    storage = Storage(str(tmp_path / "job"))
    events = EventLog(
        storage, 1, TensorBoardSpec(segment_seconds=60), local_dir=tmp_path / "local", clock=lambda: now[0]
    )
    events.record("step", {"step": 1, "loss": 1.0})
    now[0] = 61.0
    events.record("step", {"step": 2, "loss": 1.0})  # the segment is due: closed after this write
    events.record("step", {"step": 3, "loss": 1.0})
    assert events.close()
    assert len(storage.list(layout.TENSORBOARD)) == 2

    tiny = EventLog(Storage(str(tmp_path / "job2")), 1, TensorBoardSpec(segment_mib=1e-5), local_dir=tmp_path / "l2")
    for step in range(1, 4):
        tiny.record("step", {"step": step, "loss": 1.0})
    assert tiny.close()
    assert len(Storage(str(tmp_path / "job2")).list(layout.TENSORBOARD)) == 3  # ~10 bytes a segment at most


def test_a_stopped_then_resumed_run_plots_every_step_once(tmp_path, image_folder, trainer_in_process):
    data = image_folder(per_class={"train": 12, "val": 3})
    job = write_job(
        tmp_path / "job.yaml", "./runs", data.split("train"), data.split("val"), name="plotted", train__epochs=2
    )
    prefix = tmp_path / "runs/jobs/plotted"
    (prefix / "control").mkdir(parents=True)
    (prefix / "control/stop").write_text(json.dumps({"reason": "test"}))  # seen at the first heartbeat: an early stop
    assert run(str(job), heartbeat_seconds=0.2) == EXIT_STOPPED
    stopped_at = json.loads((prefix / "status/final.json").read_text())["step"]
    assert stopped_at < 6 and (prefix / "tensorboard").is_dir()  # the notice/stop path uploaded its segment
    (prefix / "control/stop").unlink()
    assert run(str(job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED

    names = sorted(p.name for p in (prefix / "tensorboard").iterdir())
    assert [n.split(".")[-1][:4] for n in names][0] == "a001" and names[-1].startswith("events.out.tfevents.a002")
    steps = [s for s, _ in scalars(prefix / "tensorboard", "train/lr")]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # 6 images a batch, 36 images: 6 steps an epoch
    assert [s for s, _ in scalars(prefix / "tensorboard", "val/acc1")] == [6, 12]
    assert all(v >= 0 for _, v in scalars(prefix / "tensorboard", "perf/images_per_sec"))


def test_tensorboard_off_writes_nothing(tmp_path, image_folder, trainer_in_process):
    data = image_folder(per_class={"train": 6, "val": 3})
    job = write_job(
        tmp_path / "job.yaml",
        "./runs",
        data.split("train"),
        data.split("val"),
        name="quiet",
        train__epochs=1,
        train__tensorboard={"enabled": False},
    )
    assert run(str(job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED
    assert not (tmp_path / "runs/jobs/quiet/tensorboard").exists()
