"""What the orchestrator reads while a job runs, written by one background thread so the loop never
waits on S3 for it:

- `status/heartbeat.json` every `interval` seconds (phase, progress, throughput, metrics, last
  checkpoint, data-wait fraction, GPU telemetry averaged over the interval, the memory high-water
  marks of the trainer, the host and the GPUs, timestamps) and the
  same figures averaged over the last HEALTH_WINDOW_S seconds of training (orchestrator.jobs.health);
- metric records, flushed as new JSON-lines objects (trainer.metrics.MetricsLog);
- the log file, shipped to `logs/attempt-<k>.log` every few heartbeats;
- the control object `control/stop`, polled with the heartbeat: when present the loop stops gracefully.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from trainer.job import layout
from trainer.job.documents import Heartbeat, StopRequest, now_iso
from trainer.job.settings import BootEnv
from trainer.job.storage import Storage
from trainer.metrics import MetricsLog
from trainer.telemetry import GpuMonitor, HostMemory

log = logging.getLogger(__name__)

HEALTH_WINDOW_S = 300.0

# A validation accuracy is "at chance" when it is at most CHANCE_MARGIN times what guessing scores
# (1/classes), or when the validation set is too small for it to differ from guessing: a one-sided
# binomial test at CHANCE_P (9 images of 3 classes: even 5 right, 56 %, could be luck).
CHANCE_MARGIN = 1.5
CHANCE_P = 0.05


def chance_level(history: list[dict], num_classes: int, val_images: int) -> dict | None:
    """The final.json warning (a FinalWarning's fields) when the run's best validation top-1 is no
    better than guessing; None otherwise, or when there is no validation accuracy to judge."""
    accuracies = [record["val_acc1"] for record in history if isinstance(record.get("val_acc1"), int | float)]
    if not accuracies or num_classes < 2 or val_images < 1:
        return None
    best, chance = max(accuracies), 1 / num_classes
    p_value = binomial_tail(round(best * val_images), val_images, chance)
    if best > CHANCE_MARGIN * chance and p_value <= CHANCE_P:
        return None
    why = (
        f"at most {CHANCE_MARGIN:g}x chance"
        if best <= CHANCE_MARGIN * chance
        else f"guessing scores as well {p_value:.0%} of the time on {val_images} images"
    )
    return {
        "name": "chance_level",
        "message": f"validation accuracy {best:.1%} (best epoch) is chance level for {num_classes} classes "
        f"({chance:.1%}): {why}",
        "hint": "check that the class folders hold the right images, lower or raise optimizer.lr, "
        "train longer, or give more validation images",
    }


def binomial_tail(successes: int, trials: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p), summed in log space (no overflow for big sets)."""
    if successes <= 0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lgamma_n = math.lgamma(trials + 1)
    return min(
        1.0,
        sum(
            math.exp(lgamma_n - math.lgamma(k + 1) - math.lgamma(trials - k + 1) + k * log_p + (trials - k) * log_q)
            for k in range(successes, trials + 1)
        ),
    )


class Reporter:
    def __init__(
        self,
        storage: Storage,
        attempt: int,
        log_file: Path | None = None,
        gpu: GpuMonitor | None = None,
        interval: float = 15.0,
        ship_log_every: int = 4,
        clock: Callable[[], float] = time.monotonic,
        writes: bool = True,
    ):
        self.storage, self.attempt, self.log_file = storage, attempt, log_file
        # Under DDP only rank 0 reports; another rank's reporter keeps the loop's calls and writes nothing.
        self.writes = writes
        self.metrics = MetricsLog(storage, attempt)
        self.gpu = gpu or GpuMonitor()
        self.memory = HostMemory()
        self.interval, self.ship_log_every = interval, ship_log_every
        self.stop_requested = threading.Event()
        self.stop_reason: str | None = None
        self._status: dict = {"phase": "starting"}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._ticks = 0
        self._started = now_iso()
        self._thread: threading.Thread | None = None
        self._clock = clock
        self._window: deque[tuple[float, float | None, float | None, float | None]] = (
            deque()
        )  # (time, util %, memory fraction, data wait)

    def update(self, **fields) -> None:
        """Cheap, called by the loop: the latest values for the next heartbeat."""
        with self._lock:
            self._status.update(fields)

    def beat_now(self) -> None:
        """Write a heartbeat (and flush metrics) as soon as possible, e.g. at a phase change."""
        self._wake.set()

    def start(self) -> Reporter:
        if not self.writes:
            return self
        self.gpu.start()
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._thread.start()
        return self

    def close(self, phase: str) -> None:
        """Final heartbeat, metrics and log, written before returning."""
        if not self.writes:
            return
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.update(phase=phase)
        self._tick(ship_log=True, poll_control=False)
        self.gpu.close()

    def heartbeat(self) -> dict:
        with self._lock:
            status = dict(self._status)
        checkpoint_time = status.pop("last_checkpoint_time", None)
        gpu = self.gpu.read_and_reset()
        return {
            "attempt": self.attempt,
            **status,
            "last_checkpoint_age_s": round(time.time() - checkpoint_time, 1) if checkpoint_time else None,
            **gpu,
            **self._health_window(status, gpu),
            **self.memory.read(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "instance_id": BootEnv.from_env().instance_id,
            "started_at": self._started,
            "updated_at": now_iso(),
        }

    def _health_window(self, status: dict, gpu: dict) -> dict:
        """This heartbeat's sample joins the window; its averages, for the orchestrator's health flags."""
        now = self._clock()
        used, total = gpu.get("gpu_mem_used_gib"), gpu.get("gpu_mem_total_gib")
        # Locked: heartbeat() runs on the reporter thread and, at close, on the loop's.
        with self._lock:
            # Training samples only: validation and checkpoint saves idle the GPU by design.
            if status.get("phase") == "training":
                self._window.append(
                    (
                        now,
                        gpu.get("gpu_util_pct"),
                        used / total if used is not None and total else None,
                        status.get("data_wait_fraction"),
                    )
                )
            while self._window and self._window[0][0] < now - HEALTH_WINDOW_S:
                self._window.popleft()
            samples = list(self._window)

        def mean(column: int, digits: int) -> float | None:
            values = [sample[column] for sample in samples if sample[column] is not None]
            return round(sum(values) / len(values), digits) if values else None

        return {
            "health_window_s": round(now - samples[0][0], 1) if samples else 0.0,
            "gpu_util_window_pct": mean(1, 1),
            "gpu_mem_window_fraction": mean(2, 3),
            "data_wait_window": mean(3, 3),
        }

    def _run(self) -> None:
        # At once: the log on S3 claims this attempt's number (trainer.run.next_attempt) even if the
        # process is killed in its first seconds.
        self._tick(ship_log=True, poll_control=True)
        while not self._closed.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._closed.is_set():
                return
            self._ticks += 1
            self._tick(ship_log=self._ticks % self.ship_log_every == 0, poll_control=True)

    def _tick(self, ship_log: bool, poll_control: bool) -> None:
        # Each part on its own: S3 trouble with one must not starve the others (or stop training).
        for what, action in (
            (
                "heartbeat",
                lambda: self.storage.write_bytes(layout.HEARTBEAT, Heartbeat.dump(self.heartbeat())),
            ),
            ("metrics", self.metrics.flush),
            ("control", self._poll_control if poll_control else None),
            ("log", self.ship_log if ship_log else None),
        ):
            if action is None:
                continue
            try:
                action()
            except Exception as exc:
                log.warning(
                    "reporting: writing the %s failed (%s: %s); trying again at the next heartbeat",
                    what,
                    type(exc).__name__,
                    exc,
                )

    def _poll_control(self) -> None:
        if self.stop_requested.is_set():
            return
        try:
            body = self.storage.read_bytes(layout.CONTROL_STOP)
        except FileNotFoundError:
            return
        request = StopRequest.parse(body)  # any object there asks to stop; its reason, when it gives one
        reason = (request.reason if request else None) or "stop requested"
        self.stop_reason = reason
        log.warning("control: %s; checkpointing and stopping", reason)
        self.stop_requested.set()

    def ship_log(self) -> None:
        if self.log_file is not None and self.log_file.exists():
            for handler in logging.getLogger().handlers:
                handler.flush()
            self.storage.upload(str(self.log_file), layout.trainer_log(self.attempt))
