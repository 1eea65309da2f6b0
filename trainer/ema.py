"""An exponential moving average of the model's weights, as torchvision's reference recipe keeps it
(`--model-ema`, `--model-ema-steps`, `--model-ema-decay`; its `utils.ExponentialMovingAverage`).

`ema = decay * ema + (1 - decay) * weights` over parameters and buffers (BatchNorm's running
statistics too), updated at every `every_steps`-th batch of an epoch; during the warm-up epochs the
average is reset at each update, so it copies the weights while they move fastest. The decay is
adjusted for batch size and epochs as the reference does (`EmaSpec.effective_decay`). Its state
(the averaged model and its update count) is part of the trainer's checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from trainer.job.spec import EmaSpec


class WeightsEma:
    def __init__(self, model: nn.Module, spec: EmaSpec, batch_size: int, epochs: int, warmup_epochs: float):
        self.spec = spec
        self.decay = spec.effective_decay(batch_size, epochs)
        self.warmup_epochs = spec.warmup_epochs if spec.warmup_epochs is not None else warmup_epochs
        decay = self.decay

        def ema_avg(averaged: torch.Tensor, current: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            return decay * averaged + (1 - decay) * current

        self.averaged = AveragedModel(model, avg_fn=ema_avg, use_buffers=True)

    @property
    def module(self) -> nn.Module:
        """The averaged model, to validate and export."""
        return self.averaged.module

    def after_step(self, model: nn.Module, epoch: int, batch: int) -> None:
        """Call after the optimizer step of batch `batch` (0-based) of epoch `epoch`."""
        if batch % self.spec.every_steps:
            return
        self.averaged.update_parameters(model)
        if epoch < self.warmup_epochs:
            self.averaged.n_averaged.fill_(0)  # the next update copies the weights again

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
