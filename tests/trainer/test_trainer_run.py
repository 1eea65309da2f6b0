"""`python -m trainer run --job URL` end to end: what it writes for the orchestrator, on a local folder
and on S3 (moto server), how it stops (spot notice, rebalance, control/stop), and how it fails."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import boto3
import pytest
import torch
import torchvision

from testbed.harness import FakeImds
from testbed.trainer_runs import (
    exists,
    kill_when,
    read_json,
    run_trainer,
    start_trainer,
    trainer_env,
    wait_for,
    write_job,
)
from trainer.run import EXIT_BAD_SPEC, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_STOPPED, EXIT_SUCCEEDED, run
from trainer.telemetry import GpuMonitor


@pytest.fixture
def dataset(image_folder):
    return image_folder(per_class={"train": 12, "val": 3})


@pytest.fixture
def in_process(trainer_in_process):
    """Run the trainer inside the test (fast)."""
    return lambda job: run(str(job), heartbeat_seconds=0.2)


def lines(prefix: Path, folder: str) -> list[dict]:
    return [
        json.loads(line) for part in sorted((prefix / folder).glob("*.jsonl")) for line in part.read_text().splitlines()
    ]


def test_a_storage_that_refuses_deletes_still_trains_to_the_end(tmp_path, dataset, in_process, monkeypatch):
    """Retention cannot delete old checkpoints (no s3:DeleteObject): the run succeeds, the heartbeat counts it."""
    import trainer.run
    from testbed.trainer_runs import RefusingDeletes

    monkeypatch.setattr(trainer.run, "Storage", RefusingDeletes)
    job = write_job(tmp_path / "job.yaml", "./runs", dataset.split("train"), dataset.split("val"), name="no-deletes")
    assert in_process(job) == EXIT_SUCCEEDED
    prefix = tmp_path / "runs" / "jobs" / "no-deletes"
    assert json.loads((prefix / "status/final.json").read_text())["outcome"] == "succeeded"
    beat = json.loads((prefix / "status/heartbeat.json").read_text())
    kept, best = (
        [p for p in (prefix / folder).iterdir() if p.name.startswith("step-")] for folder in ("checkpoints", "best")
    )
    assert (
        len(kept) > 2 and beat["checkpoints_not_deleted"] == len(kept) - 2 + len(best) - 1
    )  # keep: 2 (best/: 1); the rest could not go


def test_a_local_run_writes_what_the_orchestrator_reads(tmp_path, dataset, in_process, capsys):
    job = write_job(tmp_path / "job.yaml", "./runs", dataset.split("train"), dataset.split("val"), name="local-run")
    assert in_process(job) == EXIT_SUCCEEDED
    prefix = tmp_path / "runs" / "jobs" / "local-run"

    final = json.loads((prefix / "status/final.json").read_text())
    assert (
        final["outcome"] == "succeeded"
        and final["attempt"] == 1
        and final["step"] == 18
        and final["epochs_completed"] == 3
    )
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3] and final["best"]["metric"] == "val_acc1"
    # 3 epochs of 32-pixel shapes from random weights learn nothing yet: 3 of 9 right, as guessing does.
    assert final["warnings"] == [
        {
            "name": "chance_level",
            "message": "validation accuracy 33.3% (best epoch) is chance level for 3 classes (33.3%): at most 1.5x chance",
            "hint": "check that the class folders hold the right images, lower or raise optimizer.lr, train longer, "
            "or give more validation images",
        }
    ]
    beat = json.loads((prefix / "status/heartbeat.json").read_text())
    assert beat["phase"] == "done" and beat["step"] == 18 and beat["steps_per_epoch"] == 6 and beat["total_steps"] == 18
    assert beat["images_per_sec"] > 0 and 0 <= beat["data_wait_fraction"] <= 1 and beat["last_checkpoint_step"] == 18
    if not GpuMonitor().available:
        assert beat["gpu_util_pct"] is None and beat["gpu_mem_used_gib"] is None  # no GPU: nulls, no error

    records = lines(prefix, "metrics")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]  # every epoch
    assert {"loss", "acc1", "lr", "images_per_sec"} <= set(next(r for r in records if r["kind"] == "step"))
    log = (prefix / "logs/attempt-1.log").read_text()
    assert "succeeded after 18 steps" in log and "WARNING validation accuracy 33.3% (best epoch) is chance level" in log
    setup = [
        line.split(" INFO ", 1)[1]
        for line in log.splitlines()
        if " INFO model: " in line or " INFO optimizer: " in line or " INFO training: " in line
    ]
    assert setup == [
        "model: mobilenet_v3_small, weights none (random init)",
        "model: head classifier.3 replaced by a new Linear 1024 -> 3 features",
        f"model: {sum(p.numel() for p in torchvision.models.mobilenet_v3_small(num_classes=3).parameters()):,} trainable and 0 frozen parameters (freeze: none)",
        setup[3],
        setup[4],
    ]
    assert setup[4].startswith("training: batch size 6, AMP ") and setup[4].endswith(
        ", 0 data workers, on cuda" if torch.cuda.is_available() else " off (fp32), 0 data workers, on cpu"
    )
    assert setup[3].startswith("optimizer: sgd, 1 param group(s): default lr 0.05 (weight decay 0.0001, ")

    committed = sorted(p.parent.name for p in (prefix / "checkpoints").glob("step-*/MANIFEST.json"))
    assert committed == ["step-16", "step-18"]  # keep: 2
    best = json.loads(next((prefix / "best").glob("step-*/MANIFEST.json")).read_text())
    assert best["classes"] == ["circle", "square", "triangle"] and best["metric"] == "val_acc1"

    capsys.readouterr()
    assert in_process(job) == EXIT_SUCCEEDED  # already done: nothing is redone
    assert "already succeeded" in capsys.readouterr().err
    assert not (prefix / "logs/attempt-2.log").exists()


def test_job_file_data_and_state_on_s3(s3_bucket, image_folder, tmp_path, aws):
    data = image_folder(f"s3://{s3_bucket}/datasets/shapes", per_class={"train": 10})
    local = write_job(
        tmp_path / "job.yaml", f"s3://{s3_bucket}/spotctl", data.split("train"), None, name="on-s3", train__epochs=1
    )
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="spotctl/jobs/on-s3-7f3a/job.yaml", Body=local.read_bytes())
    env = trainer_env({**aws.environment(), "SPOTCTL_CACHE_DIR": str(tmp_path / "cache"), "SPOTCTL_ATTEMPT": "2"})
    assert (
        run_trainer(f"s3://{s3_bucket}/spotctl/jobs/on-s3-7f3a/job.yaml", env, log=tmp_path / "out.log")
        == EXIT_SUCCEEDED
    ), (tmp_path / "out.log").read_text()

    prefix = f"s3://{s3_bucket}/spotctl/jobs/on-s3-7f3a"  # the id comes from where launch put the job file
    assert read_json(f"{prefix}/status/final.json")["outcome"] == "succeeded"
    assert exists(f"{prefix}/logs/attempt-2.log") and exists(f"{prefix}/best/LATEST.json")
    out = (tmp_path / "out.log").read_text()
    assert "27 training and 3 validation images" in out  # no val folder: a seeded 10% split
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 30


def test_rebalance_checkpoints_and_a_spot_notice_stops_then_resume_finishes(tmp_path, dataset):
    imds = FakeImds()
    try:
        job = write_job(
            tmp_path / "job.yaml",
            str(tmp_path / "runs"),
            dataset.split("train"),
            dataset.split("val"),
            name="noticed",
            train__checkpoint={"every_steps": None, "every_seconds": None},
        )
        prefix = tmp_path / "runs/jobs/noticed"
        env = trainer_env(
            {
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint,
                "SPOTCTL_IMDS_POLL_SECONDS": "0.1",
                "SPOTCTL_CACHE_DIR": str(tmp_path / "cache"),
            }
        )
        imds.rebalance = {"noticeTime": "2026-11-24T10:00:00Z"}
        process = start_trainer(str(job), env, log=tmp_path / "out.log")
        assert wait_for(lambda: (prefix / "checkpoints/LATEST.json").exists(), timeout=60)
        rebalance_step = json.loads((prefix / "checkpoints/LATEST.json").read_text())["step"]
        imds.instance_action = {"action": "terminate", "time": "2026-11-24T10:02:00Z"}
        assert process.wait(timeout=120) == EXIT_INTERRUPTED
    finally:
        imds.stop()
    out = (tmp_path / "out.log").read_text()
    assert "rebalance recommendation" in out and "spot interruption notice (terminate at 2026-11-24T10:02:00Z)" in out
    assert rebalance_step % 6 != 0  # not an epoch end: saved because of the recommendation
    interrupted_at = json.loads((prefix / "checkpoints/LATEST.json").read_text())["step"]
    assert interrupted_at > rebalance_step and "interrupted (spot interruption notice" in out
    assert json.loads((prefix / "status/heartbeat.json").read_text())["phase"] == "interrupted"
    assert not (prefix / "status/final.json").exists()  # interrupted is not an outcome: resume me

    assert (
        run_trainer(str(job), trainer_env({"SPOTCTL_CACHE_DIR": str(tmp_path / "cache")}), log=tmp_path / "out.log")
        == EXIT_SUCCEEDED
    )
    assert f"resumed from checkpoint step {interrupted_at}" in (tmp_path / "out.log").read_text()
    assert (prefix / "logs/attempt-2.log").exists()


def test_control_stop_checkpoints_and_exits_then_resume_continues(tmp_path, dataset):
    job = write_job(
        tmp_path / "job.yaml", str(tmp_path / "runs"), dataset.split("train"), dataset.split("val"), name="stopped"
    )
    prefix = tmp_path / "runs/jobs/stopped"
    env = trainer_env({"SPOTCTL_CACHE_DIR": str(tmp_path / "cache"), "SPOTCTL_HEARTBEAT_SECONDS": "0.2"})
    process = start_trainer(str(job), env, log=tmp_path / "out.log")
    assert wait_for(lambda: (prefix / "checkpoints/LATEST.json").exists(), timeout=60)
    (prefix / "control").mkdir()
    (prefix / "control/stop").write_text(json.dumps({"reason": "budget of $5.00 reached"}))
    assert process.wait(timeout=120) == EXIT_STOPPED
    final = json.loads((prefix / "status/final.json").read_text())
    assert final["outcome"] == "stopped" and final["reason"] == "budget of $5.00 reached"
    assert json.loads((prefix / "checkpoints/LATEST.json").read_text())["step"] == final["step"]

    (prefix / "control/stop").unlink()  # what `spotctl resume` does
    assert run_trainer(str(job), env, log=tmp_path / "out.log") == EXIT_SUCCEEDED
    assert json.loads((prefix / "status/final.json").read_text())["outcome"] == "succeeded"


# ------------------------------------------------------------------------------------------ failures
def failure(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "runs/jobs" / name / "status/final.json").read_text())


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_train", "train.data.train: {tmp}/nowhere does not exist; check the location"),
        (
            "class_mismatch",
            "train.data: train and val have different class folders (missing in val: triangle; only in val: star); give both the same classes",
        ),
        ("missing_weights", "weights {tmp}/weights.pt do not exist; check train.model.weights"),
        (
            "too_many_bad_images",
            "train.data: 1 of 47 images failed to decode, more than max_bad_images (1%) allows; e.g. {tmp}/data/train/circle/corrupt-",
        ),
    ],
)
def test_bad_input_fails_with_one_clear_message_in_final_json(tmp_path, image_folder, in_process, case, message):
    data = image_folder(per_class={"train": 12, "val": 3}, corrupt=2 if case == "too_many_bad_images" else 0)
    train, val, overrides = data.split("train"), data.split("val"), {}
    if case == "missing_train":
        train = str(tmp_path / "nowhere")
    if case == "class_mismatch":
        val = image_folder(tmp_path / "other", classes=("circle", "square", "star"), per_class={"val": 2}).split("val")
    if case == "missing_weights":
        overrides["train__model__weights"] = str(tmp_path / "weights.pt")
    job = write_job(tmp_path / "job.yaml", "./runs", train, val, name=case, **overrides)
    assert in_process(job) == EXIT_FAILED
    final = failure(tmp_path, case)
    assert final["outcome"] == "failed" and final["error"].startswith(message.format(tmp=tmp_path))
    assert final["traceback"] == []  # the message says it all
    assert (
        "failed: " + message.format(tmp=tmp_path) in (tmp_path / "runs/jobs" / case / "logs/attempt-1.log").read_text()
    )


def test_a_few_bad_images_are_skipped_and_counted(tmp_path, image_folder, in_process, caplog):
    data = image_folder(per_class={"train": 40, "val": 3}, corrupt=1)
    job = write_job(
        tmp_path / "job.yaml", "./runs", data.split("train"), data.split("val"), name="few-bad", train__epochs=1
    )
    assert in_process(job) == EXIT_SUCCEEDED
    log = (tmp_path / "runs/jobs/few-bad/logs/attempt-1.log").read_text()
    assert log.count("data: skipping") == 1 and "corrupt-0.png (UnidentifiedImageError" in log


def test_a_checkpoint_of_another_spec_is_refused_with_the_reason(tmp_path, dataset, in_process):
    job = write_job(
        tmp_path / "job.yaml", "./runs", dataset.split("train"), dataset.split("val"), name="changed", train__epochs=1
    )
    assert in_process(job) == EXIT_SUCCEEDED
    (tmp_path / "runs/jobs/changed/status/final.json").unlink()
    write_job(
        job,
        "./runs",
        dataset.split("train"),
        dataset.split("val"),
        name="changed",
        train__epochs=1,
        train__optimizer={"name": "sgd", "lr": 0.1},
    )
    assert in_process(job) == EXIT_FAILED
    error = failure(tmp_path, "changed")["error"]
    assert (
        "was written for another run: train.optimizer.lr: checkpoint has 0.05, this run has 0.1; use a new job name"
        in error
    )


def test_an_invalid_job_file_starts_nothing(tmp_path, in_process, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nstorage: ./runs\ntrain:\n  model: {name: resnet181}\n  data: {train: ./d}\n")
    assert in_process(job) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert f"{job}:4: train.model.name: unknown torchvision model 'resnet181'; did you mean 'resnet18'?" in err
    assert not (tmp_path / "runs").exists()


def test_sigterm_during_training_is_a_clean_interruption(tmp_path, dataset):
    job = write_job(
        tmp_path / "job.yaml", str(tmp_path / "runs"), dataset.split("train"), dataset.split("val"), name="term"
    )
    prefix = tmp_path / "runs/jobs/term"
    process = start_trainer(
        str(job), trainer_env({"SPOTCTL_CACHE_DIR": str(tmp_path / "cache")}), log=tmp_path / "out.log"
    )
    assert kill_when(process, lambda: (prefix / "checkpoints/LATEST.json").exists(), signal.SIGTERM) == EXIT_INTERRUPTED
    assert json.loads((prefix / "status/heartbeat.json").read_text())["phase"] == "interrupted"
    log = (prefix / "logs/attempt-1.log").read_text()
    stopped_at = int(log.split("interrupted (SIGTERM received) at step ")[1].split(";")[0])
    assert json.loads((prefix / "checkpoints/LATEST.json").read_text())["step"] == stopped_at  # no completed step lost


def test_a_stop_during_the_deciding_validation_resumes_exactly(tmp_path, dataset, in_process, monkeypatch):
    """Early stopping decides at epoch 2; a spot notice during that validation, then a resume, must end
    where the uninterrupted run ended (not train on), with the same weights."""
    from testbed.trainer_runs import final_state, tensor_digest
    from trainer.loop import Trainer

    stopping = {"metric": "val_acc1", "patience": 1, "min_delta": 1.0}  # no epoch after the first can improve
    reference = write_job(
        tmp_path / "ref.yaml",
        "./runs",
        dataset.split("train"),
        dataset.split("val"),
        name="ref",
        train__epochs=5,
        train__early_stopping=stopping,
    )
    assert in_process(reference) == EXIT_SUCCEEDED
    job = write_job(
        tmp_path / "cut.yaml",
        "./runs",
        dataset.split("train"),
        dataset.split("val"),
        name="cut",
        train__epochs=5,
        train__early_stopping=stopping,
    )
    original = Trainer.evaluate

    def noticed_during_validation(self, stop_early=False):
        if stop_early and self.position.epoch == 1:
            self.watcher.trigger("spot interruption notice (test)")
        return original(self, stop_early)

    monkeypatch.setattr(Trainer, "evaluate", noticed_during_validation)
    assert in_process(job) == EXIT_INTERRUPTED
    monkeypatch.setattr(Trainer, "evaluate", original)
    assert in_process(job) == EXIT_SUCCEEDED
    ref, cut = final_state(str(tmp_path / "runs/jobs/ref")), final_state(str(tmp_path / "runs/jobs/cut"))
    # Both end at step 12, after epoch 2. (The interrupted run's last checkpoint is the one taken
    # before that validation: a step is committed once, and validation changes no weights.)
    assert ref["position"]["step"] == cut["position"]["step"] == 12
    assert tensor_digest(cut["model"]) == tensor_digest(ref["model"])
    finals = [json.loads((tmp_path / f"runs/jobs/{name}/status/final.json").read_text()) for name in ("ref", "cut")]
    assert (
        finals[0]["history"] == finals[1]["history"]
        and finals[0]["best"] == finals[1]["best"]
        and finals[1]["epochs_completed"] == 2
    )


def test_a_missing_bucket_is_one_clear_line(tmp_path, dataset, aws, in_process, capsys):
    job = write_job(
        tmp_path / "job.yaml",
        "s3://no-such-bucket/spotctl",
        dataset.split("train"),
        dataset.split("val"),
        name="nowhere",
    )
    assert in_process(job) == EXIT_FAILED
    err = capsys.readouterr().err
    assert (
        err
        == "error: cannot use the job's storage s3://no-such-bucket/spotctl/jobs/nowhere (FileNotFoundError: bucket no-such-bucket does not exist); create it, or fix `storage` in the job file\n"
    )


def test_an_error_after_the_machine_starts_going_away_is_an_interruption(tmp_path, dataset, in_process, monkeypatch):
    """At shutdown SIGTERM reaches every process: the data workers may die before the loop stops.
    That is the machine going away (resume from the last checkpoint), not the job failing."""
    from trainer.loop import Trainer

    def dies_with_its_workers(self):
        self.watcher.interrupt.set()  # what the SIGTERM handler does
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated.")

    monkeypatch.setattr(Trainer, "fit", dies_with_its_workers)
    job = write_job(tmp_path / "job.yaml", "./runs", dataset.split("train"), dataset.split("val"), name="going-away")
    assert in_process(job) == EXIT_INTERRUPTED
    prefix = tmp_path / "runs" / "jobs" / "going-away"
    assert not (prefix / "status/final.json").exists()
    assert json.loads((prefix / "status/heartbeat.json").read_text())["phase"] == "interrupted"


def test_sigterm_to_the_whole_process_group_commits_the_step_and_resumes(tmp_path, dataset):
    """`timeout`, systemd at shutdown and Slurm signal the process group: the data workers get the
    SIGTERM too. They leave it to the trainer, which commits the step it is at and exits 75, quietly."""
    job = write_job(
        tmp_path / "job.yaml",
        str(tmp_path / "runs"),
        dataset.split("train"),
        dataset.split("val"),
        name="group",
        train__data__workers=2,
        train__checkpoint={"every_steps": None, "every_seconds": None, "keep": 2},
    )
    prefix = tmp_path / "runs/jobs/group"
    env = trainer_env({"SPOTCTL_CACHE_DIR": str(tmp_path / "cache"), "SPOTCTL_HEARTBEAT_SECONDS": "0.1"})
    process = start_trainer(str(job), env, log=tmp_path / "out.log", own_group=True)

    def past_a_few_steps() -> bool:
        try:
            return json.loads((prefix / "status/heartbeat.json").read_text()).get("step", 0) >= 2
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    assert wait_for(lambda: past_a_few_steps() or process.poll() is not None, timeout=120)
    assert process.poll() is None, (tmp_path / "out.log").read_text()
    os.killpg(process.pid, signal.SIGTERM)
    code = process.wait(timeout=120)
    out = (tmp_path / "out.log").read_text()
    assert code == EXIT_INTERRUPTED, out
    assert "Traceback" not in out and "killed by signal" not in out, out
    stopped_at = int(out.split("interrupted (SIGTERM received) at step ")[1].split(";")[0])
    assert 2 <= stopped_at < 18
    assert json.loads((prefix / "checkpoints/LATEST.json").read_text())["step"] == stopped_at
    assert json.loads((prefix / "status/heartbeat.json").read_text())["phase"] == "interrupted"

    assert run_trainer(str(job), env, log=tmp_path / "resumed.log") == EXIT_SUCCEEDED
    assert f"resumed from checkpoint step {stopped_at}" in (tmp_path / "resumed.log").read_text()


def test_a_data_worker_dying_after_the_stop_request_still_commits_the_step(tmp_path, dataset, trainer_in_process):
    """SIGTERM, then the data workers are killed outright (SIGKILL: the OOM killer, a shutdown's
    last word): their deaths come after the stop request, so the trainer still commits the step
    it reached instead of failing on "DataLoader worker ... killed by signal"."""
    import multiprocessing
    import threading

    from testbed.trainer_runs import wait_for

    job = write_job(
        tmp_path / "job.yaml",
        "./runs",
        dataset.split("train"),
        dataset.split("val"),
        name="workers-die",
        train__data__workers=2,
        train__checkpoint={"every_steps": None, "every_seconds": None, "keep": 2},
    )
    prefix = tmp_path / "runs/jobs/workers-die"

    def stop_then_kill_the_workers():
        def stepped() -> bool:
            try:
                return json.loads((prefix / "status/heartbeat.json").read_text()).get("step", 0) >= 2
            except (FileNotFoundError, json.JSONDecodeError):
                return False

        if wait_for(stepped, timeout=120):
            os.kill(os.getpid(), signal.SIGTERM)
            for worker in multiprocessing.active_children():
                os.kill(worker.pid, signal.SIGKILL)

    killer = threading.Thread(target=stop_then_kill_the_workers, daemon=True)
    killer.start()
    assert run(str(job), heartbeat_seconds=0.1) == EXIT_INTERRUPTED
    killer.join(timeout=10)
    log = (prefix / "logs/attempt-1.log").read_text()
    assert "Traceback" not in log, log
    stopped_at = int(log.split("interrupted (SIGTERM received) at step ")[1].split(";")[0])
    assert json.loads((prefix / "checkpoints/LATEST.json").read_text())["step"] == stopped_at >= 2


def test_a_data_worker_killed_mid_training_is_a_crash_reported_then_resumed(tmp_path, dataset, trainer_in_process):
    """The OOM killer picks the largest process, often a data worker: torch then raises "DataLoader
    worker ... is killed by signal: Killed" in the trainer. That is a crash, not the job's failure: a
    crash report, no final.json, exit 70; run again, it resumes from the last checkpoint."""
    import multiprocessing
    import threading

    from trainer.run import EXIT_CRASHED

    job = write_job(
        tmp_path / "job.yaml",
        "./runs",
        dataset.split("train"),
        dataset.split("val"),
        name="worker-killed",
        train__data__workers=2,
        train__checkpoint={"every_steps": 1, "every_seconds": None, "keep": 2},
    )
    prefix = tmp_path / "runs/jobs/worker-killed"

    def kill_a_worker():
        def checkpointed() -> bool:
            try:
                return (
                    json.loads((prefix / "status/heartbeat.json").read_text()).get("last_checkpoint_step") or 0
                ) >= 2
            except (FileNotFoundError, json.JSONDecodeError):
                return False

        if wait_for(checkpointed, timeout=120):
            os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    assert run(str(job), heartbeat_seconds=0.1, attempt=1) == EXIT_CRASHED
    killer.join(timeout=10)
    report = json.loads((prefix / "status/crash-attempt-1.json").read_text())
    assert (report["attempt"], report["process"], report["signal"]) == (1, "data worker", "SIGKILL")
    assert not (prefix / "status/final.json").exists()
    assert "crashed: RuntimeError: DataLoader worker (pid " in (prefix / "logs/attempt-1.log").read_text()
    saved = json.loads((prefix / "checkpoints/LATEST.json").read_text())["step"]
    assert run(str(job), heartbeat_seconds=0.1, attempt=2) == EXIT_SUCCEEDED
    assert json.loads((prefix / "status/heartbeat.json").read_text())["resumed_from_step"] == saved
