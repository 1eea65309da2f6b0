"""The training techniques keep the trainer's bar: a run SIGKILLed at a random instant and resumed
ends bitwise equal to an uninterrupted one, each technique on its own and all at once (the
torchvision-v2 recipe's label smoothing, TrivialAugment, random erasing, mixup/cutmix and EMA, with
gradient accumulation and distillation from a teacher's weights file), with 0 and 2 data workers.
The EMA's averaged weights are compared too. `torch.compile` trains and resumes (not compared
bitwise: compiled kernels may round differently from the eager reference).
"""

from __future__ import annotations

import shutil
import signal

import pytest

from testbed.trainer_runs import (
    exists,
    final_state,
    interrupt_then_finish,
    kill_when,
    optimizer_digest,
    run_trainer,
    start_trainer,
    teacher_file,
    tensor_digest,
    trainer_env,
    write_job,
)

pytestmark = pytest.mark.slow

EPOCHS, STEPS = 2, 16  # 8 steps per epoch, a checkpoint every 2 steps

TEACHER = "<the module's teacher weights file>"  # filled in by `overrides`
DISTILL = {"teacher": {"model": "mobilenet_v3_small", "weights": TEACHER}, "alpha": 0.7}
# Micro-batches of 2 of the batch of 6 (not 1: at 32 px mobilenet's last BatchNorm sees 1x1 maps).
ACCUMULATION = {"train__max_batch_per_gpu": 2}

TECHNIQUES = {
    "mixup+cutmix": {"train__data__augmentation": {"color_jitter": 0.2, "mixup_alpha": 0.2, "cutmix_alpha": 1.0}},
    "trivialaugment+erasing": {
        "train__data__augmentation": {"color_jitter": 0.2, "policy": "trivialaugment", "random_erasing": 0.5}
    },
    "ema": {"train__ema": {"every_steps": 2, "decay": 0.99}},
    "no-decay-norm-bias": {"train__optimizer__norm_weight_decay": 0.0, "train__optimizer__bias_weight_decay": 0.0},
    "accumulation": ACCUMULATION,
    "distill": {"train__distill": DISTILL},
    # every technique at once: the recipe (label smoothing, TrivialAugment, erasing, mixup/cutmix, EMA,
    # no decay on norm layers) with EMA updates frequent enough to matter in 16 steps, accumulation and
    # a teacher running online on each mixed micro-batch
    "all": {
        "train__recipe": "torchvision-v2",
        "train__ema": {"every_steps": 2},
        "train__optimizer__bias_weight_decay": 0.0,
        **ACCUMULATION,
        "train__distill": DISTILL,
    },
}
# Each technique alone on one process with 2 workers; all at once with 0 and 2.
CASES = [(name, 2) for name in TECHNIQUES if name not in ("all", "accumulation")] + [
    ("accumulation", 0),
    ("all", 0),
    ("all", 2),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from testbed.harness import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("recipe-data") / "data", per_class={"train": 16, "val": 4})


@pytest.fixture(scope="module")
def teacher(dataset, tmp_path_factory) -> tuple[str, str]:
    """A mobilenet_v3_small teacher of another seed, as a weights file: (path, sha256)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    return teacher_file(path, classes=len(dataset.classes), seed=3, name="mobilenet_v3_small")


_references: dict[str, tuple[str, str, str | None]] = {}


def env() -> dict[str, str]:
    # One torch thread: several trainers share the test machine's cores, and oversubscribed OpenMP
    # threads slow each of them down tenfold (every run here, reference included, uses the same).
    return trainer_env({"OMP_NUM_THREADS": "1"})


def digests(state: dict) -> tuple[str, str, str | None]:
    ema = state.get("ema")
    return tensor_digest(state["model"]), optimizer_digest(state["optimizer"]), tensor_digest(ema) if ema else None


def overrides(name: str, teacher: str) -> dict:
    found = dict(TECHNIQUES[name])
    if "train__distill" in found:
        found["train__distill"] = {**DISTILL, "teacher": {**DISTILL["teacher"], "weights": teacher}}
    return found


def technique_job(root, dataset, teacher: str, name: str, job: str, **more):
    return write_job(
        root / "job.yaml", str(root / "runs"), dataset.split("train"), dataset.split("val"), name=job,
        train__epochs=EPOCHS, **overrides(name, teacher), **more,
    )  # fmt: skip


def reference(name: str, dataset, teacher: tuple[str, str], root) -> tuple[str, str, str | None]:
    """The digests of an uninterrupted run with 0 workers (once per technique)."""
    if name not in _references:
        job = technique_job(root, dataset, teacher[0], name, "reference")
        assert run_trainer(str(job), env(), log=root / "out.log") == 0, (root / "out.log").read_text()[-3000:]
        state = final_state(str(root / "runs/jobs/reference"))
        assert state["position"] == {"epoch": EPOCHS, "batch": 0, "step": STEPS}
        if "train__distill" in TECHNIQUES[name]:  # the teacher's identity, never its weights
            assert state["teacher"] == {"weights": teacher[0], "model": "mobilenet_v3_small", "sha256": teacher[1]}
        _references[name] = digests(state)
    return _references[name]


@pytest.mark.parametrize("name, workers", CASES)
def test_each_technique_and_all_at_once_resume_bitwise(dataset, teacher, tmp_path_factory, tmp_path, name, workers):
    expected = reference(name, dataset, teacher, tmp_path_factory.mktemp(f"reference-{name}"))
    job = technique_job(tmp_path, dataset, teacher[0], name, "cut", train__data__workers=workers)
    prefix = str(tmp_path / "runs/jobs/cut")
    # Killed once at a random instant (the latest checkpoint then corrupted); all at once: twice.
    kills = 2 if name == "all" else 1
    interrupt_then_finish(job, env(), prefix, tmp_path, signal.SIGKILL, f"{name}-{workers}", STEPS, kills=kills)
    assert digests(final_state(prefix)) == expected
    if name in ("ema", "all"):
        assert expected[2] is not None and expected[2] != expected[0]  # the average is not the weights


def test_compiled_training_trains_and_resumes(dataset, tmp_path):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++ or c++ on PATH); none here")
    job = write_job(
        tmp_path / "job.yaml",
        str(tmp_path / "runs"),
        dataset.split("train"),
        dataset.split("val"),
        name="compiled",
        train__epochs=1,
        train__compile=True,
        # resnet18 (BatchNorm's running statistics updated inside the graph): its kernels compile in
        # under a minute on one core, mobilenet_v3_small's (squeeze-excitation, hardswish) take three
        train__model={"name": "resnet18", "weights": None},
    )
    prefix = str(tmp_path / "runs/jobs/compiled")
    # Inductor compiles C++ kernels on CPU; the resumed run finds them in the same cache (seconds),
    # as a recovery on one machine would.
    compiled_env = {**env(), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    process = start_trainer(str(job), compiled_env, log=tmp_path / "out.log")
    code = kill_when(process, lambda: exists(f"{prefix}/checkpoints/LATEST.json"), signal.SIGTERM, timeout=1500)
    assert code == 75, (tmp_path / "out.log").read_text()[-3000:]
    assert run_trainer(str(job), compiled_env, timeout=1500, log=tmp_path / "out.log") == 0, (
        tmp_path / "out.log"
    ).read_text()[-3000:]
    out = (tmp_path / "out.log").read_text()
    assert "resumed from checkpoint step" in out
    state = final_state(prefix)
    assert state["position"] == {"epoch": 1, "batch": 0, "step": 8}
    assert all(value.isfinite().all() for value in state["model"].values() if value.is_floating_point())
