"""What the loop measures: losses and top-k accuracy, throughput, the best-model / early-stopping
tracker, and the metrics stream (JSON lines, appended in batches as new objects, never one object rewritten per step)."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass

import torch

from trainer.job import layout
from trainer.job.spec import EarlyStoppingSpec


class Meter:
    """Loss and top-1/top-5 hits summed on the device; read (one sync) only when reported."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, top-1 hits, top-5 hits
        self.count = 0

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == targets[:, None]
        n = targets.shape[0]
        self.sums += torch.stack(
            [loss.detach().double() * n, hits[:, 0].sum().double(), hits.any(dim=1).sum().double()]
        )
        self.count += n

    def read(self, prefix: str) -> dict[str, float]:
        if not self.count:
            return {}
        loss, acc1, acc5 = (self.sums / self.count).tolist()
        return {f"{prefix}loss": loss, f"{prefix}acc1": acc1, f"{prefix}acc5": acc5}


# img/s, data wait and the ETA are measured over the last minute of training, not over the steps since
# the previous report: with few steps per report (sample_every is an epoch's 1/20) one step that found
# its batch prefetched read 179 img/s and the next, which waited for it, 4; the log line and the
# heartbeat, written at different moments, then disagreed by 40x about one attempt.
RATE_WINDOW_S = 60.0


class Throughput:
    """Images per second, the share of time spent waiting for batches and seconds per step, over the
    report windows that ended in the last `span_s` seconds (the latest always counts). A window's time
    runs from the previous report to this one, so data waits are inside it; validation is not."""

    def __init__(self, span_s: float = RATE_WINDOW_S):
        self.span_s = span_s
        self._windows: deque[tuple[float, float, int, int, float]] = deque()  # (ended, seconds, images, steps, waited)

    def add(self, ended: float, seconds: float, images: int, steps: int, waited: float) -> None:
        self._windows.append((ended, seconds, images, steps, waited))
        while len(self._windows) > 1 and self._windows[0][0] < ended - self.span_s:
            self._windows.popleft()

    def read(self) -> tuple[float, float, float]:
        """(images per second, data wait fraction, seconds per step) over the span."""
        seconds = max(sum(w[1] for w in self._windows), 1e-9)
        images = sum(w[2] for w in self._windows)
        steps = sum(w[3] for w in self._windows)
        waited = sum(w[4] for w in self._windows)
        return images / seconds, min(1.0, waited / seconds), seconds / max(1, steps)


@dataclass
class EarlyStopping:
    """Tracks the best value of the spec's metric; says when patience has run out."""

    spec: EarlyStoppingSpec
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best."""
        better = self.best is None or (
            value < self.best - self.spec.min_delta
            if self.spec.mode == "min"
            else value > self.best + self.spec.min_delta
        )
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.spec.patience is not None and self.bad_epochs >= self.spec.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


class MetricsLog:
    """Metric records buffered in memory and written as `metrics/a<attempt>-<n>.jsonl` parts by `flush()`."""

    def __init__(self, storage, attempt: int):
        self.storage, self.attempt = storage, attempt
        self.listeners: list = []  # called with (kind, record) for each record (trainer.tensorboard)
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._parts = 0

    def record(self, kind: str, **values) -> None:
        with self._lock:
            self._pending.append({"kind": kind, "attempt": self.attempt, **values})
        for listener in self.listeners:
            listener(kind, values)

    def flush(self) -> None:
        with self._flushing:  # one flush at a time: part numbers are never reused
            with self._lock:
                lines, self._pending = self._pending, []
            if not lines:
                return
            body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode()
            while True:
                try:
                    self.storage.write_bytes(layout.metrics_part(self.attempt, self._parts + 1), body, create_only=True)
                    break
                except FileExistsError:  # left by an earlier run under the same attempt number: never overwritten
                    self._parts += 1
                except Exception:
                    with self._lock:  # keep them for the next flush
                        self._pending[:0] = lines
                    raise
            self._parts += 1
