"""Learning-rate schedules: warm-up, then cosine, step, one-cycle or constant, applied per optimizer step.

Each schedule is a multiplier of every group's own lr (so discriminative lrs keep their ratios), run by
a LambdaLR whose state (the step count) goes into the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from trainer.job.spec import TrainSpec

WARMUP_START = 0.01  # warm-up starts at lr/100
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # torch's OneCycleLR defaults


def lr_multiplier(spec: TrainSpec, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor applied to each group's lr at optimizer step `s` (0-based)."""
    sched, total = spec.scheduler, spec.epochs * steps_per_epoch
    warmup = round(sched.warmup_epochs * steps_per_epoch)
    floor = sched.min_lr / spec.optimizer.lr
    step_every = sched.step_epochs * steps_per_epoch

    def cosine(t: float, start: float, end: float) -> float:  # from start (t=0) to end (t=1)
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def multiplier(s: int) -> float:
        if s < warmup:
            return WARMUP_START + (1 - WARMUP_START) * s / warmup
        t = (s - warmup) / max(1, total - warmup)
        if sched.name == "cosine":
            return cosine(t, 1.0, floor)
        if sched.name == "step":
            return sched.gamma ** (s // step_every)
        if sched.name == "onecycle":
            rise = max(1, round(sched.pct_start * total))
            if s < rise:
                return cosine(s / rise, 1 / ONECYCLE_DIV, 1.0)
            return cosine((s - rise) / max(1, total - rise), 1.0, 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV))
        return 1.0

    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainSpec, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    # A plain closure: LambdaLR's state_dict then holds only numbers (weights_only loading accepts it).
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(spec, steps_per_epoch))
