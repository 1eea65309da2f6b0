"""Exported models on CPU: fp32 eager vs TorchScript vs ONNX Runtime vs int8, same model, same inputs.

What runs: the real pipeline. A resnet18 is trained from scratch by `trainer.run` on the shapes dataset
(trainer.sample_data, drawn at --image-size, 400 training and 200 validation images) and exported by
the trainer in state_dict, torchscript, onnx and int8. Then each artifact is loaded the way a user
loads it:
  eager        torchvision resnet18 + model.safetensors (fp32, what the other three are compared to)
  torchscript  torch.jit.load(model.torchscript.pt)
  onnxruntime  InferenceSession(model.onnx), CPUExecutionProvider
  int8         torch.jit.load(model.int8.pt) (FX static quantization, x86 engine; trainer.quantize)

Timed: one forward call on a batch of real validation images, at batch 1, 8 and 32, under
torch.no_grad(). Every runtime gets the same number of threads (--threads, default all cores: torch's
intra-op threads and onnxruntime's intra_op_num_threads). Two warm-up calls each, then --rounds rounds;
within a round the runtimes take turns (eager, torchscript, onnxruntime, int8), so a drift in machine
load hits all of them; the median per runtime and batch size is reported, and speedups are ratios of
medians to eager's. Throughput = batch / median latency.

Agreement: top-1 agreement with eager on all 200 validation images, and for int8 the SQNR of its logits.
Size: the file each runtime loads (eager: model.safetensors).

Run:    python -m bench.export_inference [--quick] [--image-size 224] [--json PATH]   (repository root)
Target: int8 at least 3x smaller and at least 2x faster than fp32 eager (batch 1 and 8), with top-1
        agreement >= 98 % on the validation set of the trained model.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import parser, print_table, quiet_logging, verdict, write_json

BATCHES = (1, 8, 32)


def train_and_export(folder: Path, image_size: int, epochs: int) -> Path:
    """Train resnet18 with the trainer and let it export; returns the artifacts folder."""
    import yaml

    from trainer.run import EXIT_SUCCEEDED, run
    from trainer.sample_data import render

    render(str(folder / "data"), per_split={"train": 80, "val": 40}, size=image_size)
    job = {
        "name": "bench",
        "storage": str(folder / "runs"),
        "train": {
            "model": {"name": "resnet18", "weights": None},
            "data": {
                "train": str(folder / "data/train"),
                "val": str(folder / "data/val"),
                "image_size": image_size,
                "workers": 2,
            },
            "optimizer": {"name": "adamw", "lr": 0.002},
            "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
            "epochs": epochs,
            "batch_size": 32,
            "checkpoint": {"every_seconds": None},
            "export": {"formats": ["state_dict", "torchscript", "onnx", "int8"]},
        },
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    os.environ.setdefault("SPOTCTL_CACHE_DIR", str(folder / "cache"))
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    if run(str(folder / "job.yaml"), heartbeat_seconds=5) != EXIT_SUCCEEDED:
        raise SystemExit("training failed; see the log above")
    logging.getLogger().setLevel(logging.WARNING)  # the trainer set up its own logging: keep the table clear
    return folder / "runs/jobs/bench/artifacts"


def load_runtimes(artifacts: Path, manifest: dict, threads: int) -> dict:
    import warnings

    import onnxruntime
    import torch
    import torchvision
    from safetensors.torch import load_file

    artifacts = artifacts / manifest["export_id"]  # this export's folder (trainer.export)
    info = json.loads((artifacts / "model.json").read_text())
    eager = getattr(torchvision.models, info["architecture"])(num_classes=info["num_classes"]).eval()
    eager.load_state_dict(load_file(str(artifacts / "model.safetensors")))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(artifacts / "model.onnx"), options, providers=["CPUExecutionProvider"])
    warnings.filterwarnings(
        "ignore", "`torch.jit.load` is deprecated", FutureWarning
    )  # loading TorchScript is what is measured
    return {
        "eager": (eager, artifacts / "model.safetensors"),
        "torchscript": (torch.jit.load(str(artifacts / "model.torchscript.pt")), artifacts / "model.torchscript.pt"),
        "onnxruntime": (
            lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0]),
            artifacts / "model.onnx",
        ),
        "int8": (torch.jit.load(str(artifacts / "model.int8.pt")), artifacts / "model.int8.pt"),
    }


def validation_images(folder: Path):
    import torch

    from trainer import data as data_mod
    from trainer.job.spec_file import load_spec

    spec = load_spec(str(folder / "job.yaml"))
    data = data_mod.build(
        spec.train.data, spec.train.model, spec.train.seed, 50, Path(spec.train.data.train), Path(spec.train.data.val)
    )
    return torch.cat(list(data.validation_spread(10_000)))


def latencies(runtimes: dict, images, rounds: int) -> dict[str, dict[int, float]]:
    import torch

    timings = {name: {b: [] for b in BATCHES} for name in runtimes}
    with torch.no_grad():
        for batch in BATCHES:
            inputs = images[:batch].contiguous()
            for model, _ in runtimes.values():
                for _ in range(2):
                    model(inputs)
            for _ in range(rounds):
                for name, (model, _) in runtimes.items():
                    started = time.perf_counter()
                    model(inputs)
                    timings[name][batch].append(time.perf_counter() - started)
    return {
        name: {b: statistics.median(samples) for b, samples in per_batch.items()} for name, per_batch in timings.items()
    }


def main() -> int:
    args = parser(__doc__)
    args.add_argument(
        "--image-size", type=int, default=224, help="image size trained and timed at (default 224; --quick: 96)"
    )
    args.add_argument("--epochs", type=int, default=3, help="training epochs (default 3; --quick: 2)")
    args.add_argument(
        "--rounds", type=int, default=20, help="timed calls per runtime and batch size (default 20; --quick: 5)"
    )
    args.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="CPU threads for every runtime (default: all cores)"
    )
    opts = args.parse_args()
    size, epochs, rounds = (96, 2, 5) if opts.quick else (opts.image_size, opts.epochs, opts.rounds)
    quiet_logging()

    import torch

    from trainer.quantize import agreement

    torch.set_num_threads(opts.threads)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        folder = Path(tmp)
        started = time.monotonic()
        artifacts = train_and_export(folder, size, epochs)
        manifest = json.loads((artifacts / "manifest.json").read_text())
        print(
            f"trained resnet18 at {size} px for {epochs} epochs in {time.monotonic() - started:.0f} s: "
            f"val_acc1 {manifest['metrics'].get('val_acc1', float('nan')):.3f} (best checkpoint, step {manifest['checkpoint_step']})"
        )
        runtimes = load_runtimes(artifacts, manifest, opts.threads)
        images = validation_images(folder)
        medians = latencies(runtimes, images, rounds)
        eager_model = runtimes["eager"][0]
        agreements = {name: agreement(eager_model, model, images.split(50)) for name, (model, _) in runtimes.items()}
        sizes = {name: path.stat().st_size for name, (_, path) in runtimes.items()}

    rows, figures = (
        [],
        {
            "image_size": size,
            "epochs": epochs,
            "threads": opts.threads,
            "rounds": rounds,
            "validation_images": len(images),
            "val_acc1": manifest["metrics"].get("val_acc1"),
            "runtimes": {},
        },
    )
    for name in runtimes:
        speedup = {b: medians["eager"][b] / medians[name][b] for b in BATCHES}
        rows.append(
            [
                name,
                f"{sizes[name] / 2**20:.1f}",
                f"{sizes['eager'] / sizes[name]:.2f}x",
                *[f"{medians[name][b] * 1000:.2f}" for b in BATCHES],
                *[f"{speedup[b]:.2f}x" for b in BATCHES],
                f"{32 / medians[name][32]:.0f}",
                f"{agreements[name]['top1_agreement']:.1%}",
                agreements[name]["sqnr_db"],
            ]
        )
        figures["runtimes"][name] = {
            "size_bytes": sizes[name],
            "latency_ms": {b: medians[name][b] * 1000 for b in BATCHES},
            "speedup_vs_eager": speedup,
            "images_per_s_b32": 32 / medians[name][32],
            **agreements[name],
        }
    print(f"\nCPU inference, {opts.threads} threads, {size} px, median of {rounds} calls; ratios to fp32 eager")
    print_table(
        [
            "runtime",
            "MiB",
            "smaller",
            *[f"ms b{b}" for b in BATCHES],
            *[f"faster b{b}" for b in BATCHES],
            "img/s b32",
            "top-1 agree",
            "SQNR dB",
        ],
        rows,
    )
    int8 = figures["runtimes"]["int8"]
    print()
    passed = [
        verdict(sizes["eager"] / sizes["int8"], 3.0, True, "int8_smaller"),
        verdict(min(int8["speedup_vs_eager"][1], int8["speedup_vs_eager"][8]), 2.0, True, "int8_faster_b1_b8"),
        verdict(int8["top1_agreement"], 0.98, True, "int8_top1_agreement"),
    ]
    write_json(opts.json, figures)
    return 0 if all(passed) else 1


if __name__ == "__main__":
    raise SystemExit(main())
