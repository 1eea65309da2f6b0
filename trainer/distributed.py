"""Data-parallel training through `torch.distributed` (torchrun starts the processes): who this process
is, the process group, how the global batch is split, and the few collectives the loop needs.

- `Ranks.from_env()` reads torchrun's `RANK`, `LOCAL_RANK`, `WORLD_SIZE`; absent, one process.
- `split_batch(global_batch, world_size, per_gpu_cap)` says how each rank covers its share of the
  global batch: `accumulation` micro-batches of at most `micro` images. `train.batch_size` stays the
  global batch, so the optimisation is the same whatever machine a recovery lands on.
- `Group.agree(...)`: one all_reduce (MAX) of a few flags at every step boundary, so a spot notice,
  SIGTERM or control/stop seen by any rank stops every rank at the same step, and a save one rank
  decides (its clock says the interval passed) is made by all (the state holds every rank's RNG).
- `Group.broadcast_buffers(module)`: BatchNorm running statistics differ per rank after a forward
  (each saw its own shard); rank 0's are the model (DDP broadcasts them at each training forward),
  so they are broadcast before validation and before every save (measured: a distributed save
  otherwise silently kept another rank's).

The collective timeout is bounded (`SPOTCTL_COLLECTIVE_TIMEOUT_S`, default 300 s, not NCCL's 30
minutes): a peer lost without notice makes the survivors' next collective fail within it, and the
trainer exits as interrupted (`peer_lost`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from trainer.job.settings import Settings

if TYPE_CHECKING:  # torch is imported where it is used: Ranks and split_batch stay cheap to import
    import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (torchrun's environment)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, heartbeat, metrics, final.json and exports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ranks:
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE") or 1)
        rank = int(env.get("RANK") or 0)
        local = int(env.get("LOCAL_RANK") or 0)
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(
                f"torchrun's environment is inconsistent: RANK={rank} LOCAL_RANK={local} WORLD_SIZE={world}"
            )
        return cls(rank, local, world)


class BatchSplitError(ValueError):
    """The global batch cannot be split over this machine's GPUs (a user error: its message says the fix)."""


@dataclass(frozen=True)
class BatchPlan:
    """How one rank trains its share of a global batch."""

    per_rank: int  # the largest share of one rank (shares differ by at most one image)
    micro: int  # the most images of one forward
    accumulation: int  # forwards (micro-batches) per optimizer step

    def micro_batches(self, share: int) -> list[int]:
        """Sizes of the micro-batches of a share of `share` images: `accumulation` of them, balanced."""
        return [len(part) for part in _split(range(share), self.accumulation)]


def split_batch(global_batch: int, world_size: int, per_gpu_cap: int | None = None) -> BatchPlan:
    """The plan for `global_batch` images per step over `world_size` ranks, each forward holding at
    most `per_gpu_cap` images (None: a rank's whole share in one forward)."""
    if global_batch < world_size:
        raise BatchSplitError(
            f"train.batch_size {global_batch} is smaller than the {world_size} training processes (GPUs); "
            f"raise it to at least {world_size}"
        )
    if per_gpu_cap is not None and per_gpu_cap < 1:
        raise BatchSplitError(f"train.max_batch_per_gpu must be at least 1, got {per_gpu_cap}")
    per_rank = math.ceil(global_batch / world_size)
    accumulation = 1 if per_gpu_cap is None else math.ceil(per_rank / per_gpu_cap)
    # Every rank runs the same number of forwards (DDP's all_reduce pairs them); the smallest share
    # (per_rank - 1) must still fill each one.
    accumulation = min(accumulation, global_batch // world_size)
    return BatchPlan(per_rank, math.ceil(per_rank / accumulation), accumulation)


def shard(items: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s contiguous slice of one global batch (shares differ by at most one item)."""
    return _split(items, world_size)[rank]


def _split(items, parts: int) -> list:
    """`parts` near-equal contiguous slices of a list, range or tensor (as `tensor_split` cuts them)."""
    size, extra = divmod(len(items), parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + size + (1 if part < extra else 0))
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


def loss_share(images: int, world_size: int, global_batch: int) -> float:
    """What a micro-batch's mean loss is multiplied by so that, DDP averaging over the ranks, the
    micro-batches' gradients add up to the global batch's mean gradient: its share of the batch,
    times the world size DDP divides by."""
    return images * world_size / global_batch


def backward_in_micro_batches(
    model: torch.nn.Module,
    forward: Callable,
    images: torch.Tensor,
    targets: torch.Tensor,
    plan: BatchPlan,
    world_size: int,
    global_batch: int,
    backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward(),
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Forward and backward one rank's share in `plan.accumulation` micro-batches; returns each one's
    (logits, targets, unscaled mean loss). `forward(model, images, targets)` gives the same triple.
    Under DDP (`model` a DistributedDataParallel) the gradients are averaged over the ranks once, in
    the last micro-batch's backward; the others accumulate under `no_sync`. A whole batch on one
    process is trained exactly as before (no scaling: bit for bit)."""
    parts = plan.accumulation
    distributed = hasattr(model, "no_sync")
    whole = parts == 1 and not distributed
    done = []
    for index, (micro_images, micro_targets) in enumerate(
        zip(_split(images, parts), targets.tensor_split(parts), strict=True)
    ):
        if not len(micro_targets):  # fewer images than micro-batches: bad ones left the batch
            continue
        last = index == parts - 1
        with contextlib.nullcontext() if last or not distributed else model.no_sync():
            logits, micro_targets, loss = forward(model, micro_images, micro_targets)
            share = 1.0 if whole else loss_share(len(micro_targets), world_size, global_batch)
            backward(loss if share == 1.0 else loss * share)
        done.append((logits, micro_targets, loss))
    return done


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a collective failing: a peer died or the timeout passed."""
    import torch.distributed as dist

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, dist.DistError):
            return True
        # gloo reports a dead peer as a plain RuntimeError from its transport, and a peer that hangs
        # (a frozen machine, its connections open) as one that timed out ("gloo/transport/tcp/...:
        # Timed out waiting 10000ms for recv operation to complete").
        if isinstance(exc, RuntimeError) and any(
            word in str(exc)
            for word in ("Connection closed by peer", "Connection reset by peer", "Gloo", "gloo/transport", "NCCL")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Group:
    """The process group of a run (a no-op for a single process): set up, collectives, torn down."""

    def __init__(self, ranks: Ranks, timeout_s: float | None = None):
        import torch

        self.ranks = ranks
        self.timeout_s = timeout_s if timeout_s is not None else Settings.from_env().collective_timeout_s
        # One GPU per rank (torchrun's LOCAL_RANK); gloo on the CPU where there is none.
        self.device = torch.device("cuda", ranks.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    @property
    def active(self) -> bool:
        import torch.distributed as dist

        return self.ranks.distributed and dist.is_initialized()

    def start(self) -> Group:
        import torch
        import torch.distributed as dist

        if not self.ranks.distributed:
            return self
        timeout = timedelta(seconds=self.timeout_s)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # device_id binds the communicator to this GPU at once (no lazy guess of the device).
            dist.init_process_group("nccl", timeout=timeout, device_id=self.device)
        else:
            dist.init_process_group("gloo", timeout=timeout)
        return self

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------------------- collectives
    def agree(self, **flags: bool) -> dict[str, bool]:
        """Each flag true on every rank if it is true on any (one small all_reduce)."""
        if not self.active:
            return flags
        import torch
        import torch.distributed as dist

        names = sorted(flags)
        values = torch.tensor([int(bool(flags[n])) for n in names], dtype=torch.int32, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return {name: bool(value) for name, value in zip(names, values.tolist(), strict=True)}

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if not self.active:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def gather(self, value: object) -> list[object]:
        """Every rank's `value`, in rank order (a list of one for a single process)."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        gathered: list[object] = [None] * self.ranks.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: object) -> object:
        """Rank 0's `value` on every rank."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
