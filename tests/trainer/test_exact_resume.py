"""The bar of the trainer: a run interrupted at any step (SIGTERM, or SIGKILL at any instant, mid-upload
included) and restarted with the same command ends with bitwise the same weights and optimizer state
as an uninterrupted run, with random augmentation and dropout on, with 0 or 2 data workers, on a
local folder or on S3. (Each training technique's case, and all of them at once, are in
test_recipe_resume.py.)

Every scenario is compared with one uninterrupted run that used 0 workers: equality also shows that
the worker count does not change the result.
"""

from __future__ import annotations

import pytest

from testbed.trainer_runs import (
    SIGNALS,
    final_state,
    interrupt_then_finish,
    optimizer_digest,
    run_trainer,
    tensor_digest,
    trainer_env,
    write_job,
)
from trainer.job import layout

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
    state = final_state(layout.job_prefix(str(root / "runs"), "reference"))
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
    prefix = layout.job_prefix(storage, "cut")
    interrupt_then_finish(job, env, prefix, tmp_path, SIGNALS[signame], f"{where}-{signame}", STEPS)
    state = final_state(prefix)
    assert tensor_digest(state["model"]) == model_digest
    assert optimizer_digest(state["optimizer"]) == optimizer_state_digest
