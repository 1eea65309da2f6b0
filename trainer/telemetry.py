"""GPU telemetry through NVML (nvidia-ml-py), sampled every second and averaged per heartbeat.

Without a GPU, driver or the nvidia-ml-py package, every field is null: telemetry never fails a run.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

FIELDS = ("gpu_count", "gpu_util_pct", "gpu_mem_used_gib", "gpu_mem_total_gib", "gpu_power_w")


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
            return {name: (len(self._handles) or None) if name == "gpu_count" else None for name in FIELDS}
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
        }
