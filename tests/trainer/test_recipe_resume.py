"""The training techniques keep the trainer's bar: a run SIGKILLed at a random instant and resumed
ends bitwise equal to an uninterrupted one, each technique on its own and all at once (the
torchvision-v2 recipe's label smoothing, TrivialAugment, random erasing, mixup/cutmix and EMA, with
gradient accumulation, distillation from a teacher's weights file and `batch_size: auto`), with 0
and 2 data workers.
The EMA's averaged weights are compared too. `batch_size: auto` (a CPU's probe under an injected
memory limit, SPOTCTL_TEST_PROBE_MEMORY) probes once, and its resumed attempts read the cached figure;
a recovery on a GPU that holds less keeps the global batch in micro-batches (not bitwise: BatchNorm
sees smaller batches). `torch.compile` trains and resumes (not compared bitwise: compiled kernels may
round differently from the eager reference).
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
    probe_budget,
    read_json,
    run_trainer,
    start_trainer,
    teacher_file,
    tensor_digest,
    trainer_env,
    write_job,
)
from trainer.batch_probe import ProbeKey
from trainer.job import layout

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
    # At most 8, and the injected memory holds 7 images (PROBE_HOLDS), not 8: the probe's 95 % of 7 is
    # the global batch 6, trained in the job's micro-batches of 2: the accumulation technique's run
    # exactly, which it is compared with (the probe leaves the run's RNG alone).
    "auto": {"train__batch_size": {"auto": 8}, **ACCUMULATION},
    "distill": {"train__distill": DISTILL},
    # every technique at once: the recipe (label smoothing, TrivialAugment, erasing, mixup/cutmix, EMA,
    # no decay on norm layers) with EMA updates frequent enough to matter in 16 steps, accumulation, a
    # teacher running online on each mixed micro-batch and the batch probed (as "auto")
    "all": {
        "train__recipe": "torchvision-v2",
        "train__batch_size": {"auto": 8},
        "train__ema": {"every_steps": 2},
        "train__optimizer__bias_weight_decay": 0.0,
        **ACCUMULATION,
        "train__distill": DISTILL,
    },
}
PROBE_HOLDS = {"auto": 7.5, "all": 7.5}  # the images an injected memory limit holds (SPOTCTL_TEST_PROBE_MEMORY)
REFERENCE_OF = {"auto": "accumulation"}  # a technique whose run is another's, bit for bit
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


def env(probe_holds: float | None = None, gpu: str | None = None) -> dict[str, str]:
    """`probe_holds`: the images batch_size auto's probe finds fit (an injected memory limit), on `gpu`."""
    # One torch thread: several trainers share the test machine's cores, and oversubscribed OpenMP
    # threads slow each of them down tenfold (every run here, reference included, uses the same).
    extra = {"OMP_NUM_THREADS": "1"}
    if probe_holds is not None:
        extra["SPOTCTL_TEST_PROBE_MEMORY"] = f"{probe_budget(probe_holds)}{f'@{gpu}' if gpu else ''}"
    return trainer_env(extra)


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
        assert run_trainer(str(job), env(PROBE_HOLDS.get(name)), log=root / "out.log") == 0, (
            root / "out.log"
        ).read_text()[-3000:]
        state = final_state(layout.job_prefix(str(root / "runs"), "reference"))
        assert state["position"] == {"epoch": EPOCHS, "batch": 0, "step": STEPS}
        if "train__distill" in TECHNIQUES[name]:  # the teacher's identity, never its weights
            assert state["teacher"] == {"weights": teacher[0], "model": "mobilenet_v3_small", "sha256": teacher[1]}
        _references[name] = digests(state)
    return _references[name]


@pytest.mark.parametrize("name, workers", CASES)
def test_each_technique_and_all_at_once_resume_bitwise(dataset, teacher, tmp_path_factory, tmp_path, name, workers):
    compared = REFERENCE_OF.get(name, name)
    expected = reference(compared, dataset, teacher, tmp_path_factory.mktemp(f"reference-{compared}"))
    job = technique_job(tmp_path, dataset, teacher[0], name, "cut", train__data__workers=workers)
    prefix = layout.job_prefix(str(tmp_path / "runs"), "cut")
    # Killed once at a random instant (the latest checkpoint then corrupted); all at once: twice.
    kills = 2 if name == "all" else 1
    run_env = env(PROBE_HOLDS.get(name))
    interrupt_then_finish(job, run_env, prefix, tmp_path, signal.SIGKILL, f"{name}-{workers}", STEPS, kills=kills)
    assert digests(final_state(prefix)) == expected
    if name in ("ema", "all"):
        assert expected[2] is not None and expected[2] != expected[0]  # the average is not the weights
    if name in PROBE_HOLDS:  # probed by the first attempt alone; every resumed one read its figure
        out = (tmp_path / "out.log").read_text()
        assert out.count("batch probe: 7 images fit, 8 did not") == 1, out[-3000:]
        assert out.count("batch probe: 6 images per GPU, measured before on cpu") == kills, out[-3000:]
        chosen = read_json(f"{prefix}/{layout.BATCH_CHOSEN}")
        assert (chosen["attempt"], chosen["global_batch"]) == (1, 6)


def test_auto_batch_recovered_on_a_gpu_that_holds_less_keeps_the_global_batch(dataset, tmp_path):
    """Attempt 1 fixes the global batch 6 (its memory holds 7); killed, the run resumes on a "GPU"
    holding 3 (2 with the margin): the same batch in 3 micro-batches, the same steps, finished."""
    job = write_job(
        tmp_path / "job.yaml", str(tmp_path / "runs"), dataset.split("train"), dataset.split("val"), name="moved",
        train__epochs=1, train__batch_size={"auto": 8},
    )  # fmt: skip
    prefix = layout.job_prefix(str(tmp_path / "runs"), "moved")
    log = tmp_path / "out.log"
    process = start_trainer(str(job), env(probe_holds=7.5), log=log)
    code = kill_when(process, lambda: exists(f"{prefix}/{layout.CHECKPOINTS}/{layout.POINTER}"), signal.SIGKILL)
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    chosen = read_json(f"{prefix}/{layout.BATCH_CHOSEN}")
    assert chosen["global_batch"] == 6 and chosen["per_gpu"] == 6

    assert run_trainer(str(job), env(probe_holds=3.5, gpu="Tesla T4"), log=log) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert "resumed from checkpoint step" in out
    assert "this GPU (Tesla T4) holds 2 of the 6 images a rank trains per step: 3 micro-batches per step" in out
    assert "batch: auto -> global batch 6, at most 2 per GPU forward" in out
    assert read_json(f"{prefix}/{layout.BATCH_CHOSEN}") == chosen
    for gpu, per_gpu in (("cpu", 6), ("Tesla T4", 2)):  # a probe file per GPU type, each its own figure
        probed = read_json(f"{prefix}/{layout.batch_probe(ProbeKey('mobilenet_v3_small', 32, gpu, 'None', 1).name)}")
        assert probed["per_gpu"] == per_gpu and probed["key"]["gpu"] == gpu
    assert final_state(prefix)["position"] == {"epoch": 1, "batch": 0, "step": STEPS // EPOCHS}


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
    prefix = layout.job_prefix(str(tmp_path / "runs"), "compiled")
    # Inductor compiles C++ kernels on CPU; the resumed run finds them in the same cache (seconds),
    # as a recovery on one machine would.
    compiled_env = {**env(), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    process = start_trainer(str(job), compiled_env, log=tmp_path / "out.log")
    code = kill_when(
        process, lambda: exists(f"{prefix}/{layout.CHECKPOINTS}/{layout.POINTER}"), signal.SIGTERM, timeout=1500
    )
    assert code == 75, (tmp_path / "out.log").read_text()[-3000:]
    assert run_trainer(str(job), compiled_env, timeout=1500, log=tmp_path / "out.log") == 0, (
        tmp_path / "out.log"
    ).read_text()[-3000:]
    out = (tmp_path / "out.log").read_text()
    assert "resumed from checkpoint step" in out
    state = final_state(prefix)
    assert state["position"] == {"epoch": 1, "batch": 0, "step": 8}
    assert all(value.isfinite().all() for value in state["model"].values() if value.is_floating_point())
