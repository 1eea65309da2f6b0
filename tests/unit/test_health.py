"""GPU health: the orchestrator's flags from a heartbeat (orchestrator.jobs.health) and the trainer's rolling
window that feeds them (trainer.reporting.Reporter)."""

from __future__ import annotations

import json

import pytest

from orchestrator.jobs.health import LOGS_HINT, Flag, duration, health_flags
from trainer.job.documents import Heartbeat
from trainer.job.storage import Storage
from trainer.reporting import Reporter


def beat(**fields) -> Heartbeat:
    """A heartbeat of attempt 1, training for a full window at 12 % GPU, cause unknown."""
    return Heartbeat(
        **{
            "attempt": 1,
            "phase": "training",
            "health_window_s": 300.0,
            "gpu_util_window_pct": 12.0,
            "gpu_mem_window_fraction": 0.8,
            "gpu_mem_total_gib": 24.0,
            "data_wait_window": 0.1,
            "batch_size": 32,
            "data_workers": 4,
            **fields,
        }
    )


def flags(heartbeat, age=10.0, running_for=3600.0, running=True, attempt=None) -> list[tuple]:
    return [(f.name, f.message, f.hint) for f in health_flags(heartbeat, running, age, running_for, attempt)]


# ------------------------------------------------------------------------------------------ stalled
def test_stalled_when_the_heartbeat_is_old():
    assert flags(beat(gpu_util_window_pct=90.0), age=312.0) == [
        ("stalled", "no heartbeat for 5m 12s while the instance runs", LOGS_HINT)
    ]


def test_stalled_when_no_heartbeat_came_after_launch():
    assert flags(None, age=None, running_for=180.0) == [("stalled", "no heartbeat yet, 3m after launch", LOGS_HINT)]


def test_an_earlier_attempts_heartbeat_does_not_count():
    assert flags(beat(attempt=1), age=5.0, running_for=200.0, attempt=2) == [
        ("stalled", "no heartbeat from attempt 2 yet, 3m 20s after launch", LOGS_HINT)
    ]
    assert flags(beat(attempt=1), age=5.0, running_for=60.0, attempt=2) == []  # nor does it say anything about the GPU


def test_not_stalled_right_after_launch_or_when_the_instance_is_gone():
    assert flags(None, age=None, running_for=60.0) == []
    assert flags(beat(gpu_util_window_pct=90.0), age=500.0, running_for=100.0) == []
    assert flags(None, age=None, running=False) == []
    assert flags(beat(), age=500.0, running=False) == []


# ------------------------------------------------------------------------------------- low GPU util
def test_low_util_data_bound():
    assert flags(beat(data_wait_window=0.64)) == [
        (
            "low_gpu_util",
            "GPU at 12% over the last 5 min; data-bound: the loop waits for batches 64% of the time",
            "raise train.data.workers (now 4)",
        )
    ]
    assert flags(beat(data_wait_window=0.64, data_workers=None))[0][2] == "raise train.data.workers"


def test_low_util_small_batch():
    assert flags(beat(gpu_mem_window_fraction=0.13)) == [
        (
            "low_gpu_util",
            "GPU at 12% over the last 5 min; small batch: 3.1 of 24 GiB GPU memory used",
            "raise train.batch_size (now 32)",
        )
    ]
    assert flags(beat(gpu_mem_window_fraction=0.13, gpu_mem_total_gib=None, batch_size=None)) == [
        (
            "low_gpu_util",
            "GPU at 12% over the last 5 min; small batch: 13% of the GPU memory used",
            "raise train.batch_size",
        )
    ]


def test_low_util_cause_unclear():
    assert flags(beat()) == [
        (
            "low_gpu_util",
            "GPU at 12% over the last 5 min; neither data loading nor batch size explains it",
            "profile a few steps (torch.profiler) to see where the time goes",
        )
    ]
    assert flags(beat(data_wait_window=None, gpu_mem_window_fraction=None))[0][1].endswith(
        "neither data loading nor batch size explains it"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"health_window_s": 200.0},  # too short to tell
        {"gpu_util_window_pct": None, "gpu_mem_window_fraction": None},  # no GPU telemetry
        {"gpu_util_window_pct": 30.0},  # at the threshold is fine
        {"phase": "validating"},
        {"phase": "downloading data"},
    ],
    ids=["window too short", "no GPU telemetry", "at threshold", "validating", "downloading"],
)
def test_no_low_util_flag(fields):
    assert flags(beat(**fields)) == []


def test_window_slack_and_flag_dict():
    [flag] = health_flags(beat(health_window_s=290.0), True, 10.0, 3600.0)
    assert flag.as_dict() == {"name": "low_gpu_util", "message": flag.message, "hint": flag.hint}
    assert Flag("stalled", "m", None).as_dict() == {"name": "stalled", "message": "m", "hint": None}


def test_duration_reads_like_speech():
    assert [duration(s) for s in (45, 180, 312, 3900)] == ["45s", "3m", "5m 12s", "1h 05m"]


# ----------------------------------------------------------------------------- the trainer's window
class FakeGpu:
    def __init__(self):
        self.next: dict = {}

    def start(self):
        return self

    def close(self):
        pass

    def read_and_reset(self) -> dict:
        return dict(self.next)


def test_reporter_window_averages_the_last_five_minutes_of_training(tmp_path):
    now = [1000.0]
    gpu = FakeGpu()
    reporter = Reporter(Storage(str(tmp_path)), attempt=1, gpu=gpu, clock=lambda: now[0])

    def sample(at: float, util, used, wait=None, **status) -> dict:
        now[0] = 1000.0 + at
        gpu.next = {"gpu_util_pct": util, "gpu_mem_used_gib": used, "gpu_mem_total_gib": None if used is None else 20.0}
        reporter.update(**status)
        if wait is not None:
            reporter.update(data_wait_fraction=wait)
        return reporter.heartbeat()

    # Before training nothing is sampled.
    first = sample(0, 5.0, 1.0, phase="downloading data")
    assert (
        first["health_window_s"],
        first["gpu_util_window_pct"],
        first["gpu_mem_window_fraction"],
        first["data_wait_window"],
    ) == (0.0, None, None, None)
    assert first["gpu_util_pct"] == 5.0  # the per-interval figures are unchanged

    one = sample(10, 10.0, 2.0, phase="training")  # no data-wait figure yet
    assert (
        one["health_window_s"],
        one["gpu_util_window_pct"],
        one["gpu_mem_window_fraction"],
        one["data_wait_window"],
    ) == (0.0, 10.0, 0.1, None)
    sample(160, 20.0, 4.0, wait=0.2)
    sample(200, 90.0, 18.0, phase="validating")  # validation idles or fills the GPU by design: not sampled
    three = sample(310, None, None, wait=0.4, phase="training")  # an interval without GPU figures
    assert three["health_window_s"] == 300.0
    assert (
        three["gpu_util_window_pct"] == 15.0
        and three["gpu_mem_window_fraction"] == 0.15
        and three["data_wait_window"] == pytest.approx(0.3)
    )

    # The sample at 10 s is now more than 300 s old.
    four = sample(311, 30.0, 6.0)
    assert four["health_window_s"] == 151.0
    assert (
        four["gpu_util_window_pct"] == 25.0
        and four["gpu_mem_window_fraction"] == 0.25
        and four["data_wait_window"] == pytest.approx(0.333)
    )


def test_reporter_window_without_a_gpu(tmp_path):
    now = [0.0]
    gpu = FakeGpu()
    gpu.next = {
        "gpu_count": None,
        "gpu_util_pct": None,
        "gpu_mem_used_gib": None,
        "gpu_mem_total_gib": None,
        "gpu_power_w": None,
    }
    reporter = Reporter(Storage(str(tmp_path)), attempt=1, gpu=gpu, clock=lambda: now[0])
    reporter.update(phase="training", data_wait_fraction=0.5)
    for at in (0, 15, 30):
        now[0] = at
        heartbeat = reporter.heartbeat()
    assert (
        heartbeat["health_window_s"] == 30.0
        and heartbeat["gpu_util_window_pct"] is None
        and heartbeat["gpu_mem_window_fraction"] is None
    )
    assert heartbeat["data_wait_window"] == 0.5
    assert health_flags(Heartbeat.model_validate(heartbeat), True, 5.0, 3600.0) == []


# ------------------------------------------------------------------------------------- chance level
def test_a_run_no_better_than_guessing_is_at_chance_level():
    from trainer.reporting import chance_level

    history = [{"epoch": 1, "val_acc1": 0.30}, {"epoch": 2, "val_acc1": 0.3333}, {"epoch": 3, "val_acc1": 0.31}]
    assert chance_level(history, num_classes=3, val_images=900) == {
        "name": "chance_level",
        "message": "validation accuracy 33.3% (best epoch) is chance level for 3 classes (33.3%): at most 1.5x chance",
        "hint": "check that the class folders hold the right images, lower or raise optimizer.lr, train longer, "
        "or give more validation images",
    }


def test_above_the_margin_a_small_validation_set_can_still_be_luck():
    from trainer.reporting import binomial_tail, chance_level

    # 5 of 9 right with 3 classes (56 %, 1.7x chance): guessing does that 14.5 % of the time.
    assert round(binomial_tail(5, 9, 1 / 3), 3) == 0.145
    warning = chance_level([{"val_acc1": 5 / 9}], num_classes=3, val_images=9)
    assert warning["message"] == (
        "validation accuracy 55.6% (best epoch) is chance level for 3 classes (33.3%): "
        "guessing scores as well 14% of the time on 9 images"
    )
    assert chance_level([{"val_acc1": 7 / 9}], num_classes=3, val_images=9) is None  # p 0.8 %: learned
    assert chance_level([{"val_acc1": 0.55}], num_classes=3, val_images=900) is None  # significant, above 1.5x


def test_nothing_to_judge_without_a_validation_accuracy():
    from trainer.reporting import chance_level

    assert chance_level([], 3, 9) is None and chance_level([{"val_loss": 1.1}], 3, 9) is None


def test_a_final_warning_is_a_health_flag_of_a_finished_job_not_a_failure():
    from orchestrator.jobs.health import job_health
    from orchestrator.jobs.status import status_document
    from tests.unit.jobs import attempt, final, record, view
    from trainer.job.documents import Final, JobState

    warned = {"name": "chance_level", "message": "validation accuracy 33.3% ...", "hint": "check the data"}
    said = Final.parse(json.dumps({"outcome": "succeeded", "attempt": 1, "step": 18, "warnings": [warned]}))
    done = view(record(attempt(end="succeeded")), said=said)
    assert done.state == JobState.SUCCEEDED
    assert job_health(done) == [Flag("chance_level", "validation accuracy 33.3% ...", "check the data")]
    document = status_document(done)
    assert document["state"] == "succeeded" and document["health"] == [warned] and not document["stalled"]
    assert document["final"]["warnings"] == [warned]
    assert job_health(view(record(attempt(end="succeeded")), said=final("succeeded"))) == []
