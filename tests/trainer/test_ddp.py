"""Multi-GPU training as a machine with 2 GPUs runs it: the real trainer under real torchrun, 2 gloo
ranks on the CPU (the user-data's command, orchestrator.jobs.userdata).

- A 2-rank run whose machine loses its power (SIGKILL to every process, at a random step) and is
  resumed on 2 ranks ends bitwise equal to an uninterrupted 2-rank run, with 0 and 2 data workers.
- SIGTERM to one rank stops both at the same step, with one checkpoint of that step.
- A checkpoint written by 2 ranks resumes on 1 and the reverse: the same samples in the same order
  (test_data.py holds that the ranks' shards are the single process's batches), equal in
  expectation, not bitwise (BatchNorm sees each rank's shard), so this asserts that it continues
  and finishes.
- Gradient accumulation under DDP gives the full batch's gradient (trainer.distributed).
- A node lost without a word (frozen: its connections stay open) stops the other within the
  collective timeout (SPOTCTL_COLLECTIVE_TIMEOUT_S), as interrupted (exit 75): the survivor's
  bootstrap then waits for the next attempt's plan (orchestrator.jobs.userdata).
"""

from __future__ import annotations

import random
import re
import signal

import pytest
import torch

from testbed.trainer_runs import (
    exists,
    final_state,
    kill_machine,
    optimizer_digest,
    rank_pids,
    read_json,
    run_trainer,
    start_trainer,
    tensor_digest,
    trainer_env,
    wait_for,
    write_job,
)

pytestmark = pytest.mark.slow

STEPS = 9  # 24 images, global batch 8 (4 per rank, as 2 + 2): 3 steps per epoch, 3 epochs; a checkpoint every 2 steps


def ddp_job(root, data, name: str, **overrides):
    """A rank's 4 images per step in micro-batches of 2: accumulation is in every run (not 1: at 32 px
    mobilenet's last BatchNorm sees 1x1 maps, and one image would leave it one value per channel)."""
    overrides = {"train__batch_size": 8, "train__max_batch_per_gpu": 2, "train__epochs": 3, **overrides}
    return write_job(
        root / f"{name}.yaml", str(root / "runs"), data.split("train"), data.split("val"), name=name, **overrides
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The dataset and the digests of an uninterrupted 2-rank run."""
    from testbed.harness import make_image_folder

    root = tmp_path_factory.mktemp("ddp-reference")
    data = make_image_folder(root / "data", per_class={"train": 8, "val": 2})
    job = ddp_job(root, data, "reference")
    assert run_trainer(str(job), trainer_env(), log=root / "out.log", ranks=2) == 0, (root / "out.log").read_text()
    state = final_state(str(root / "runs/jobs/reference"))
    assert state["position"] == {"epoch": 3, "batch": 0, "step": STEPS}
    assert len(state["ranks"]) == 2  # each rank's RNG and meter
    return data, tensor_digest(state["model"]), optimizer_digest(state["optimizer"])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_2_rank_run_killed_at_a_random_step_and_resumed_ends_bitwise_equal(reference, tmp_path, workers):
    data, model_digest, optimizer_state_digest = reference
    job = ddp_job(tmp_path, data, "cut", train__data__workers=workers)
    prefix = f"{tmp_path}/runs/jobs/cut"
    chooser = random.Random(f"ddp-{workers}")
    step = chooser.randrange(2, STEPS - 4, 2)  # steps to spare: the kill must land before the end
    process = start_trainer(str(job), trainer_env(), log=tmp_path / "out.log", ranks=2)
    assert wait_for(lambda: exists(f"{prefix}/checkpoints/step-{step}/state.pt") or process.poll() is not None)
    assert process.poll() is None, (tmp_path / "out.log").read_text()[-3000:]
    wait_for(lambda: False, timeout=chooser.uniform(0, 0.3))  # anywhere from mid-upload to a step or two later
    kill_machine(process)
    assert not exists(f"{prefix}/status/final.json"), "the run ended before the kill: nothing was tested"

    assert run_trainer(str(job), trainer_env(), log=tmp_path / "out.log", ranks=2) == 0, (
        tmp_path / "out.log"
    ).read_text()[-3000:]
    out = (tmp_path / "out.log").read_text()
    assert out.count("resumed from checkpoint step") == 2  # both ranks loaded it
    state = final_state(prefix)
    assert state["position"]["step"] == STEPS
    assert tensor_digest(state["model"]) == model_digest
    assert optimizer_digest(state["optimizer"]) == optimizer_state_digest


def test_sigterm_to_one_rank_stops_both_at_one_step_and_the_checkpoint_resumes_on_one(reference, tmp_path):
    data, _, _ = reference
    job = ddp_job(tmp_path, data, "notice")
    prefix = f"{tmp_path}/runs/jobs/notice"
    exit_file = tmp_path / "exit"
    env = trainer_env({"SPOTCTL_EXIT_FILE": str(exit_file)})
    process = start_trainer(str(job), env, log=tmp_path / "out.log", ranks=2)
    assert wait_for(lambda: exists(f"{prefix}/checkpoints/step-2/state.pt") or process.poll() is not None)
    pids = rank_pids(process)
    assert sorted(pids) == [0, 1], pids
    import os

    os.kill(pids[1], signal.SIGTERM)  # only rank 1 hears it
    assert process.wait(timeout=120) == 1  # torchrun: "a worker failed"; each rank's own word is in its file
    out = (tmp_path / "out.log").read_text()
    assert [(tmp_path / f"exit.{rank}").read_text() for rank in (0, 1)] == ["75\n", "75\n"], out[-3000:]
    stopped_at = {int(n) for n in re.findall(r"interrupted \(.*?\) at step (\d+)", out)}
    assert "interrupted (SIGTERM received)" in out and "interrupted (another training process was interrupted)" in out
    (step,) = stopped_at  # both ranks, one step
    assert read_json(f"{prefix}/checkpoints/LATEST.json")["step"] == step
    assert read_json(f"{prefix}/checkpoints/step-{step}/MANIFEST.json")["world_size"] == 2
    assert read_json(f"{prefix}/status/heartbeat.json")["phase"] == "interrupted"

    # Resumed by one process: the same sample order from that step on, not bitwise (said in the log).
    assert run_trainer(str(job), trainer_env(), log=tmp_path / "one.log") == 0, (tmp_path / "one.log").read_text()
    one = (tmp_path / "one.log").read_text()
    assert f"resumed from checkpoint step {step}" in one
    assert "written by 2 training processes, this run has 1" in one
    assert final_state(prefix)["position"]["step"] == STEPS
    assert read_json(f"{prefix}/status/final.json")["outcome"] == "succeeded"


def test_a_node_frozen_without_notice_stops_the_other_within_the_collective_timeout(reference, tmp_path):
    import os
    import socket
    import time

    from orchestrator.local.runner import machine_processes

    data, _, _ = reference
    job = ddp_job(tmp_path, data, "frozen")
    prefix = f"{tmp_path}/runs/jobs/frozen"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    timeout_s = 10
    nodes = [
        start_trainer(
            str(job),
            trainer_env(
                {
                    "SPOTCTL_EXIT_FILE": str(tmp_path / f"node{rank}.exit"),
                    "SPOTCTL_COLLECTIVE_TIMEOUT_S": str(timeout_s),
                }
            ),
            log=tmp_path / f"node{rank}.log",
            node=(rank, 2, port),
        )
        for rank in (0, 1)
    ]
    try:
        assert wait_for(lambda: exists(f"{prefix}/checkpoints/step-2/state.pt") or nodes[0].poll() is not None)
        frozen = machine_processes(nodes[1].pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)  # a machine that hangs: nothing closes its connections
        stopped = time.monotonic()
        assert nodes[0].wait(timeout=timeout_s * 6) == 1  # torchrun's "a worker failed"; the rank's word is 75
        waited = time.monotonic() - stopped
        out = (tmp_path / "node0.log").read_text()
        assert (tmp_path / "node0.exit.0").read_text() == "75\n", out[-3000:]
        assert "a collective failed" in out and "a peer was lost" in out
        assert read_json(f"{prefix}/status/heartbeat.json")["phase"] == "interrupted"
        assert not exists(f"{prefix}/status/final.json")
        print(f"the survivor left {waited:.1f}s after its peer froze (collective timeout {timeout_s}s)")
    finally:
        kill_machine(nodes[1])  # SIGKILL ends stopped processes too


def test_a_single_process_checkpoint_resumes_on_two_ranks(reference, tmp_path):
    data, _, _ = reference
    job = ddp_job(tmp_path, data, "grow")
    prefix = f"{tmp_path}/runs/jobs/grow"
    process = start_trainer(str(job), trainer_env(), log=tmp_path / "one.log")
    assert wait_for(lambda: exists(f"{prefix}/checkpoints/step-4/state.pt") or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 75
    assert run_trainer(str(job), trainer_env(), log=tmp_path / "two.log", ranks=2) == 0, (
        tmp_path / "two.log"
    ).read_text()[-3000:]
    two = (tmp_path / "two.log").read_text()
    assert "written by 1 training processes, this run has 2" in two
    assert final_state(prefix)["position"]["step"] == STEPS


# ------------------------------------------------------------------------------ gradient accumulation
def _accumulated_gradient(rank: int, world: int, init: str, cap: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from trainer.distributed import backward_in_micro_batches, shard, split_batch

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        images, targets, model = _problem()
        global_batch = len(targets)
        plan = split_batch(global_batch, world, cap)
        mine = shard(list(range(global_batch)), rank, world)
        ddp = DistributedDataParallel(model)

        def forward(m, x, y):
            logits = m(x)
            return logits, y, torch.nn.functional.cross_entropy(logits, y)

        trained = backward_in_micro_batches(ddp, forward, images[mine], targets[mine], plan, world, global_batch)
        assert len(trained) == plan.accumulation > 1
        if rank == 0:
            torch.save([p.grad for p in model.parameters()], out)
    finally:
        dist.destroy_process_group()


def _problem():
    generator = torch.Generator().manual_seed(0)
    images, targets = torch.randn(10, 5, generator=generator), torch.randint(0, 3, (10,), generator=generator)
    torch.manual_seed(0)
    return images, targets, torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


@pytest.mark.parametrize("world, cap", [(2, 2), (1, 3)])
def test_accumulated_micro_batches_give_the_full_batchs_gradient(tmp_path, world, cap):
    """10 images over 2 ranks (5 each) in micro-batches of at most 2, and on one process in at most
    3: DDP's averaged gradient equals the full batch's mean-loss gradient (to rounding)."""
    import torch.multiprocessing as mp

    out = tmp_path / "grad.pt"
    init = f"file://{tmp_path}/rendezvous"
    mp.spawn(_accumulated_gradient, args=(world, init, cap, str(out)), nprocs=world, join=True)
    images, targets, model = _problem()
    torch.nn.functional.cross_entropy(model(images), targets).backward()
    for accumulated, full in zip(torch.load(out), [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(accumulated, full, rtol=1e-5, atol=1e-7)
