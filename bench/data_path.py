"""Data path: images/s on one core of the trainer's loader vs torchvision's ImageFolder + PIL.

On a 4-vCPU GPU instance (g4dn.xlarge, g5.xlarge) the loader, not the GPU, is often the ceiling, so
what counts is images per second per core. Both read the same ImageNet-sized JPEGs (generated here:
500x375, quality 90, smooth shapes with grain, ~60-90 KB each, as photos are) with the same training
transform (RandomResizedCrop 224, horizontal flip; `--jitter` adds ColorJitter) in batches of 32, in
the measuring process (0 workers, 1 torch thread: one core):

  pil      torchvision.datasets.ImageFolder (PIL decode) + v1 transforms + ToTensor + Normalize
           (bench.common.pil_train_transform), torch's DataLoader;
  ours     trainer.data.build's training loader (trainer.decode: torchvision.io decode to uint8,
           transforms.v2 on the tensor) and the normalisation the loop does on the device (here the
           CPU, so it is charged to us), TrainingData.to_device.

Each runs `--repeats` passes over the images, alternating (pil, ours, ours, pil, ...), after one
warm-up pass each; images/s is the median pass. The ratio is ours / pil; each repeat's own ratio (its
two passes ran back to back, so share the machine's load) is printed as the spread.

Run:    python -m bench.data_path [--quick] [--json PATH]   (from the repository root)
Target: ours / pil >= 1.7
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import parser, pil_train_transform, print_table, quiet_logging, verdict, write_json

TARGET = 1.7
WIDTH, HEIGHT = 500, 375


def photo_like(path: Path, rng: random.Random) -> None:
    """A JPEG that compresses like a photo: smooth gradients and shapes, plus grain."""
    from PIL import Image, ImageDraw, ImageFilter

    base = Image.linear_gradient("L").resize((WIDTH, HEIGHT)).rotate(rng.uniform(0, 360))
    image = Image.merge(
        "RGB", [base.point(lambda v, k=k: (v * k) % 256) for k in (rng.uniform(0.5, 2) for _ in range(3))]
    )
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = rng.randrange(WIDTH), rng.randrange(HEIGHT), rng.randrange(10, 120)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    image = image.filter(ImageFilter.GaussianBlur(2))
    grain = Image.effect_noise((WIDTH, HEIGHT), 18).convert("RGB")
    Image.blend(image, grain, 0.12).save(path, format="JPEG", quality=90)


def make_dataset(root: Path, per_class: int) -> Path:
    rng = random.Random(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            photo_like(root / name / f"{i:04d}.jpg", rng)
    return root


def timed_pass(batches) -> tuple[float, int]:
    started, images = time.perf_counter(), 0
    for batch in batches:
        images += len(batch)
    return time.perf_counter() - started, images


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--per-class", type=int, default=96, help="JPEGs per class, 2 classes (default 96)")
    options.add_argument("--repeats", type=int, default=5, help="timed passes of each loader (default 5)")
    options.add_argument("--jitter", type=float, default=0.0, help="ColorJitter strength in both (default 0: off)")
    args = options.parse_args()
    if args.quick:
        args.per_class, args.repeats = 32, 2
    quiet_logging()
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from trainer import data as data_mod
    from trainer.job.spec import DataSpec, ModelSpec

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-data-path-"))
    try:
        root = make_dataset(folder / "train", args.per_class)
        sizes = [p.stat().st_size for p in root.rglob("*.jpg")]
        spec = DataSpec(train=str(root), image_size=224, workers=0, augmentation={"color_jitter": args.jitter})
        model = ModelSpec(name="resnet50", weights=None)
        norm = data_mod.normalization(model)
        reference = DataLoader(ImageFolder(str(root), transform=pil_train_transform(spec, norm)), batch_size=32)
        # val_fraction: the trainer holds out a split; time its training loader over the images it trains on.
        data = data_mod.build(spec, model, seed=0, batch_size=32, train_root=root, val_root=None)
        cpu = torch.device("cpu")

        def pil_batches():
            for images, _ in reference:
                yield images

        def our_batches():
            data.train_sampler.set_position(0)
            for images, _, _ in data.train_loader:
                yield data.to_device(images, cpu, torch.preserve_format)

        runs = {"pil": pil_batches, "ours": our_batches}
        rates: dict[str, list[float]] = {"pil": [], "ours": []}
        for name in runs:
            timed_pass(runs[name]())  # warm-up: page cache, allocator
        order = ["pil", "ours"]
        for repeat in range(args.repeats):
            for name in order if repeat % 2 == 0 else order[::-1]:
                seconds, images = timed_pass(runs[name]())
                rates[name].append(images / seconds)
        medians = {name: statistics.median(values) for name, values in rates.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratio = medians["ours"] / medians["pil"]
    print(
        f"{len(sizes)} JPEGs {WIDTH}x{HEIGHT}, {statistics.mean(sizes) / 1000:.0f} KB on average; RandomResizedCrop 224 + flip"
        + (f" + ColorJitter {args.jitter:g}" if args.jitter else "")
        + "; 1 core"
    )
    print_table(
        ["loader", "images/s (median)", "passes"],
        [[name, medians[name], ", ".join(f"{v:.0f}" for v in rates[name])] for name in ("pil", "ours")],
    )
    pair_ratios = [ours / pil for pil, ours in zip(rates["pil"], rates["ours"], strict=True)]
    print("ratio per repeat: " + ", ".join(f"{r:.2f}" for r in pair_ratios))
    write_json(args.json, {"images_per_sec": medians, "passes": rates, "ratio": ratio, "ratio_per_repeat": pair_ratios})
    verdict(ratio, TARGET, higher_is_better=True)


if __name__ == "__main__":
    main()
