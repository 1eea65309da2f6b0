"""Multi-GPU training's costs on this machine's CPUs (gloo ranks, as the local cloud runs them).

1. Checkpoints of a 2-rank run vs a single process, resnet50 (weights=None) + SGD momentum state
   (~205 MB) saved to a local folder through the real Checkpointer, with the state built by the
   trainer's own `Trainer._state` (rank 0's BatchNorm buffers broadcast, every rank's RNG and meter
   gathered) after the step boundary's agreement (`Group.agree`):
     stall   what the loop waits for at a periodic save: agreement + state + copy to host memory
             (rank 0; the other ranks wait in the same collectives);
     notice  a save on the spot notice: the same, plus the background upload until the commit
             (Checkpointer.wait), i.e. what must fit in EC2's two minutes.
2. The stop agreement alone: one all_reduce of 3 flags, per step boundary, on 2 ranks.
3. Training throughput, DDP over 2 ranks (1 thread each) vs one process (2 threads), the same
   global batch (resnet18, 64 px, batch 32) through `backward_in_micro_batches` + SGD: a sanity
   ratio only (the ranks share 2 cores; it says DDP's machinery costs little, not how GPUs scale).

Run:    python -m bench.ddp [--quick] [--json PATH]   (from the repository root)
Target: none: figures side by side (ratios 2 ranks / 1 process).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn
from torchvision import models

from bench.common import parser, print_table, quiet_logging, write_json

SAVES, SAVES_QUICK = 4, 2


def _rank(rank: int, world: int, init: str, folder: str, quick: bool) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from trainer.checkpoint import Checkpointer
    from trainer.distributed import Group, Ranks, backward_in_micro_batches, split_batch
    from trainer.job.spec import EarlyStoppingSpec
    from trainer.job.storage import Storage
    from trainer.loop import Position, Trainer
    from trainer.metrics import EarlyStopping, Meter

    torch.set_num_threads(2 // world)
    quiet_logging()
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    group = Group(Ranks(rank, rank, world))
    figures: dict = {}

    # 1. checkpoints ----------------------------------------------------------------------------
    model = models.resnet50(weights=None)
    optimizer = torch.optim.SGD([{"params": model.parameters(), "name": "all"}], lr=0.01, momentum=0.9)
    forward_model = DistributedDataParallel(model) if world > 1 else model
    nn.functional.cross_entropy(forward_model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    optimizer.step()
    holder = types.SimpleNamespace(
        group=group,
        ranks=group.ranks,
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        position=Position(0, 1, 1),
        epoch_meter=Meter(torch.device("cpu")),
        stopper=EarlyStopping(EarlyStoppingSpec()),
        history=[],
        bad_images=set(),
        classes=["a", "b"],
        amp=None,
    )
    checkpoints = Checkpointer(Storage(folder), keep=2, writes=group.ranks.is_main, world_size=world)
    stalls, notices = [], []
    for save in range(SAVES_QUICK if quick else SAVES):
        step = 2 * save + 1
        group.agree(interrupt=False, stop=False, save=True)  # warm: the first collective sets up the pairs
        started = time.perf_counter()
        group.agree(interrupt=False, stop=False, save=True)
        checkpoints.save(step, lambda: Trainer._state(holder), {}, force=True)
        stalls.append(time.perf_counter() - started)
        checkpoints.wait()
        started = time.perf_counter()
        group.agree(interrupt=True, stop=False, save=False)
        checkpoints.save(step + 1, lambda: Trainer._state(holder), {}, force=True)
        checkpoints.wait()
        if world > 1:
            dist.barrier()  # every rank done: the slowest is what the notice waits for
        notices.append(time.perf_counter() - started)
    figures["stall_s"], figures["notice_s"] = statistics.median(stalls), statistics.median(notices)
    figures["state_mb"] = checkpoints.latest().manifest["files"]["state.pt"]["size"] / 1e6 if rank == 0 else None
    holder.model = holder.optimizer = model = optimizer = forward_model = None  # the memory back for part 3

    # 2. the agreement alone --------------------------------------------------------------------
    calls = 200 if quick else 1000
    started = time.perf_counter()
    for _ in range(calls):
        group.agree(interrupt=False, stop=False, save=False)
    figures["agree_us"] = (time.perf_counter() - started) / calls * 1e6

    # 3. throughput ----------------------------------------------------------------------------
    torch.manual_seed(0)
    small = models.resnet18(weights=None, num_classes=10)
    small_forward = DistributedDataParallel(small) if world > 1 else small
    sgd = torch.optim.SGD(small.parameters(), lr=0.01, momentum=0.9)
    global_batch = 32
    plan = split_batch(global_batch, world)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(plan.per_rank, 3, 64, 64, generator=generator)
    targets = torch.randint(0, 10, (plan.per_rank,), generator=generator)

    def forward(m, x, y):
        logits = m(x)
        return logits, y, nn.functional.cross_entropy(logits, y)

    def step():
        sgd.zero_grad(set_to_none=True)
        backward_in_micro_batches(small_forward, forward, images, targets, plan, world, global_batch)
        sgd.step()
        group.agree(interrupt=False, stop=False, save=False)

    for _ in range(2):
        step()
    steps = 5 if quick else 20
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    figures["images_per_s"] = steps * global_batch / seconds
    figures["step_s"] = seconds / steps
    if rank == 0:
        Path(folder, "figures.json").write_text(json.dumps(figures))
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, quick: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as folder:
        if world == 1:
            _rank(0, 1, "", folder, quick)
        else:
            mp.spawn(_rank, args=(world, f"file://{folder}/rendezvous", folder, quick), nprocs=world, join=True)
        return json.loads(Path(folder, "figures.json").read_text())


def main() -> None:
    args = parser(__doc__).parse_args()
    quiet_logging()
    one, two = measure(1, args.quick), measure(2, args.quick)
    print(f"resnet50 + SGD momentum state: {one['state_mb']:.0f} MB; CPU, gloo; medians")
    rows = [
        ("checkpoint stall per save (s)", one["stall_s"], two["stall_s"], two["stall_s"] / one["stall_s"]),
        ("save on the notice, to commit (s)", one["notice_s"], two["notice_s"], two["notice_s"] / one["notice_s"]),
        ("stop agreement per step (us)", one["agree_us"], two["agree_us"], None),
        ("resnet18 64px step, batch 32 (s)", one["step_s"], two["step_s"], two["step_s"] / one["step_s"]),
        ("training images/s", one["images_per_s"], two["images_per_s"], two["images_per_s"] / one["images_per_s"]),
    ]
    print_table(
        ["measure", "1 process", "2 ranks", "2 / 1"],
        [(m, a, b, "-" if r is None else f"{r:.2f}") for m, a, b, r in rows],
    )
    print(
        f"the agreement is {two['agree_us'] / 1e6 / two['step_s']:.2%} of a 2-rank step here: checked at every step boundary"
    )
    write_json(args.json, {"one_process": one, "two_ranks": two})


if __name__ == "__main__":
    main()
