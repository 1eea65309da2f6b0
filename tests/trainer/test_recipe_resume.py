"""The reference recipe's techniques keep the trainer's bar: a run SIGKILLed at a random step (or
stopped with SIGTERM at a boundary) and resumed ends bitwise equal to an uninterrupted one, each
technique on its own and all at once, with 0 and 2 data workers. The EMA's averaged weights are
compared too. `torch.compile` trains and resumes (not compared bitwise: compiled kernels may round
differently from the eager reference).
"""

from __future__ import annotations

import random
import shutil
import signal

import pytest

from testbed.trainer_runs import (
    exists,
    final_state,
    kill_when,
    optimizer_digest,
    run_trainer,
    start_trainer,
    tensor_digest,
    trainer_env,
    write_job,
)

pytestmark = pytest.mark.slow

EPOCHS, STEPS = 2, 16  # 8 steps per epoch, a checkpoint every 2 steps

TECHNIQUES = {
    "mixup+cutmix": {"train__data__augmentation": {"color_jitter": 0.2, "mixup_alpha": 0.2, "cutmix_alpha": 1.0}},
    "trivialaugment+erasing": {
        "train__data__augmentation": {"color_jitter": 0.2, "policy": "trivialaugment", "random_erasing": 0.5}
    },
    "ema": {"train__ema": {"every_steps": 2, "decay": 0.99}},
    "no-decay-norm-bias": {"train__optimizer__norm_weight_decay": 0.0, "train__optimizer__bias_weight_decay": 0.0},
    # every technique at once: the recipe (label smoothing, TrivialAugment, erasing, mixup/cutmix, EMA,
    # no decay on norm layers) with EMA updates frequent enough to matter in 16 steps
    "all": {
        "train__recipe": "torchvision-v2",
        "train__ema": {"every_steps": 2},
        "train__optimizer__bias_weight_decay": 0.0,
    },
}
CASES = [(name, 2, "SIGKILL") for name in TECHNIQUES if name != "all"] + [("all", 0, "SIGKILL"), ("all", 2, "SIGTERM")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from testbed.harness import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("recipe-data") / "data", per_class={"train": 16, "val": 4})


_references: dict[str, tuple[str, str, str | None]] = {}


def env() -> dict[str, str]:
    # One torch thread: several trainers share the test machine's cores, and oversubscribed OpenMP
    # threads slow each of them down tenfold (every run here, reference included, uses the same).
    return trainer_env({"OMP_NUM_THREADS": "1"})


def digests(state: dict) -> tuple[str, str, str | None]:
    ema = state.get("ema")
    return tensor_digest(state["model"]), optimizer_digest(state["optimizer"]), tensor_digest(ema) if ema else None


def reference(name: str, dataset, root) -> tuple[str, str, str | None]:
    """The digests of an uninterrupted run with 0 workers (once per technique)."""
    if name not in _references:
        job = write_job(
            root / "job.yaml",
            str(root / "runs"),
            dataset.split("train"),
            dataset.split("val"),
            name="reference",
            train__epochs=EPOCHS,
            **TECHNIQUES[name],
        )
        assert run_trainer(str(job), env(), log=root / "out.log") == 0, (root / "out.log").read_text()[-3000:]
        state = final_state(str(root / "runs/jobs/reference"))
        assert state["position"] == {"epoch": EPOCHS, "batch": 0, "step": STEPS}
        _references[name] = digests(state)
    return _references[name]


@pytest.mark.parametrize("name, workers, signame", CASES)
def test_each_technique_resumes_bitwise(dataset, tmp_path_factory, tmp_path, name, workers, signame):
    expected = reference(name, dataset, tmp_path_factory.mktemp(f"reference-{name}"))
    job = write_job(
        tmp_path / "job.yaml",
        str(tmp_path / "runs"),
        dataset.split("train"),
        dataset.split("val"),
        name="cut",
        train__epochs=EPOCHS,
        train__data__workers=workers,
        **TECHNIQUES[name],
    )
    prefix = str(tmp_path / "runs/jobs/cut")
    sig = getattr(signal, signame)
    chooser = random.Random(f"{name}-{workers}-{signame}")
    step = chooser.randrange(2, STEPS - 2, 2)  # mid-epoch or at the epoch's end, never the last
    process = start_trainer(str(job), env(), log=tmp_path / "out.log")
    code = kill_when(
        process,
        lambda: exists(f"{prefix}/checkpoints/step-{step}/state.pt"),
        sig,
        delay=chooser.uniform(0, 0.2),
        timeout=300,
    )
    assert code == (75 if sig == signal.SIGTERM else -signal.SIGKILL), (tmp_path / "out.log").read_text()[-3000:]

    assert run_trainer(str(job), env(), log=tmp_path / "out.log") == 0, (tmp_path / "out.log").read_text()[-3000:]
    assert "resumed from checkpoint step" in (tmp_path / "out.log").read_text()
    state = final_state(prefix)
    assert state["position"]["step"] == STEPS
    assert digests(state) == expected
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
    )
    prefix = str(tmp_path / "runs/jobs/compiled")
    # Inductor compiles C++ kernels on CPU (minutes on 2 cores); the resumed run finds them in the
    # same cache, as a recovery on one machine would.
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
