"""The trainer's pieces on their own: lr schedules, RNG state, metrics, early stopping, the interruption
watcher against a local IMDSv2 endpoint, telemetry without a GPU, and reporting."""

from __future__ import annotations

import io
import json
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from testbed.harness import FakeImds
from trainer import rng
from trainer.job.layout import CONTROL_STOP, HEARTBEAT
from trainer.job.spec import EarlyStoppingSpec, TrainSpec
from trainer.job.storage import Storage
from trainer.loop import amp_dtype, train_fingerprint
from trainer.metrics import RATE_WINDOW_S, EarlyStopping, Meter, MetricsLog, Throughput
from trainer.preemption import InterruptionWatcher
from trainer.reporting import Reporter
from trainer.schedule import build_scheduler, lr_multiplier
from trainer.telemetry import FIELDS, GpuMonitor


def train_spec(**scheduler) -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "model": {"name": "resnet18", "weights": None},
            "data": {"train": "/d"},
            "epochs": 10,
            "optimizer": {"lr": 0.1},
            "scheduler": scheduler,
        }
    )


# --------------------------------------------------------------------------------------- schedules
def test_warmup_then_cosine_down_to_min_lr():
    f = lr_multiplier(train_spec(name="cosine", warmup_epochs=1, min_lr=0.001), steps_per_epoch=10)
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.01)  # min_lr / lr at the last step
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_step_and_onecycle_shapes():
    step = lr_multiplier(train_spec(name="step", step_epochs=3, gamma=0.5), steps_per_epoch=10)
    assert [step(s) for s in (0, 29, 30, 60)] == [1.0, 1.0, 0.5, 0.25]
    one = lr_multiplier(train_spec(name="onecycle", pct_start=0.3), steps_per_epoch=10)
    assert one(0) == pytest.approx(1 / 25) and one(30) == pytest.approx(1.0)
    assert max(range(100), key=one) == 30 and one(100) == pytest.approx(1 / 25e4)


def test_scheduler_state_loads_with_weights_only():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 0.1}])
    scheduler = build_scheduler(optimizer, train_spec(warmup_epochs=1), steps_per_epoch=4)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_scheduler(
        torch.optim.SGD([{"params": [param], "lr": 0.1}]), train_spec(warmup_epochs=1), steps_per_epoch=4
    )
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.get_last_lr() == scheduler.get_last_lr() and fresh.last_epoch == 3


def test_rng_states_round_trip_through_a_weights_only_checkpoint():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    buffer = io.BytesIO()
    torch.save(rng.capture(), buffer)
    expected = (torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random())
    buffer.seek(0)
    rng.restore(torch.load(buffer, weights_only=True))
    assert (torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random()) == expected


# ------------------------------------------------------------------------------------------ metrics
def test_meter_counts_top1_and_top5():
    meter = Meter(torch.device("cpu"))
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 0], [0.0, 1, 2, 3, 4, 5, 9]])
    meter.add(torch.tensor(2.0), logits, torch.tensor([0, 0]))  # right; outside the top 5
    assert meter.read("val_") == {"val_loss": 2.0, "val_acc1": 0.5, "val_acc5": 0.5}
    meter.add(torch.tensor(4.0), logits, torch.tensor([3, 5]))  # both in the top 5, neither top 1
    assert meter.read("") == {"loss": 3.0, "acc1": 0.25, "acc5": 0.75}


@pytest.mark.parametrize("metric, values", [("val_acc1", [0.5, 0.6, 0.6, 0.55]), ("val_loss", [1.0, 0.8, 0.9, 0.85])])
def test_early_stopping_follows_the_metric_direction(metric, values):
    stopper = EarlyStopping(EarlyStoppingSpec(metric=metric, patience=2))
    new_best, stop = [], []
    for epoch, value in enumerate(values):
        new_best.append(stopper.update(value, epoch))
        stop.append(stopper.should_stop)
    assert new_best == [True, True, False, False] and stopper.best == values[1] and stopper.best_epoch == 1
    assert stop == [False, False, False, True]  # two epochs without improvement
    restored = EarlyStopping(stopper.spec)
    restored.load_state_dict(stopper.state_dict())
    assert restored.should_stop


def test_metrics_are_appended_as_new_objects(tmp_path):
    storage = Storage(str(tmp_path))
    metrics = MetricsLog(storage, attempt=2)
    metrics.record("step", step=1, loss=0.5)
    metrics.record("epoch", epoch=1, val_acc1=0.9)
    metrics.flush()
    metrics.flush()  # nothing new: no empty part
    metrics.record("step", step=2, loss=0.4)
    metrics.flush()
    assert storage.list("metrics") == ["a002-000001.jsonl", "a002-000002.jsonl"]
    first = [json.loads(line) for line in storage.read_bytes("metrics/a002-000001.jsonl").splitlines()]
    assert first == [
        {"kind": "step", "attempt": 2, "step": 1, "loss": 0.5},
        {"kind": "epoch", "attempt": 2, "epoch": 1, "val_acc1": 0.9},
    ]


def test_the_pace_is_the_last_minute_of_training_with_its_batch_waits():
    # One step per report: a step whose batch was prefetched took 0.2 s, one that waited for it 8 s.
    # Reported window by window that read 160 and 4 img/s for one attempt (the log and the heartbeat,
    # written at different moments, disagreed by 40x); over the minute it is one figure.
    pace = Throughput()
    at = 0.0
    for seconds, waited in [(8.0, 7.8), (0.2, 0.0)] * 5:
        at += seconds
        pace.add(at, seconds, 32, 1, waited)
    images_per_sec, data_wait, seconds_per_step = pace.read()
    assert images_per_sec == pytest.approx(320 / 41) and data_wait == pytest.approx(39 / 41)
    assert seconds_per_step == pytest.approx(4.1)
    pace.add(at + RATE_WINDOW_S + 1, 1.0, 32, 1, 0.0)  # after a long validation: the old minute is gone
    assert pace.read()[0] == pytest.approx(32.0)


def test_amp_is_off_on_cpu_unless_bf16_is_asked_for():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("fp16", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16


def test_the_fingerprint_ignores_what_cannot_change_the_result():
    base = train_spec()
    assert train_fingerprint(base) == train_fingerprint(
        base.model_copy(update={"checkpoint": base.checkpoint.model_copy(update={"keep": 9})})
    )
    assert train_fingerprint(base) == train_fingerprint(
        base.model_copy(update={"data": base.data.model_copy(update={"workers": 8})})
    )
    assert train_fingerprint(base) != train_fingerprint(base.model_copy(update={"epochs": 11}))


# ------------------------------------------------------------------------------- interruption watcher
@pytest.fixture
def imds():
    server = FakeImds()
    yield server
    server.stop()


def test_a_spot_notice_on_imds_sets_the_interrupt(imds):
    watcher = InterruptionWatcher(endpoint=imds.endpoint)
    watcher.poll_once(imds.endpoint)
    assert not watcher.interrupt.is_set() and not watcher.take_rebalance()
    imds.instance_action = {"action": "terminate", "time": "2026-11-24T10:00:00Z"}
    watcher.poll_once(imds.endpoint)
    assert watcher.interrupt.is_set() and "terminate at 2026-11-24T10:00:00Z" in watcher.reason
    assert (
        imds.requests[0] == "PUT /latest/api/token" and imds.requests.count("PUT /latest/api/token") == 1
    )  # token reused


def test_a_rebalance_recommendation_asks_for_one_checkpoint(imds):
    watcher = InterruptionWatcher(endpoint=imds.endpoint)
    imds.rebalance = {"noticeTime": "2026-11-24T10:00:00Z"}
    watcher.poll_once(imds.endpoint)
    watcher.poll_once(imds.endpoint)
    assert watcher.take_rebalance() and not watcher.take_rebalance()
    assert not watcher.interrupt.is_set()  # training goes on


def test_the_poller_runs_in_the_background_and_sigterm_also_interrupts(imds):
    watcher = InterruptionWatcher(endpoint=imds.endpoint, interval=0.05).start()
    try:
        imds.instance_action = {"action": "stop", "time": "now"}
        assert watcher.interrupt.wait(5)
    finally:
        watcher.close()
    plain = InterruptionWatcher(endpoint=imds.endpoint, interval=60).start()
    try:
        signal.raise_signal(signal.SIGTERM)
        assert plain.interrupt.is_set() and plain.reason == "SIGTERM received"
    finally:
        plain.close()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers handed back


def test_no_metadata_service_means_signals_only(monkeypatch):
    monkeypatch.delenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    watcher = InterruptionWatcher().start()
    watcher.close()
    assert watcher._thread is None


# --------------------------------------------------------------------------------- reporting, NVML
@pytest.mark.skipif(GpuMonitor().available, reason="this machine has a GPU")
def test_without_a_gpu_telemetry_fields_are_null():
    monitor = GpuMonitor().start()
    assert monitor.read_and_reset() == {name: None for name in FIELDS}
    monitor.close()


def test_heartbeat_and_control_stop(tmp_path):
    storage = Storage(str(tmp_path))
    reporter = Reporter(storage, attempt=3, interval=0.05).start()
    reporter.update(phase="training", step=7, loss=0.25, last_checkpoint_step=6, last_checkpoint_time=1.0)
    reporter.beat_now()
    storage.write_bytes(CONTROL_STOP, json.dumps({"reason": "budget reached"}).encode())
    assert reporter.stop_requested.wait(5) and reporter.stop_reason == "budget reached"
    reporter.close("stopped")
    beat = json.loads(storage.read_bytes(HEARTBEAT))
    assert (
        beat["phase"] == "stopped" and beat["attempt"] == 3 and beat["step"] == 7 and beat["last_checkpoint_step"] == 6
    )
    assert beat["last_checkpoint_age_s"] > 0 and beat["updated_at"].endswith("+00:00")
    assert set(FIELDS) <= set(beat)  # values or nulls, never missing


def test_the_next_attempt_counts_every_trace_of_earlier_ones(tmp_path, monkeypatch):
    from trainer.run import next_attempt

    monkeypatch.delenv("SPOTCTL_ATTEMPT", raising=False)
    storage = Storage(str(tmp_path))
    assert next_attempt(storage) == 1
    storage.write_bytes("logs/attempt-1.log", b"x")
    storage.write_bytes("logs/attempt-2.bootstrap.log", b"x")  # killed while installing
    assert next_attempt(storage) == 3
    storage.write_bytes("metrics/a004-000001.jsonl", b"{}")  # metrics flushed, log not yet shipped
    assert next_attempt(storage) == 5
    monkeypatch.setenv("SPOTCTL_ATTEMPT", "9")
    assert next_attempt(storage) == 9


# ------------------------------------------------------------------------------ memory high-water marks
def meminfo(path, total_kib: int, available_kib: int):
    path.write_text(f"MemTotal:       {total_kib} kB\nMemFree:        1 kB\nMemAvailable:   {available_kib} kB\n")
    return path


def test_the_hosts_memory_in_use_is_kept_at_its_highest_and_the_trainers_peak_is_the_kernels(tmp_path):
    from trainer.telemetry import HostMemory

    info = meminfo(tmp_path / "meminfo", 16 * 2**20, 12 * 2**20)  # 16 GiB, 4 in use
    memory = HostMemory(info)
    first = memory.read()
    assert (first["host_mem_total_gib"], first["host_mem_used_peak_gib"]) == (16.0, 4.0)
    meminfo(info, 16 * 2**20, 1 * 2**20)  # 15 in use: the OOM killer is near
    assert memory.read()["host_mem_used_peak_gib"] == 15.0
    meminfo(info, 16 * 2**20, 10 * 2**20)  # down again: the high-water mark stays
    assert memory.read()["host_mem_used_peak_gib"] == 15.0
    # The trainer's peak is the kernel's own high-water mark (VmHWM), in GiB whatever unit getrusage uses.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    assert memory.read()["mem_rss_peak_gib"] == pytest.approx(int(status["VmHWM"].split()[0]) / 2**20, abs=0.02)


def test_without_proc_meminfo_the_total_still_comes_from_sysconf(tmp_path):
    import os

    from trainer.telemetry import HostMemory

    read = HostMemory(tmp_path / "absent").read()
    assert read["host_mem_used_peak_gib"] is None
    assert read["host_mem_total_gib"] == round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 2)


def test_the_gpu_memory_peak_outlives_the_interval_it_was_seen_in():
    class Nvml:  # two GPUs whose memory in use is set by the test
        used = [0, 0]

        @staticmethod
        def nvmlDeviceGetUtilizationRates(handle):
            return type("U", (), {"gpu": 50})

        @classmethod
        def nvmlDeviceGetMemoryInfo(cls, handle):
            return type("M", (), {"used": cls.used[handle], "total": 24 * 2**30})

        @staticmethod
        def nvmlDeviceGetPowerUsage(handle):
            return 100_000

    monitor = GpuMonitor()
    monitor._nvml, monitor._handles, monitor._total_gib = Nvml, [0, 1], 48.0
    Nvml.used = [20 * 2**30, 22 * 2**30]
    monitor.sample()
    Nvml.used = [2 * 2**30, 2 * 2**30]
    monitor.sample()
    first = monitor.read_and_reset()
    assert (first["gpu_mem_used_gib"], first["gpu_mem_peak_gib"]) == (23.0, 42.0)  # the average, the peak
    monitor.sample()
    assert monitor.read_and_reset()["gpu_mem_peak_gib"] == 42.0
    assert monitor.read_and_reset()["gpu_mem_peak_gib"] == 42.0  # an interval without samples keeps it too


def test_the_heartbeat_carries_the_memory_high_water_marks(tmp_path):
    reporter = Reporter(Storage(str(tmp_path)), attempt=1)
    beat = reporter.heartbeat()
    assert beat["mem_rss_peak_gib"] > 0 and beat["host_mem_total_gib"] > 0
    assert {"host_mem_used_peak_gib", "gpu_mem_peak_gib"} <= set(beat)


# ------------------------------------------------------------------------------ a data worker killed
@pytest.mark.parametrize(
    ("error", "died"),
    [
        (RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "), "SIGKILL"),  # the OOM killer
        (RuntimeError("DataLoader worker (pid 4242) is killed by signal: Segmentation fault. "), "SIGSEGV"),
        (RuntimeError("DataLoader worker (pid(s) 4242, 4243) exited unexpectedly"), ""),  # torch does not say how
        (ValueError("bad image"), None),  # the job's own error: a failure
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), None),  # raised, with a traceback: a failure
    ],
)
def test_a_killed_data_worker_is_told_from_the_jobs_own_errors(error, died):
    from trainer.run import worker_death

    assert worker_death(error) == died
    try:  # as it reaches the trainer: raised again from another error
        try:
            raise error
        except Exception as inner:
            raise StopIteration("next batch") from inner
    except StopIteration as outer:
        assert worker_death(outer) == died


def test_a_killed_data_worker_leaves_a_crash_report_and_no_final_word(tmp_path):
    from trainer.job.documents import Crash
    from trainer.run import _record_crash

    storage = Storage(str(tmp_path))
    reporter = Reporter(storage, attempt=2, interval=60).start()
    _record_crash(
        storage, reporter, 2, RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed."), "SIGKILL"
    )
    report = json.loads(storage.read_bytes("status/crash-attempt-2.json"))
    assert Crash.dump(report) and {k: v for k, v in report.items() if k != "reported_at"} == {
        "attempt": 2,
        "process": "data worker",
        "signal": "SIGKILL",
    }
    assert not storage.exists("status/final.json")
    assert json.loads(storage.read_bytes(HEARTBEAT))["error"].startswith("RuntimeError: DataLoader worker (pid 7)")
