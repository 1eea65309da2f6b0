"""TensorBoard event files for a job: written locally, uploaded as closed segments.

Why not `SummaryWriter("s3://...")`: S3 has no append, so TensorBoard's S3 filesystem uploads the whole
file again on every flush (measured: 8.5x the final size for 10 flushes, growing quadratically). Here
each segment is an ordinary local event file; when it is closed (after `segment_seconds`, at
`segment_mib`, when the loop stops for a notice or a stop, and at exit) a background thread uploads it
once to `tensorboard/<name>` (`layout.tensorboard_segment`) and deletes it. Uploaded bytes equal the
final size (`bench/tensorboard_upload.py`).

Across recoveries: each attempt writes its own segments (names sort by attempt, then segment), and the
global step continues from the checkpoint. The first segment of an attempt carries a SessionLog START
at the resumed step + 1 (SummaryWriter's `purge_step`), so TensorBoard drops what a killed attempt
logged past its last checkpoint and the plot stays one value per step.

The scalars come from the metric records (`MetricsLog` calls `record`) and the heartbeat's telemetry
(`Reporter` calls `telemetry`), each keyed by the training step. A failed upload is logged and tried
again at the next rotation: TensorBoard never fails a run. Only the main process writes (one writer
per job: `for_process`).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from trainer.job import layout
from trainer.job.spec import TensorBoardSpec
from trainer.job.storage import Storage

log = logging.getLogger(__name__)

# The metric record's field -> TensorBoard's tag. Step records (every report window) and epoch records.
STEP_TAGS = {
    "loss": "train/loss",
    "acc1": "train/acc1",
    "acc5": "train/acc5",
    "lr": "train/lr",
    "images_per_sec": "perf/images_per_sec",
    "data_wait_fraction": "perf/data_wait_fraction",
}
EPOCH_TAGS = {
    "train_loss": "epoch/train_loss",
    "train_acc1": "epoch/train_acc1",
    "train_acc5": "epoch/train_acc5",
    "val_loss": "val/loss",
    "val_acc1": "val/acc1",
    "val_acc5": "val/acc5",
}
# The heartbeat's telemetry (trainer.telemetry), averaged over the heartbeat's interval.
TELEMETRY_TAGS = {
    "gpu_util_pct": "gpu/util_pct",
    "gpu_mem_used_gib": "gpu/mem_used_gib",
    "gpu_mem_peak_gib": "gpu/mem_peak_gib",
    "gpu_power_w": "gpu/power_w",
    "mem_rss_peak_gib": "host/mem_rss_peak_gib",
    "host_mem_used_peak_gib": "host/mem_used_peak_gib",
    # The instance's price, once the trainer is told it (no heartbeat carries it yet).
    "cost_usd_per_hour": "cost/usd_per_hour",
}

# How long close() waits for the last uploads: the last segment is a few KB, and the notice path
# calls rotate() before its checkpoint, so this upload runs beside the checkpoint's, never after it.
CLOSE_WAIT_S = 30.0


def for_process(storage: Storage, attempt: int, spec: TensorBoardSpec, is_main: bool | None = None) -> EventLog | None:
    """The job's event log for this process, or None: TensorBoard off, not the main process (under
    torchrun only rank 0 writes), or the tensorboard package missing (said once, training goes on)."""
    if not spec.enabled:
        return None
    if is_main is None:  # trainer.distributed.Ranks reads the same variable; absent: a single process
        is_main = os.environ.get("RANK", "0") == "0"
    if not is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError as exc:
        log.warning(
            "tensorboard: no event files (%s); install the tensorboard package or set train.tensorboard.enabled: false",
            exc,
        )
        return None
    return EventLog(storage, attempt, spec)


class EventLog:
    def __init__(
        self,
        storage: Storage,
        attempt: int,
        spec: TensorBoardSpec,
        local_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.storage, self.attempt, self.spec, self.clock = storage, attempt, spec, clock
        self.local_dir = local_dir or Path(tempfile.mkdtemp(prefix="spotctl-tensorboard-"))
        self.uploaded_bytes = 0
        self._lock = threading.Lock()  # the loop and the reporter thread both write
        self._writer = None
        self._opened_at = 0.0
        self._segments = 0  # segments opened by this attempt
        self._purge_step: int | None = None
        self._step = 0  # the latest training step seen: telemetry is keyed by it
        self._closed: list[tuple[Path, str]] = []  # (local file, key) closed, not yet uploaded
        self._uploads: queue.Queue = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._upload_loop, name="tensorboard-upload", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------------- writing
    def begin(self, resumed_step: int) -> None:
        """This attempt starts after `resumed_step` steps: what an earlier attempt logged past them is
        dropped by TensorBoard (its last segment may have outlived its last checkpoint)."""
        with self._lock:
            self._step = resumed_step
            self._purge_step = resumed_step + 1 if resumed_step else None

    def record(self, kind: str, values: dict) -> None:
        """A metric record (trainer.metrics.MetricsLog): a step or an epoch's figures."""
        tags = {"step": STEP_TAGS, "epoch": EPOCH_TAGS}.get(kind)
        step = values.get("step")
        if tags is None or not isinstance(step, int):
            return
        self._add(step, {tag: values.get(name) for name, tag in tags.items()})

    def telemetry(self, beat: dict) -> None:
        """A heartbeat's GPU, memory and cost figures, at the step the training has reached."""
        step = beat.get("step")
        with self._lock:
            if isinstance(step, int):
                self._step = max(self._step, step)
            step = self._step
        self._add(step, {tag: beat.get(name) for name, tag in TELEMETRY_TAGS.items()})

    def _add(self, step: int, scalars: dict) -> None:
        scalars = {
            tag: float(v) for tag, v in scalars.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if not scalars:
            return
        try:
            with self._lock:
                self._step = max(self._step, step)
                writer = self._open()
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, step)
                if self._due():
                    self._rotate()
        except Exception as exc:  # a full disk, say: the plot has a gap, the run goes on
            log.warning("tensorboard: writing step %d failed (%s: %s)", step, type(exc).__name__, exc)

    def _open(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._segments += 1
            folder = self.local_dir / f"segment-{self._segments:06d}"
            # purge_step only in the attempt's first segment: it is where the attempt took over.
            purge, self._purge_step = self._purge_step, None
            # flush_secs: a closed segment is flushed by close(); in between, the OS's buffers suffice.
            self._writer = SummaryWriter(str(folder), purge_step=purge, max_queue=1000, flush_secs=30)
            self._opened_at = self.clock()
        return self._writer

    def _due(self) -> bool:
        if self.clock() - self._opened_at >= self.spec.segment_seconds:
            return True
        folder = Path(self._writer.log_dir)
        size = sum(f.stat().st_size for f in folder.iterdir())
        return size >= self.spec.segment_mib * 2**20

    # ------------------------------------------------------------------------------------ rotation
    def rotate(self) -> None:
        """Close the open segment (if any) and upload it in the background; the next write opens a new
        one. The loop calls this when it stops for a notice or a stop, before its checkpoint."""
        with self._lock:
            self._rotate()

    def _rotate(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            folder = Path(writer.log_dir)
            for file in sorted(folder.iterdir()):
                self._closed.append((file, layout.tensorboard_segment(self.attempt, self._segments)))
        if self._closed:
            self._idle.clear()
            self._uploads.put(True)

    def close(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Close the open segment and wait (at most `timeout` s) for every upload; True when all are
        uploaded. Local files left by a failed upload are kept for a later rotation of this process."""
        self.rotate()
        done = self._idle.wait(timeout)
        if not done:
            log.warning("tensorboard: the last segment is still uploading after %.0f s; it may be missing", timeout)
        self._uploads.put(None)
        if done:
            shutil.rmtree(self.local_dir, ignore_errors=True)
        return done

    def _upload_loop(self) -> None:
        while self._uploads.get() is not None:
            with self._lock:
                pending, self._closed = self._closed, []
            failed = []
            for file, key in pending:
                try:
                    size = file.stat().st_size
                    self.storage.upload(str(file), key, move=True)
                    self.uploaded_bytes += size
                    file.unlink(missing_ok=True)
                except Exception as exc:
                    log.warning(
                        "tensorboard: uploading %s failed (%s: %s); trying again at the next segment",
                        key,
                        type(exc).__name__,
                        exc,
                    )
                    failed.append((file, key))
            with self._lock:
                self._closed[:0] = failed
                if self._uploads.empty():
                    self._idle.set()
