"""A small real image dataset made without any network: coloured shapes, one class per shape, drawn
at a random place, scale and colour (a model can learn them in a minute on a CPU).

    python -m trainer.sample_data data/shapes            # data/shapes/{train,val}/<shape>/NNNN.png
    python -m trainer.sample_data s3://bucket/datasets/shapes --per-class 200 --size 64

Used by the quickstart (`make demo`) and by the tests.
"""

from __future__ import annotations

import argparse
import random

import fsspec
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring")


def render(
    root: str, classes: tuple[str, ...] = SHAPES, per_split: dict[str, int] | None = None, size: int = 64, seed: int = 0
) -> dict[str, list[str]]:
    """Write `root/<split>/<class>/NNNN.png` (local folder or any fsspec URL); returns the paths per split."""
    per_split = per_split or {"train": 80, "val": 20}
    fs, base = fsspec.core.url_to_fs(str(root))
    rng = random.Random(seed)
    written: dict[str, list[str]] = {}
    for split, count in per_split.items():
        written[split] = []
        for index, name in enumerate(classes):
            folder = f"{base.rstrip('/')}/{split}/{name}"
            fs.makedirs(folder, exist_ok=True)
            for i in range(count):
                path = f"{folder}/{i:04d}.png"
                with fs.open(path, "wb") as handle:
                    draw(SHAPES[index % len(SHAPES)], size, rng).save(handle, format="PNG")
                written[split].append(path)
    return written


def draw(shape: str, size: int, rng: random.Random) -> Image.Image:
    background = tuple(rng.randrange(0, 80) for _ in range(3))
    colour = tuple(rng.randrange(140, 256) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    extent = rng.uniform(0.45, 0.8) * size
    x0, y0 = rng.uniform(0, size - extent), rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    width = max(1, size // 10)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "triangle":
        pen.polygon([(x0, y0 + extent), (x0 + extent / 2, y0), (x0 + extent, y0 + extent)], fill=colour)
    elif shape == "cross":
        pen.line([(x0, y0), (x0 + extent, y0 + extent)], fill=colour, width=width)
        pen.line([(x0, y0 + extent), (x0 + extent, y0)], fill=colour, width=width)
    else:
        pen.ellipse(box, outline=colour, width=width)
    return image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.sample_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="folder or URL to write the dataset to")
    parser.add_argument(
        "--per-class", type=int, default=80, help="training images per class (validation gets a quarter)"
    )
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = render(
        args.dest,
        per_split={"train": args.per_class, "val": max(2, args.per_class // 4)},
        size=args.size,
        seed=args.seed,
    )
    print(
        f"wrote {sum(map(len, written.values()))} images of {len(SHAPES)} shapes to {args.dest}/{{{','.join(written)}}}"
    )


if __name__ == "__main__":
    main()
