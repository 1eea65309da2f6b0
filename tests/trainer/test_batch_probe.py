"""`batch_size: auto`: the bisection, the probe's steps under an injected memory limit (a fake
out-of-memory above a byte budget), the cache, and the global batch kept across GPU types."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from trainer import batch_probe
from trainer.batch_probe import (
    MARGIN,
    RESOLUTION,
    ActivationBudget,
    BatchChoice,
    BatchProbeError,
    InjectedMemory,
    ProbeKey,
    ProbeSubject,
    choose,
    fits,
    search,
    with_margin,
)
from trainer.job import layout
from trainer.job.spec import TrainSpec
from trainer.job.storage import Storage


# ------------------------------------------------------------------------------------ the search
@pytest.mark.parametrize("limit", [2, 3, 5, 17, 64, 100, 127, 128, 129, 1000, 4097])
def test_the_bisection_lands_within_its_resolution_below_the_limit(limit):
    found = search(lambda size: size <= limit, bound=65536)
    assert found.fits <= limit < found.fails
    assert found.fits >= limit * (1 - 1 / RESOLUTION) - 1
    assert len(found.trials) <= 2 * math.ceil(math.log2(limit + 1)) + 2
    assert all(ok == (size <= limit) for size, ok in found.trials)
    # Halving from the first failure (Accelerate's way) would keep as little as half.
    assert with_margin(found) >= math.floor(limit * (1 - MARGIN) * (1 - 1 / RESOLUTION)) - 1


def test_a_bound_that_fits_is_taken_whole_and_tried_once():
    found = search(lambda size: True, bound=100)
    assert (found.fits, found.fails) == (100, None)
    assert [size for size, _ in found.trials] == [2, 4, 8, 16, 32, 64, 100]
    assert with_margin(found) == 100


def test_nothing_fitting_is_an_error_not_a_zero():
    with pytest.raises(BatchProbeError, match="auto: not even 2 images fit this GPU's memory; set a smaller"):
        search(lambda size: False, bound=256)


# -------------------------------------------------------------------------------- the probe steps
def tiny(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, num_classes),
    )  # fmt: skip


def subject(model: nn.Module | None = None) -> ProbeSubject:
    model = model or tiny()
    return ProbeSubject(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), None, 16, 3)


def bytes_per_image() -> int:
    """What the injected limit counts for one image of the tiny model at 16 px (measured, not assumed)."""
    budgets = []
    for size in (4, 8):
        budget = ActivationBudget(1 << 40)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(batch_probe, "memory_limit", budget)
            assert fits(subject(), size)
        budgets.append(budget.peak)
    assert budgets[1] > budgets[0]
    return (budgets[1] - budgets[0]) // 4


def test_the_probe_finds_the_largest_batch_an_injected_budget_allows_and_it_then_never_runs_out(monkeypatch):
    per_image = bytes_per_image()
    monkeypatch.setattr(batch_probe, "memory_limit", ActivationBudget(per_image * 40 + per_image // 2))
    found = batch_probe.probe(subject(), bound=65536)
    assert 39 <= found.fits <= 40 < found.fails <= 41
    chosen = with_margin(found)
    assert chosen == math.floor(found.fits * (1 - MARGIN))
    assert all(fits(subject(), chosen) for _ in range(3))  # zero out-of-memory afterwards
    assert not fits(subject(), 48)


def test_an_error_that_is_not_out_of_memory_is_raised():
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        fits(subject(nn.Sequential(nn.Flatten(), nn.Linear(5, 3))), 4)


def test_the_test_hook_takes_bytes_and_a_gpu_name_and_a_bad_value_stops_the_trainer_first(
    tmp_path, monkeypatch, capsys
):
    assert InjectedMemory.parse("3000000") == InjectedMemory(3000000)
    assert InjectedMemory.parse("3000000@Tesla T4") == InjectedMemory(3000000, "Tesla T4")
    for bad in ("3MB", "0", "-5", "12@", "@Tesla T4", "1.5e6"):
        with pytest.raises(ValueError, match=r"SPOTCTL_TEST_PROBE_MEMORY is .*: expected <bytes>\[@<GPU name>\]"):
            InjectedMemory.parse(bad)

    from testbed.trainer_runs import write_job
    from trainer.run import EXIT_FAILED, run

    job = write_job(tmp_path / "job.yaml", str(tmp_path / "runs"), str(tmp_path / "data"))
    monkeypatch.setenv("SPOTCTL_TEST_PROBE_MEMORY", "3MB")
    assert run(str(job)) == EXIT_FAILED
    assert "error: SPOTCTL_TEST_PROBE_MEMORY is '3MB': expected" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written


# ------------------------------------------------------------------------ the cache and the record
def auto_spec(batch_size) -> TrainSpec:
    return TrainSpec.model_validate(
        {"model": {"name": "resnet18", "weights": None}, "data": {"train": "/d"}, "batch_size": batch_size}
    )


def test_the_first_attempt_fixes_the_global_batch_and_a_smaller_gpu_accumulates(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path / "job"))
    per_image = bytes_per_image()
    built = []

    def build() -> ProbeSubject:
        built.append(1)
        return subject()

    big = ProbeKey("tiny", 16, "NVIDIA A10G", "torch.bfloat16", 1)
    monkeypatch.setattr(batch_probe, "memory_limit", ActivationBudget(per_image * 40))
    first = choose(auto_spec("auto"), storage, big, 1000, build, attempt=1)
    assert first == BatchChoice(global_batch=first.global_batch, max_batch_per_gpu=None)
    assert 36 <= first.global_batch <= 38 and built == [1]
    record = json.loads((tmp_path / "job" / layout.batch_probe(big.name)).read_text())
    assert record["per_gpu"] == first.global_batch and record["key"]["gpu"] == "NVIDIA A10G"
    assert json.loads((tmp_path / "job" / layout.BATCH_CHOSEN).read_text())["global_batch"] == first.global_batch

    # A recovery on the same GPU type reads the cache: no probe.
    assert choose(auto_spec("auto"), storage, big, 1000, build, attempt=2) == first and built == [1]

    # One on a GPU holding less keeps the global batch, in micro-batches of what it holds.
    small = ProbeKey("tiny", 16, "Tesla T4", "torch.float16", 1)
    monkeypatch.setattr(batch_probe, "memory_limit", ActivationBudget(per_image * 20))
    third = choose(auto_spec("auto"), storage, small, 1000, build, attempt=3)
    assert third.global_batch == first.global_batch and built == [1, 1]
    assert 17 <= third.max_batch_per_gpu <= 19


def test_the_cap_and_the_training_images_bound_the_search(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_probe, "memory_limit", ActivationBudget(1 << 40))
    key = ProbeKey("tiny", 16, "cpu", "None", 1)
    capped = choose(auto_spec({"auto": 12}), Storage(str(tmp_path / "a")), key, 1000, subject, attempt=1)
    assert capped == BatchChoice(12, None)
    few = choose(auto_spec("auto"), Storage(str(tmp_path / "b")), key, 10, subject, attempt=1)
    assert few == BatchChoice(10, None)
    two_ranks = ProbeKey("tiny", 16, "cpu", "None", 2)
    shared = choose(auto_spec({"auto": 12}), Storage(str(tmp_path / "c")), two_ranks, 1000, subject, attempt=1)
    assert shared == BatchChoice(12, None)  # 6 a rank, both tried and fit


# ---------------------------------------------------------------------------------- a real run
@pytest.mark.slow
def test_a_job_with_auto_batch_probes_once_and_a_recovery_on_a_smaller_gpu_keeps_the_global_batch(
    tmp_path, image_folder, trainer_in_process, monkeypatch
):
    """Attempt 1 probes (an injected budget stands for the GPU's memory) and fixes the global batch;
    attempt 2 on the same GPU type reads the cache; attempt 3 on a GPU holding less keeps the global
    batch in micro-batches."""
    from testbed.trainer_runs import final_state, probe_budget, write_job
    from trainer.run import EXIT_SUCCEEDED, run

    data = image_folder(per_class={"train": 8, "val": 2})
    job = write_job(
        tmp_path / "job.yaml", str(tmp_path / "runs"), data.split("train"), data.split("val"), name="auto",
        train__batch_size="auto", train__epochs=1, train__checkpoint={"every_steps": 1, "every_seconds": None},
    )  # fmt: skip
    prefix = tmp_path / "runs/jobs/auto"
    probe = batch_probe.probe
    probes = []
    monkeypatch.setattr(batch_probe, "probe", lambda subject, bound: probes.append(bound) or probe(subject, bound))

    monkeypatch.setattr(batch_probe, "memory_limit", ActivationBudget(probe_budget(12)))
    assert run(str(job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED
    chosen = json.loads((prefix / layout.BATCH_CHOSEN).read_text())
    assert 8 <= chosen["global_batch"] <= 12 and probes == [24]  # bound: the 24 training images
    assert final_state(str(prefix))["position"]["step"] == 24 // chosen["global_batch"]

    (prefix / "status/final.json").unlink()  # as if interrupted at its last step: attempt 2 resumes
    assert run(str(job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED
    assert probes == [24]  # read from the cache
    log2 = (prefix / "logs/attempt-2.log").read_text()
    assert "measured before on cpu" in log2 and f"global batch {chosen['global_batch']}" in log2

    (prefix / "status/final.json").unlink()
    monkeypatch.setattr(batch_probe, "gpu_name", lambda device: "Tesla T4")
    monkeypatch.setattr(batch_probe, "memory_limit", ActivationBudget(probe_budget(5)))
    assert run(str(job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED
    assert probes == [24, 24]
    log3 = (prefix / "logs/attempt-3.log").read_text()
    assert f"global batch {chosen['global_batch']}, at most " in log3 and "micro-batches per step" in log3
    assert json.loads((prefix / layout.BATCH_CHOSEN).read_text()) == chosen
