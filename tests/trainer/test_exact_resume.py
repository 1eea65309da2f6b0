"""The bar of the trainer: a run interrupted at any step (SIGTERM, or SIGKILL at any instant, mid-upload
included) and restarted with the same command ends with bitwise the same weights and optimizer state
as an uninterrupted run, with random augmentation and dropout on, with 0 or 2 data workers, on a
local folder or on S3.

Every scenario is compared with one uninterrupted run that used 0 workers: equality also shows that
the worker count does not change the result.
"""

from __future__ import annotations

import random
import signal

import pytest

from testbed.trainer_runs import (
    SIGNALS,
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

STEPS = 24  # 8 steps per epoch, 3 epochs, a checkpoint every 2 steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The dataset and the digests of an uninterrupted run."""
    from testbed.harness import make_image_folder

    root = tmp_path_factory.mktemp("reference")
    data = make_image_folder(root / "data", per_class={"train": 16, "val": 4})
    job = write_job(root / "job.yaml", str(root / "runs"), data.split("train"), data.split("val"), name="reference")
    assert run_trainer(str(job), trainer_env(), log=root / "out.log") == 0, (root / "out.log").read_text()
    state = final_state(str(root / "runs/jobs/reference"))
    assert state["position"] == {"epoch": 3, "batch": 0, "step": STEPS}
    return data, tensor_digest(state["model"]), optimizer_digest(state["optimizer"])


@pytest.mark.parametrize("where, workers", [("local", 0), ("s3", 2)])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_interrupted_runs_end_bitwise_equal_to_an_uninterrupted_one(
    reference, request, tmp_path, where, workers, signame
):
    data, model_digest, optimizer_state_digest = reference
    if where == "s3":
        request.getfixturevalue("s3_bucket")
        storage = "s3://spotctl-test/spotctl"
        env = trainer_env(request.getfixturevalue("aws").environment())
    else:
        storage, env = str(tmp_path / "runs"), trainer_env()
    job = write_job(
        tmp_path / "job.yaml", storage, data.split("train"), data.split("val"), name="cut", train__data__workers=workers
    )
    interrupt_twice_then_finish(job, env, f"{storage}/jobs/cut", tmp_path, SIGNALS[signame], f"{where}-{signame}")
    state = final_state(f"{storage}/jobs/cut")
    assert tensor_digest(state["model"]) == model_digest
    assert optimizer_digest(state["optimizer"]) == optimizer_state_digest


@pytest.fixture(scope="module")
def distilled_reference(reference, tmp_path_factory):
    """An uninterrupted run distilling from a mobilenet_v3_small teacher of another seed (a weights file), and its digests."""
    import torch
    from torchvision import models

    from trainer.model import replace_head

    data = reference[0]
    root = tmp_path_factory.mktemp("distilled")
    torch.manual_seed(3)
    teacher = models.get_model("mobilenet_v3_small", weights=None)
    replace_head(teacher, len(data.classes))
    torch.save(teacher.state_dict(), root / "teacher.pt")
    distill = {"teacher": {"model": "mobilenet_v3_small", "weights": str(root / "teacher.pt")}, "alpha": 0.7}
    job = write_job(
        root / "job.yaml",
        str(root / "runs"),
        data.split("train"),
        data.split("val"),
        name="ref",
        train__distill=distill,
    )
    assert run_trainer(str(job), trainer_env(), log=root / "out.log") == 0, (root / "out.log").read_text()
    state = final_state(str(root / "runs/jobs/ref"))
    assert state["teacher"]["model"] == "mobilenet_v3_small"
    assert tensor_digest(state["model"]) != reference[1]  # the teacher had its say
    return distill, tensor_digest(state["model"]), optimizer_digest(state["optimizer"])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_distilled_run_killed_twice_ends_bitwise_equal(reference, distilled_reference, tmp_path, workers):
    """The teacher runs online on each augmented batch; killed at random instants, the student resumes exactly."""
    data = reference[0]
    distill, model_digest, optimizer_state_digest = distilled_reference
    job = write_job(
        tmp_path / "job.yaml", str(tmp_path / "runs"), data.split("train"), data.split("val"), name="cut",
        train__data__workers=workers, train__distill=distill,
    )  # fmt: skip
    prefix = str(tmp_path / "runs/jobs/cut")
    interrupt_twice_then_finish(job, trainer_env(), prefix, tmp_path, signal.SIGKILL, f"distill-{workers}")
    state = final_state(prefix)
    assert tensor_digest(state["model"]) == model_digest
    assert optimizer_digest(state["optimizer"]) == optimizer_state_digest


def interrupt_twice_then_finish(job, env, prefix: str, tmp_path, sig, seed: str) -> None:
    """Interrupt the run twice with `sig` at random steps (SIGKILL: at random instants, then corrupt
    the latest checkpoint), run it to the end, and check it resumed twice and finished."""

    from trainer.checkpoint import Checkpointer
    from trainer.job.storage import Storage

    def latest_step() -> int:
        store = Storage(prefix)
        store.fs.invalidate_cache()
        committed = Checkpointer(store).latest()
        return committed.step if committed else 0

    chooser = random.Random(seed)
    for last in (STEPS // 3, STEPS - 4):
        # A step past where the next attempt starts (the first kill in the first third). Once its state
        # file appears, wait a random instant: SIGKILL then lands anywhere from mid-upload (a state file
        # without its manifest) to a few steps later.
        start = latest_step() // 2 * 2 + 2  # checkpoints are every 2 steps; a SIGTERM one may be odd
        step = chooser.randrange(start, last + 1, 2)
        process = start_trainer(str(job), env, log=tmp_path / "out.log")
        code = kill_when(
            process,
            lambda step=step: exists(f"{prefix}/checkpoints/step-{step}/state.pt"),
            sig,
            delay=chooser.uniform(0, 0.2),
        )
        assert code == (75 if sig == signal.SIGTERM else -signal.SIGKILL), (tmp_path / "out.log").read_text()[-3000:]

    if sig == signal.SIGKILL:  # also survive a checkpoint that was corrupted after its commit
        store = Storage(prefix)
        latest = Checkpointer(store).latest()
        store.write_bytes(f"checkpoints/step-{latest.step}/state.pt", b"garbage")

    assert run_trainer(str(job), env, log=tmp_path / "out.log") == 0, (tmp_path / "out.log").read_text()[-3000:]
    out = (tmp_path / "out.log").read_text()
    resumed_from = [
        int(line.split("resumed from checkpoint step ")[1].split()[0])
        for line in out.splitlines()
        if "resumed from checkpoint step" in line
    ]
    assert len(resumed_from) == 2 and all(step > 0 for step in resumed_from)
    if sig == signal.SIGKILL:
        assert "is corrupt" in out and "trying the previous one" in out

    assert final_state(prefix)["position"]["step"] == STEPS
