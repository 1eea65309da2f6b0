"""Throughput: the trainer vs a hand-written PyTorch loop (same model, data and batch size), on CPU.

Measures steady-state training images/s of
  plain    torchvision ImageFolder + DataLoader(shuffle=True) + the same model (trainer.model.build_model)
           + SGD with momentum + CrossEntropyLoss + a cosine LambdaLR: what an engineer writes by hand;
  trainer  trainer.loop.Trainer.fit(), wired as trainer.run wires it: a Reporter writing heartbeats every
           2 s, an InterruptionWatcher (SIGTERM only: AWS_EC2_METADATA_DISABLED), ConsoleProgress(live=False),
           and a checkpoint of the full state (model + momentum, ~94 MB) every 5 s, the shortest interval a
           job may ask for. Storage is a local folder (--storage s3: a moto server running in this
           process, so its CPU is charged to the trainer: pessimistic).
Both train one epoch of the same PNGs (resnet18, 64 px, batch 32) with the same transforms (trainer.data's; the plain loop's as v1 on PIL, bench.common.pil_train_transform),
seed, torch threads and loader workers.

Threads: all cores but one by default (1 on a 2-core machine). The trainer is built for GPU instances,
where the loop's thread drives the GPU and a core is free for the background checkpoint and heartbeat
threads; with every core computing (--threads N = cores), each save's serialising and hashing is taken
out of the training instead. (On a shared machine, all-core OpenMP also swings several-fold whenever
another process takes a core.)

Fairness: both loops get their batches through `Stamped`, which notes the time whenever the loop asks
for the next batch. Throughput = images in the batches after the first `--warmup` ones ÷ the time from
asking for batch `warmup` to the loader running dry. That leaves out setup, the first (slow) steps and
the trainer's end-of-epoch validation and final save, and counts everything the trainer does between
steps: metrics, reports, checkpoint copies, and the background uploads and heartbeats competing for the
same cores. Runs alternate (plain, trainer, plain, trainer, ...) so drifting machine load hits both
sides; the medians are compared.

Features: with --features, the same run also trains with each feature on alone (in the same
alternation) and reports its images/s as a ratio against the trainer with every feature off: mixup +
cutmix, TrivialAugment, random erasing, EMA (every 4 steps), gradient accumulation (2 micro-batches
of 16), distillation (an online resnet18 teacher from a weights file) and TensorBoard event files.
The ratios are costs, not targets (a teacher's forward is real work).

Run:    python -m bench.throughput [--quick] [--features] [--json PATH]   (from the repository root)
Target: trainer images/s / plain images/s >= 0.95 (every feature off)
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from bench.common import moto_bucket, parser, pil_train_transform, print_table, quiet_logging, verdict, write_json
from testbed.harness import make_image_folder
from testbed.trainer_runs import teacher_file, write_job
from trainer import tensorboard
from trainer.checkpoint import Checkpointer
from trainer.data import normalization
from trainer.display import ConsoleProgress
from trainer.job.layout import HEARTBEAT
from trainer.job.spec import JobSpec
from trainer.job.spec_file import load_spec
from trainer.job.storage import Storage
from trainer.loop import Trainer
from trainer.model import build_model
from trainer.preemption import InterruptionWatcher
from trainer.reporting import Reporter
from trainer.sample_data import SHAPES

TARGET = 0.95
MODEL, IMAGE_SIZE, BATCH_SIZE = "resnet18", 64, 32
HEARTBEAT_SECONDS = 2.0
CHECKPOINT_SECONDS = 5  # the spec's minimum
TEACHER = "<the teacher's weights file>"  # written by measure()
# Each feature alone, as job.yaml overrides of the features-off job (write_job's dotted keys).
FEATURES = {
    "mixup+cutmix": {"train__data__augmentation": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}},
    "trivialaugment": {"train__data__augmentation": {"policy": "trivialaugment"}},
    "random erasing": {"train__data__augmentation": {"random_erasing": 0.25}},
    "ema": {"train__ema": {"every_steps": 4}},
    "accumulation": {"train__max_batch_per_gpu": BATCH_SIZE // 2},
    "distillation": {"train__distill": {"teacher": {"model": MODEL, "weights": TEACHER}}},
    "tensorboard": {"train__tensorboard": {"enabled": True}},
}


class Stamped:
    """Iterates over `loader`, noting perf_counter() each time the loop asks for the next batch
    (the last note: when the loader is exhausted)."""

    def __init__(self, loader):
        self.loader = loader
        self.stamps: list[float] = []

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            self.stamps.append(time.perf_counter())
            batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def window(self, warmup: int) -> tuple[float, float]:
        return self.stamps[warmup], self.stamps[-1]

    def figures(self, warmup: int, batch_size: int) -> dict:
        steps = len(self.stamps) - 1 - warmup
        start, end = self.window(warmup)
        return {"steps": steps, "seconds": end - start, "images_per_sec": steps * batch_size / (end - start)}


class HeartbeatCountingStorage(Storage):
    """The job's storage, noting when each heartbeat is written (to show they ran while measured)."""

    def __init__(self, root: str):
        super().__init__(root)
        self.heartbeats: list[float] = []

    def write_bytes(self, relative: str, data: bytes, create_only: bool = False, tags: dict | None = None) -> None:
        if relative == HEARTBEAT:
            self.heartbeats.append(time.perf_counter())
        super().write_bytes(relative, data, create_only, tags)


def run_plain(spec: JobSpec, train_root: str, warmup: int) -> dict:
    train = spec.train
    dataset = ImageFolder(train_root, transform=pil_train_transform(train.data, normalization(train.model)))
    loader = Stamped(
        DataLoader(dataset, batch_size=train.batch_size, shuffle=True, drop_last=True, num_workers=train.data.workers)
    )
    torch.manual_seed(train.seed)
    model = build_model(train.model, len(dataset.classes))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=train.optimizer.lr, momentum=0.9, weight_decay=train.optimizer.weight_decay
    )
    steps = len(loader.loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    criterion = nn.CrossEntropyLoss()
    model.train()
    for images, targets in loader:
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return loader.figures(warmup, train.batch_size)


def run_trainer(spec: JobSpec, prefix: str, cache_dir: Path, warmup: int) -> dict:
    storage = HeartbeatCountingStorage(prefix)
    events = tensorboard.for_process(storage, 1, spec.train.tensorboard, is_main=True)
    reporter = Reporter(storage, attempt=1, interval=HEARTBEAT_SECONDS, events=events).start()
    watcher = InterruptionWatcher().start()
    display = ConsoleProgress(Console(stderr=True), live=False)
    try:
        fitter = Trainer(spec, "bench", storage, reporter, watcher, display, cache_dir)
        # Instrumentation only: fit() iterates over data.train_loader, a plain attribute.
        stamped = fitter.data.train_loader = Stamped(fitter.data.train_loader)
        outcome = fitter.fit()
        fitter.data.train_loader = stamped.loader
        fitter.close()  # ends the data workers (they ignore SIGTERM, so exit would wait for them)
    finally:
        display.close()
        watcher.close()
        reporter.close("done")
    if outcome.status != "succeeded":
        raise RuntimeError(f"the trainer ended {outcome.status}: {outcome.reason}")
    start, end = stamped.window(warmup)
    # A save at step s happens between asking for batches s-1 and s; the last step's is after the window.
    saved = [step for step in Checkpointer(storage).committed_steps() if warmup < step < outcome.step]
    return {
        **stamped.figures(warmup, spec.train.batch_size),
        "checkpoints": len(saved),
        "heartbeats": sum(start <= t <= end for t in storage.heartbeats),
    }


def job_spec(folder: Path, storage: str, train: str, val: str, workers: int, **feature) -> JobSpec:
    """The features-off job (TensorBoard off too), or with one `feature`'s overrides."""
    overrides = {
        "train__model__name": MODEL,
        "train__data__image_size": IMAGE_SIZE,
        "train__data__workers": workers,
        "train__data__augmentation": {},  # the defaults: random-resized crop and flip
        "train__optimizer": {"name": "sgd", "lr": 0.05},
        "train__scheduler": {"name": "cosine"},
        "train__epochs": 1,
        "train__batch_size": BATCH_SIZE,
        # keep: every checkpoint stays listable, to count the saves made while measuring.
        "train__checkpoint": {"every_seconds": CHECKPOINT_SECONDS, "every_steps": None, "keep": 1000},
        "train__tensorboard": {"enabled": False},
    } | feature
    path = write_job(folder / "job.yaml", storage, train, val, name="bench-throughput", **overrides)
    return load_spec(path)


def measure(args) -> list[dict]:
    """Plain and trainer runs, alternating, on one generated dataset."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        root = stack.enter_context(moto_bucket()) if args.storage == "s3" else str(folder / "storage")
        data = make_image_folder(
            folder / "data", SHAPES, {"train": args.images // len(SHAPES), "val": 2}, size=IMAGE_SIZE
        )
        spec = job_spec(folder, root, data.split("train"), data.split("val"), args.workers)
        features = {}
        if args.features:
            teacher, _ = teacher_file(folder / "teacher.pt", classes=len(SHAPES), seed=3, name=MODEL)
            for name, overrides in FEATURES.items():
                if "train__distill" in overrides:
                    overrides = {"train__distill": {"teacher": {"model": MODEL, "weights": teacher}}}
                features[name] = job_spec(
                    folder, root, data.split("train"), data.split("val"), args.workers, **overrides
                )
        for repeat in range(1, args.repeats + 1):
            runs.append({"loop": "plain", "repeat": repeat, **run_plain(spec, data.split("train"), args.warmup)})
            # A prefix of its own: a trainer finding an earlier run's checkpoints would resume from them.
            runs.append(
                {
                    "loop": "trainer",
                    "repeat": repeat,
                    **run_trainer(spec, f"{root}/run-{repeat}", folder / "cache", args.warmup),
                }
            )
            print(
                f"repeat {repeat}: plain {runs[-2]['images_per_sec']:.1f} img/s, trainer {runs[-1]['images_per_sec']:.1f} img/s",
                flush=True,
            )
            # Reversed every other repeat, so a drift in the machine's load does not favour the first ones.
            for name, feature_spec in list(features.items())[:: 1 if repeat % 2 else -1]:
                prefix = f"{root}/run-{repeat}-{name.replace(' ', '-').replace('+', '-')}"
                runs.append(
                    {"loop": name, "repeat": repeat, **run_trainer(feature_spec, prefix, folder / "cache", args.warmup)}
                )
                print(f"repeat {repeat}: {name} {runs[-1]['images_per_sec']:.1f} img/s", flush=True)
    return runs


def report(args, runs: list[dict]) -> None:
    loops = list(dict.fromkeys(r["loop"] for r in runs))
    median = {loop: statistics.median(r["images_per_sec"] for r in runs if r["loop"] == loop) for loop in loops}
    ratio = median["trainer"] / median["plain"]
    print()
    print_table(
        ["loop", "repeat", "steps", "seconds", "images/s", "checkpoints", "heartbeats"],
        [
            [
                r["loop"],
                r["repeat"],
                r["steps"],
                r["seconds"],
                r["images_per_sec"],
                r.get("checkpoints", "-"),
                r.get("heartbeats", "-"),
            ]
            for r in runs
        ],
    )
    print(f"\nmedian images/s: plain {median['plain']:.2f}, trainer {median['trainer']:.2f}")
    overhead = {loop: median[loop] / median["trainer"] for loop in loops if loop not in ("plain", "trainer")}
    if overhead:
        print("\neach feature on alone, images/s vs the trainer with every feature off:")
        print_table(
            ["feature", "median images/s", "ratio"],
            [["none (trainer)", median["trainer"], 1.0]] + [[loop, median[loop], overhead[loop]] for loop in overhead],
        )
    passed = verdict(ratio, TARGET, higher_is_better=True)
    config = {k: v for k, v in vars(args).items() if k != "json"} | {
        "model": MODEL,
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH_SIZE,
        "checkpoint_every_seconds": CHECKPOINT_SECONDS,
        "heartbeat_seconds": HEARTBEAT_SECONDS,
    }
    write_json(
        args.json,
        {
            "benchmark": "throughput",
            "config": config,
            "runs": runs,
            "median_images_per_sec": median,
            "ratio": ratio,
            "feature_ratios": overhead,
            "target": TARGET,
            "pass": passed,
        },
    )


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--images", type=int, default=2000, help="training images, one epoch (default 2000)")
    options.add_argument("--repeats", type=int, default=3, help="runs of each loop, alternating (default 3)")
    options.add_argument("--warmup", type=int, default=5, help="first steps left out of the measurement (default 5)")
    options.add_argument("--workers", type=int, default=0, help="DataLoader workers for both loops (default 0)")
    options.add_argument(
        "--threads",
        type=int,
        default=max(1, os.cpu_count() - 1),
        help="torch threads for both loops (default: cores - 1, see above)",
    )
    options.add_argument(
        "--storage", choices=("local", "s3"), default="local", help="the trainer's storage (default local)"
    )
    options.add_argument(
        "--features", action="store_true", help="also each feature on alone, vs the trainer with all off (see above)"
    )
    args = options.parse_args()
    if args.quick:
        args.images, args.repeats, args.warmup = 800, 1, 3  # long enough for one timed save
    quiet_logging()
    torch.set_num_threads(args.threads)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # the watcher must not probe 169.254.169.254
    report(args, measure(args))


if __name__ == "__main__":
    main()
