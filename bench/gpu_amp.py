"""GPU throughput with AMP on vs off (resnet50, batch 64) and the NVML telemetry read meanwhile.

    python -m bench.gpu_amp [--steps 60] [--json PATH]

Two measurements, each with AMP off (fp32) and on (the trainer's `auto`: bf16 where supported, else
fp16 with a grad scaler), on the same GPU in one run:
- synthetic: a batch of random images already in GPU memory, the trainer's own train step (no data
  loading), timed with CUDA synchronisation;
- real data: the real Trainer on a rendered 224x224 ImageFolder with 8 workers, images/s as the
  trainer reports it in its metrics.
GPU utilisation, memory and power come from trainer.telemetry.GpuMonitor (NVML) during the synthetic
runs. Without a CUDA device it says so and exits 0: run it where there is one (see the issue 3 note).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import parser, write_json


def synthetic(amp: str, steps: int) -> dict:
    from torchvision import models

    from trainer.loop import amp_dtype
    from trainer.metrics import Meter
    from trainer.telemetry import GpuMonitor

    device = torch.device("cuda")
    dtype = amp_dtype(amp, device)
    model = models.resnet50(num_classes=100).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images = torch.randn(64, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    targets = torch.randint(0, 100, (64,), device=device)
    meter = Meter(device)

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            logits = model(images)
            loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        meter.add(loss, logits, targets)

    for _ in range(10):  # warm-up: cuDNN autotuning, allocator
        step()
    torch.cuda.synchronize()
    monitor = GpuMonitor(interval=0.2).start()
    monitor.read_and_reset()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    telemetry = monitor.read_and_reset()
    monitor.close()
    return {"images_per_sec": steps * 64 / elapsed, "dtype": str(dtype), **telemetry}


def real_data(amp: str, root: Path) -> float:
    from rich.console import Console

    from testbed.trainer_runs import write_job
    from trainer.display import ConsoleProgress
    from trainer.job.spec_file import load_spec
    from trainer.job.storage import Storage
    from trainer.loop import Trainer
    from trainer.preemption import InterruptionWatcher
    from trainer.reporting import Reporter

    job = write_job(
        root / f"job-{amp}.yaml",
        str(root / "runs"),
        str(root / "data/train"),
        str(root / "data/val"),
        name=f"amp-{amp}",
        train__model={"name": "resnet50", "weights": None},
        train__data__image_size=224,
        train__data__workers=8,
        train__batch_size=64,
        train__epochs=1,
        train__amp=amp,
        train__checkpoint={"every_steps": None, "every_seconds": None, "keep": 1},
    )
    spec = load_spec(job)
    storage = Storage(f"{spec.storage}/jobs/{spec.name}")
    reporter = Reporter(storage, 1, interval=5)
    trainer = Trainer(
        spec,
        "bench",
        storage,
        reporter,
        InterruptionWatcher(),
        ConsoleProgress(Console(stderr=True), live=False),
        root / "cache",
        sample_every=5,
    )
    trainer.fit()
    trainer.close()  # ends the data workers (they ignore SIGTERM, so exit would wait for them)
    reporter.close("done")
    rates = [
        json.loads(line)["images_per_sec"]
        for part in sorted((root / "runs/jobs" / spec.name / "metrics").glob("*.jsonl"))
        for line in part.read_text().splitlines()
        if '"kind": "step"' in line
    ]
    return statistics.median(rates[1:] or rates)  # the first window includes worker start-up


def main(argv: list[str] | None = None) -> dict | None:
    args_parser = parser(__doc__)
    args_parser.add_argument("--steps", type=int, default=60)
    args = args_parser.parse_args(argv)
    steps = 10 if args.quick else args.steps
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device here; run this benchmark on a GPU machine")
        return None
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 supported: {torch.cuda.is_bf16_supported()}"
    )
    results = {"synthetic": {amp: synthetic(amp, steps) for amp in ("off", "auto")}}
    with tempfile.TemporaryDirectory(prefix="bench-amp-") as tmp:
        from trainer.sample_data import render

        render(f"{tmp}/data", per_split={"train": 128, "val": 16}, size=224)
        results["real_data"] = {amp: real_data(amp, Path(tmp)) for amp in ("off", "auto")}
    syn, real = results["synthetic"], results["real_data"]
    print(f"\n{'':<12}{'AMP off':>12}{'AMP auto':>12}{'ratio':>8}")
    print(
        f"{'synthetic':<12}{syn['off']['images_per_sec']:>10.0f}/s{syn['auto']['images_per_sec']:>10.0f}/s{syn['auto']['images_per_sec'] / syn['off']['images_per_sec']:>8.2f}"
    )
    print(f"{'real data':<12}{real['off']:>10.0f}/s{real['auto']:>10.0f}/s{real['auto'] / real['off']:>8.2f}")
    for amp in ("off", "auto"):
        s = syn[amp]
        print(
            f"NVML during synthetic AMP {amp} ({s['dtype']}): util {s['gpu_util_pct']}%, memory {s['gpu_mem_used_gib']}/{s['gpu_mem_total_gib']} GiB, power {s['gpu_power_w']} W"
        )
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
