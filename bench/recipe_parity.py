"""Recipe parity: spotctl's trainer with `recipe: torchvision-v2` vs a script that follows torchvision's
reference `references/classification/train.py` with the same settings, on the same small dataset
and seeds, on CPU.

The reference side is written here after the reference's logic, not imported (it is not a package):
  data    torchvision ImageFolder; train: RandomResizedCrop, RandomHorizontalFlip, TrivialAugmentWide
          (bilinear), PILToTensor, ToDtype(float, scale), Normalize, RandomErasing(p) — its
          ClassificationPresetTrain with `--auto-augment ta_wide --random-erase`; val: Resize, CenterCrop;
          DataLoader(shuffle) whose collate applies RandomChoice([MixUp, CutMix]) (its get_mixup_cutmix)
  model   the same architecture and initial head (trainer.model.build_model, seeded like the trainer)
  loss    CrossEntropyLoss(label_smoothing)
  optim   SGD momentum 0.9, weight decay with its set_weight_decay split (norm layers' parameters at
          norm_weight_decay)
  lr      LinearLR warm-up (start 0.01) then CosineAnnealingLR, stepped once per epoch as the reference does
  EMA     AveragedModel over parameters and buffers, decay adjusted by batch x steps / epochs, updated every
          `every_steps` batches, reset during the warm-up epochs
Both sides: resnet18 from random init (no weights are downloaded), the shapes dataset (trainer.sample_data),
the same epochs, batch size, lr and seed. Reported per seed: final val top-1 of the raw and
the EMA model; then the mean and spread (max - min) over the seeds, and the difference of the means.
The claim is "within noise": |mean difference| no larger than the larger of the two spreads.

Run:    python -m bench.recipe_parity [--quick] [--json PATH]   (from the repository root)
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, default_collate
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode, v2

from bench.common import parser, print_table, write_json
from testbed.trainer_runs import final_state, run_trainer, trainer_env, write_job
from trainer import sample_data
from trainer.data import IMAGENET_MEAN, IMAGENET_STD
from trainer.job.spec import EmaSpec, ModelSpec
from trainer.model import NORM_LAYERS, build_model

SEEDS = (0, 1, 2)
SETTINGS = {
    "model": "resnet18",
    "image_size": 32,
    "epochs": 6,
    "batch_size": 16,
    "lr": 0.05,
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "mixup_alpha": 0.2,
    "cutmix_alpha": 1.0,
    "random_erasing": 0.1,
    "weight_decay": 2e-5,
    "norm_weight_decay": 0.0,
    "ema_decay": 0.99998,
    "ema_every_steps": 4,
}


def make_data(root: Path, per_class: int, size: int) -> Path:
    sample_data.render(str(root), sample_data.SHAPES, {"train": per_class, "val": per_class // 2}, size, seed=0)
    return root


# ------------------------------------------------------------------------------------- spotctl's side
def run_spotctl(data: Path, work: Path, seed: int, s: dict) -> dict:
    job = write_job(
        work / f"job-{seed}.yaml",
        str(work / "runs"),
        str(data / "train"),
        str(data / "val"),
        name=f"parity-{seed}",
        train__model={"name": s["model"], "weights": None},
        train__data={
            "train": str(data / "train"),
            "val": str(data / "val"),
            "image_size": s["image_size"],
            "workers": 0,
        },
        train__recipe="torchvision-v2",
        train__optimizer={"name": "sgd", "lr": s["lr"]},
        train__scheduler={"name": "cosine", "warmup_epochs": s["warmup_epochs"]},
        train__ema={"every_steps": s["ema_every_steps"]},
        train__epochs=s["epochs"],
        train__batch_size=s["batch_size"],
        train__seed=seed,
        train__checkpoint={"every_steps": None, "every_seconds": None, "keep": 1},
    )
    started = time.perf_counter()
    # One torch thread on both sides (the reference runs in this process with one).
    env = trainer_env({"OMP_NUM_THREADS": "1"})
    code = run_trainer(str(job), env, timeout=3600, log=work / f"spotctl-{seed}.log")
    if code != 0:
        raise RuntimeError(f"the trainer exited {code}: {(work / f'spotctl-{seed}.log').read_text()[-2000:]}")
    last = final_state(str(work / "runs/jobs" / f"parity-{seed}"))["history"][-1]
    return {"acc1": last["val_acc1"], "ema_acc1": last["ema_val_acc1"], "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------------ the reference's side
def reference_param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float) -> list[dict]:
    norm, other = [], []
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad:
                (norm if isinstance(module, NORM_LAYERS) else other).append(parameter)
    return [{"params": other, "weight_decay": weight_decay}, {"params": norm, "weight_decay": norm_weight_decay}]


def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    hits = total = 0
    with torch.inference_mode():
        for images, labels in loader:
            hits += int((model(images).argmax(dim=1) == labels).sum())
            total += len(labels)
    model.train()
    return hits / total


def run_reference(data: Path, seed: int, s: dict) -> dict:
    started = time.perf_counter()
    torch.manual_seed(seed)
    bilinear = InterpolationMode.BILINEAR
    size = s["image_size"]
    train_set = ImageFolder(
        str(data / "train"),
        v2.Compose(
            [
                v2.RandomResizedCrop(size, interpolation=bilinear, antialias=True),
                v2.RandomHorizontalFlip(0.5),
                v2.TrivialAugmentWide(interpolation=bilinear),
                v2.PILToTensor(),
                v2.ToDtype(torch.float, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                v2.RandomErasing(p=s["random_erasing"]),
                v2.ToPureTensor(),
            ]
        ),
    )
    val_set = ImageFolder(
        str(data / "val"),
        v2.Compose(
            [
                v2.Resize(round(size * 256 / 224), interpolation=bilinear, antialias=True),
                v2.CenterCrop(size),
                v2.PILToTensor(),
                v2.ToDtype(torch.float, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                v2.ToPureTensor(),
            ]
        ),
    )
    classes = len(train_set.classes)
    mix = v2.RandomChoice(
        [v2.MixUp(alpha=s["mixup_alpha"], num_classes=classes), v2.CutMix(alpha=s["cutmix_alpha"], num_classes=classes)]
    )
    train_loader = DataLoader(
        train_set,
        batch_size=s["batch_size"],
        shuffle=True,
        drop_last=True,
        collate_fn=lambda b: mix(*default_collate(b)),
    )
    val_loader = DataLoader(val_set, batch_size=64)

    torch.manual_seed(seed)  # the new head's init, as the trainer seeds it
    model = build_model(ModelSpec(name=s["model"], weights=None), classes)
    criterion = nn.CrossEntropyLoss(label_smoothing=s["label_smoothing"])
    optimizer = torch.optim.SGD(
        reference_param_groups(model, s["weight_decay"], s["norm_weight_decay"]),
        lr=s["lr"],
        momentum=0.9,
        weight_decay=s["weight_decay"],
    )
    epochs, warmup = s["epochs"], s["warmup_epochs"]
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup),
        ],
        milestones=[warmup],
    )
    decay = EmaSpec(decay=s["ema_decay"], every_steps=s["ema_every_steps"]).effective_decay(s["batch_size"], epochs)
    ema = AveragedModel(
        model, avg_fn=lambda averaged, current, _: decay * averaged + (1 - decay) * current, use_buffers=True
    )
    for epoch in range(epochs):
        model.train()
        for i, (images, targets) in enumerate(train_loader):
            loss = criterion(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i % s["ema_every_steps"] == 0:
                ema.update_parameters(model)
                if epoch < warmup:
                    ema.n_averaged.fill_(0)
        scheduler.step()
    return {
        "acc1": evaluate(model, val_loader),
        "ema_acc1": evaluate(ema.module, val_loader),
        "seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------------------------------------ main
def summary(runs: list[dict], key: str) -> tuple[float, float]:
    values = [run[key] for run in runs]
    return statistics.mean(values), max(values) - min(values)


def main() -> None:
    args = parser(__doc__).parse_args()
    settings = dict(SETTINGS)
    per_class = 40
    if args.quick:
        settings["epochs"], per_class = 2, 16
    torch.set_num_threads(1)
    results: dict[str, list[dict]] = {"spotctl": [], "reference": []}
    with tempfile.TemporaryDirectory(prefix="recipe-parity-") as tmp:
        work = Path(tmp)
        data = make_data(work / "data", per_class, 48)
        for seed in SEEDS:
            results["reference"].append(run_reference(data, seed, settings))
            results["spotctl"].append(run_spotctl(data, work, seed, settings))
            print(f"seed {seed}: reference {results['reference'][-1]}, spotctl {results['spotctl'][-1]}", flush=True)
    rows = []
    for seed_index, seed in enumerate(SEEDS):
        ours, theirs = results["spotctl"][seed_index], results["reference"][seed_index]
        rows.append([seed, theirs["acc1"], ours["acc1"], theirs["ema_acc1"], ours["ema_acc1"]])
    print(f"settings: {json.dumps(settings)}; {len(sample_data.SHAPES)} classes x {per_class} train images")
    print_table(["seed", "reference acc1", "spotctl acc1", "reference EMA acc1", "spotctl EMA acc1"], rows)
    figures = {"settings": settings, "per_class": per_class, "runs": results}
    for key in ("acc1", "ema_acc1"):
        (ours_mean, ours_spread), (theirs_mean, theirs_spread) = (
            summary(results["spotctl"], key),
            summary(results["reference"], key),
        )
        within = abs(ours_mean - theirs_mean) <= max(ours_spread, theirs_spread)
        print(
            f"{key}: reference mean {theirs_mean:.3f} (spread {theirs_spread:.3f}), spotctl mean {ours_mean:.3f} "
            f"(spread {ours_spread:.3f}), difference {ours_mean - theirs_mean:+.3f}: {'within' if within else 'outside'} the noise"
        )
        figures[key] = {"spotctl_mean": ours_mean, "reference_mean": theirs_mean, "within_noise": within}
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
