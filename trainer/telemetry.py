"""The machine's figures for the heartbeat: GPU telemetry through NVML (nvidia-ml-py), sampled every
second and averaged per heartbeat, with the GPU memory peak; and the memory high-water marks of the
trainer process and the host (`HostMemory`), which are all that is left, once the OOM killer has
taken the trainer, to tell that it ran out of memory (orchestrator.jobs.crash).

Without a GPU, driver or the nvidia-ml-py package, every GPU field is null; without /proc (not Linux),
the host's memory in use is: telemetry never fails a run.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FIELDS = ("gpu_count", "gpu_util_pct", "gpu_mem_used_gib", "gpu_mem_total_gib", "gpu_power_w", "gpu_mem_peak_gib")


class GpuMonitor:
    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._nvml = None
        self._handles: list = []
        self._lock = threading.Lock()
        self._sums = [0.0, 0.0, 0.0]  # util %, memory used GiB, power W (summed over GPUs)
        self._samples = 0
        self._missing = [False, False, False]  # a figure the GPU did not report in this interval
        self._total_gib = 0.0
        self._peak_gib: float | None = None  # the most memory in use at any sample this run
        self._closed = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
            self._total_gib = sum(pynvml.nvmlDeviceGetMemoryInfo(h).total for h in self._handles) / 2**30
        except Exception as exc:  # no package, no driver, no GPU: report nulls
            log.debug("telemetry: NVML unavailable (%s)", exc)
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def start(self) -> GpuMonitor:
        if self.available:
            threading.Thread(target=self._sample_loop, name="gpu-monitor", daemon=True).start()
        return self

    def close(self) -> None:
        self._closed.set()

    def _sample_loop(self) -> None:
        while not self._closed.wait(self.interval):
            try:
                self.sample()
            except Exception as exc:
                log.warning("telemetry: NVML read failed (%s); GPU figures stop here", exc)
                return

    def sample(self) -> None:
        nvml = self._nvml
        # Each figure on its own: some GPUs do not report power (NotSupported), the rest still counts.
        util = self._read(
            lambda: sum(nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles) / len(self._handles)
        )
        used = self._read(lambda: sum(nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles) / 2**30)
        power = self._read(lambda: sum(nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1000)
        with self._lock:
            self._sums = [total + (value or 0.0) for total, value in zip(self._sums, (util, used, power), strict=True)]
            self._missing = [m or v is None for m, v in zip(self._missing, (util, used, power), strict=True)]
            self._samples += 1
            if used is not None:
                self._peak_gib = max(self._peak_gib or 0.0, used)

    def _read(self, figure):
        try:
            return figure()
        except Exception:
            return None

    def read_and_reset(self) -> dict[str, float | int | None]:
        """Averages since the previous call; nulls when there is no GPU (or no sample yet)."""
        with self._lock:
            sums, samples, missing = self._sums, self._samples, self._missing
            self._sums, self._samples, self._missing = [0.0, 0.0, 0.0], 0, [False, False, False]
        if not self.available or not samples:
            empty = {name: (len(self._handles) or None) if name == "gpu_count" else None for name in FIELDS}
            return {**empty, "gpu_mem_peak_gib": self._peak()}  # a peak seen earlier still stands
        util, used, power = (
            None if gone else round(value / samples, digits)
            for value, gone, digits in zip(sums, missing, (1, 2, 1), strict=True)
        )
        return {
            "gpu_count": len(self._handles),
            "gpu_util_pct": util,
            "gpu_mem_used_gib": used,
            "gpu_mem_total_gib": round(self._total_gib, 2),
            "gpu_power_w": power,
            "gpu_mem_peak_gib": self._peak(),
        }

    def _peak(self) -> float | None:
        with self._lock:
            return None if self._peak_gib is None else round(self._peak_gib, 2)


GIB = 2**30
# ru_maxrss is in KiB on Linux, in bytes on macOS (getrusage(2) of each).
RU_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


class HostMemory:
    """The memory high-water marks a heartbeat carries: the trainer process's peak resident set
    (getrusage's ru_maxrss: the kernel's own high-water mark, never missed between heartbeats), the
    host's memory in use (MemTotal less MemAvailable: every process, data workers included) at its
    highest read, and the host's total. `meminfo` is injectable for tests."""

    def __init__(self, meminfo: Path = Path("/proc/meminfo")):
        self.meminfo = meminfo
        self._used_peak: float | None = None

    def read(self) -> dict[str, float | None]:
        total, available = self._host()
        if total is not None and available is not None:
            self._used_peak = max(self._used_peak or 0.0, total - available)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_BYTES / GIB
        return {
            "mem_rss_peak_gib": round(rss, 2),
            "host_mem_used_peak_gib": None if self._used_peak is None else round(self._used_peak, 2),
            "host_mem_total_gib": None if total is None else round(total, 2),
        }

    def _host(self) -> tuple[float | None, float | None]:
        """(total, available) GiB: /proc/meminfo where there is one, else only the total (sysconf)."""
        try:
            fields = dict(line.split(":", 1) for line in self.meminfo.read_text().splitlines() if ":" in line)
            kib = {name: int(fields[name].split()[0]) for name in ("MemTotal", "MemAvailable")}
            return kib["MemTotal"] / 2**20, kib["MemAvailable"] / 2**20
        except (OSError, KeyError, ValueError, IndexError):
            pass
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB, None
        except (OSError, ValueError, AttributeError):
            return None, None
