"""`batch_size: auto` on a real GPU: the probe's batch vs the true largest batch, and no out-of-memory after.

    python -m bench.batch_probe [--model resnet50] [--image-size 224] [--amp auto] [--steps 50] [--quick] [--json PATH]

In one run, on the same GPU and model (the job's stand-in: trainer.batch_probe.subject_for, SGD with
momentum, channels_last, the trainer's AMP choice):
1. the probe as the trainer runs it (doubling, then bisection to 1/64, `STEPS_PER_TRIAL` steps a
   size, the 5 % margin), timed: the batch it chooses and its trials;
2. the true maximum: the same search continued to a bracket of one image with 5 steps a size (each
   size on a fresh model and optimizer after emptying the cache), starting at what the probe found;
3. the chosen batch trained for `--steps` steps on a fresh model and optimizer, counting
   out-of-memory errors (target: zero).

Prints the table and `RESULT ratio=<chosen / true maximum> target>=0.90`. Without a CUDA device it
says so and exits 0: the search logic is tested on CPU (tests/trainer/test_batch_probe.py); this
measures it where the memory is real.
"""

from __future__ import annotations

import gc
import time

import torch

from bench.common import parser, print_table, quiet_logging, verdict, write_json

TARGET = 0.90
TRUE_MAX_STEPS = 5


def main(argv: list[str] | None = None) -> dict | None:
    args_parser = parser(__doc__)
    args_parser.add_argument("--model", default="resnet50")
    args_parser.add_argument("--image-size", type=int, default=224)
    args_parser.add_argument("--amp", default="auto", choices=["auto", "off", "fp16", "bf16"])
    args_parser.add_argument("--steps", type=int, default=50, help="steps trained at the chosen batch")
    args = args_parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("SKIPPED: batch_probe needs a CUDA GPU (its memory is what it measures); run it on a GPU machine")
        return None
    quiet_logging()
    if args.quick:
        args.model, args.image_size, args.steps = "resnet18", 128, 10
    figures = measure(torch.device("cuda"), args.model, args.image_size, args.amp, args.steps)
    print(
        f"{figures['gpu']}, {args.model} at {args.image_size} px, AMP {figures['amp']}, {figures['total_gib']:.0f} GiB"
    )
    print_table(
        ["probe: largest fit", "trials", "seconds", "chosen (-5 %)", "true max", "chosen / max", "OOMs after"],
        [
            [
                figures[k]
                for k in (
                    "probe_largest_fit",
                    "probe_trials",
                    "probe_seconds",
                    "chosen",
                    "true_max",
                    "ratio",
                    "out_of_memory_at_chosen",
                )
            ]
        ],
    )
    verdict(figures["ratio"] if figures["out_of_memory_at_chosen"] == 0 else 0.0, TARGET, higher_is_better=True)
    write_json(args.json, figures)
    return figures


def measure(device: torch.device, model: str, image_size: int, amp_setting: str, steps: int) -> dict:
    """The three measurements on `device` (a CPU works with an injected trainer.batch_probe.memory_limit)."""
    from trainer import batch_probe
    from trainer.job.spec import TrainSpec
    from trainer.loop import amp_dtype

    amp = amp_dtype(amp_setting, device)
    train = TrainSpec.model_validate(
        {
            "model": {"name": model, "weights": None},
            "data": {"train": "/unused", "image_size": image_size},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        }
    )

    def subject():
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return batch_probe.subject_for(
            train, 100, device, amp, torch.channels_last if device.type == "cuda" else torch.preserve_format
        )

    torch.backends.cudnn.benchmark = True  # as a long run would: the kernels it may pick later
    started = time.perf_counter()
    found = batch_probe.probe(subject(), bound=65536)
    probe_s = time.perf_counter() - started
    chosen = batch_probe.with_margin(found)

    probe_steps = batch_probe.STEPS_PER_TRIAL
    try:
        batch_probe.STEPS_PER_TRIAL = TRUE_MAX_STEPS

        def fresh_fits(size: int) -> bool:
            return batch_probe.fits(subject(), size)

        try:  # from what the probe found, to one image
            exact = batch_probe.search(fresh_fits, 65536, start=found.fits, resolution=1 << 30)
        except batch_probe.BatchProbeError:  # more steps need more than the probe's two did
            exact = batch_probe.search(fresh_fits, found.fits, resolution=1 << 30)
        true_max = exact.fits
        batch_probe.STEPS_PER_TRIAL = 1
        trained = subject()
        ooms = sum(not batch_probe.fits(trained, chosen) for _ in range(steps))
    finally:
        batch_probe.STEPS_PER_TRIAL = probe_steps
    cuda = device.type == "cuda"
    return {
        "gpu": batch_probe.gpu_name(device),
        "model": model,
        "image_size": image_size,
        "amp": str(amp),
        "probe_largest_fit": found.fits,
        "probe_trials": len(found.trials),
        "probe_seconds": round(probe_s, 1),
        "chosen": chosen,
        "true_max": true_max,
        "ratio": chosen / true_max,
        "steps_at_chosen": steps,
        "out_of_memory_at_chosen": ooms,
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if cuda else None,
        "total_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if cuda else 0,
    }


if __name__ == "__main__":
    main()
