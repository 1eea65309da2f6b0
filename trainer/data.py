"""Training data: ImageFolder indexes, transforms with the weights' statistics, and loading that a
resumed run replays exactly.

Exact resume rests on three rules (each measured to matter):
- the shuffle of epoch e is a permutation seeded with seed + e, independent of anything before it;
- each sample's augmentation is seeded from (seed, epoch, index), so it does not depend on which worker
  loads it, on how many workers there are, or on which samples a resumed run skipped;
- a resumed epoch starts at its first unconsumed batch without loading the ones before it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import models, transforms

from trainer.fetch import DataError
from trainer.job.imagefolder import IMAGE_EXTENSIONS
from trainer.job.spec import DataSpec, ModelSpec, is_weights_name

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------ indexes
@dataclass(frozen=True)
class ImageIndex:
    """The images of one ImageFolder: class names (sorted folder names) and (path, class) samples."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]


def scan(root: Path, field: str) -> ImageIndex:
    """Index an ImageFolder (`root/<class>/**/<image>`) in a deterministic order."""
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(
            f"{field}: {root} has no class folders; an ImageFolder holds one folder per class, e.g. {root}/cat/001.jpg"
        )
    samples = []
    for label, name in enumerate(classes):
        found = sorted(
            str(Path(folder) / file)
            for folder, _, files in os.walk(root / name)
            for file in files
            if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith(".")
        )
        if not found:
            raise DataError(
                f"{field}: class folder '{name}' in {root} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        samples += [(path, label) for path in found]
    if len(classes) < 2:
        raise DataError(
            f"{field}: {root} has only the class '{classes[0]}'; a classifier needs at least two class folders"
        )
    return ImageIndex(root, classes, samples)


def check_same_classes(train: ImageIndex, val: ImageIndex) -> None:
    if train.classes == val.classes:
        return
    missing = sorted(set(train.classes) - set(val.classes))
    extra = sorted(set(val.classes) - set(train.classes))
    parts = ([f"missing in val: {', '.join(missing)}"] if missing else []) + (
        [f"only in val: {', '.join(extra)}"] if extra else []
    )
    raise DataError(
        f"train.data: train and val have different class folders ({'; '.join(parts)}); give both the same classes"
    )


def split_indices(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded train/val split of `count` samples: the same every run and every attempt."""
    held_out = max(1, round(count * fraction))
    if held_out >= count:
        raise DataError(
            f"train.data.train: {count} images are too few to hold out a val_fraction of {fraction:g}; add images or give data.val"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[held_out:]), sorted(order[:held_out])


# --------------------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_ratio: float  # validation resizes to size * ratio, then center-crops `size`


def normalization(spec: ModelSpec) -> Normalization:
    """The statistics the starting weights were trained with (ImageNet's for random or custom weights)."""
    if spec.weights and is_weights_name(spec.weights):
        preset = models.get_model_weights(spec.name)[spec.weights].transforms()
        return Normalization(tuple(preset.mean), tuple(preset.std), preset.resize_size[0] / preset.crop_size[0])
    return Normalization(IMAGENET_MEAN, IMAGENET_STD, 256 / 224)


def train_transform(spec: DataSpec, norm: Normalization) -> transforms.Compose:
    aug, size = spec.augmentation, spec.image_size
    steps = (
        [transforms.RandomResizedCrop(size, scale=aug.crop_scale, antialias=True)]
        if aug.random_resized_crop
        else val_transform(spec, norm).transforms[:2]
    )
    if aug.horizontal_flip:
        steps.append(transforms.RandomHorizontalFlip())
    if aug.color_jitter:
        steps.append(transforms.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(norm.mean, norm.std)])


def val_transform(spec: DataSpec, norm: Normalization) -> transforms.Compose:
    size = spec.image_size
    return transforms.Compose(
        [
            transforms.Resize(round(size * norm.resize_ratio), antialias=True),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(norm.mean, norm.std),
        ]
    )


# ------------------------------------------------------------------------------------------ loading
def leave_signals_to_the_trainer(worker_id: int) -> None:
    """Every data worker's init: SIGTERM and SIGINT are the training process's to act on.

    `timeout`, systemd at shutdown, Slurm, `kill -TERM -- -PGID` and a terminal's Ctrl-C signal the
    whole process group. A worker that died of it would take the step in flight with it before the
    loop reached its boundary, so no final checkpoint. Ignoring them here (after torch's own worker
    handlers, which end a worker on SIGTERM) lets the trainer save and shut its workers down itself.
    Worker seeding is untouched: each sample seeds its own augmentation (`sample_seed`).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def quiet_worker_exits_after_a_stop(stopping: Callable[[], bool]) -> Callable[[], None]:
    """Once a stop is requested, a data worker that dies no longer raises in the training process.
    Returns what undoes it (the trainer's close).

    torch's SIGCHLD handler (installed by a loader's first multi-worker iterator) raises "DataLoader
    worker ... killed by signal" wherever the main thread happens to be: inside an optimizer step or
    the final checkpoint's state copy, which would turn the graceful save into a failure. After a
    stop the loop needs no more data, and a loader asked for data still reports a dead worker where
    it is asked (the loop handles it there). Call after the first `iter()` of a loader with workers;
    only the main thread may set signal handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGCHLD)
    if not callable(previous):  # no workers, so no torch handler
        return lambda: None

    def on_child_exit(signum, frame):
        if not stopping():
            previous(signum, frame)

    signal.signal(signal.SIGCHLD, on_child_exit)
    return lambda: signal.signal(signal.SIGCHLD, previous)


def shut_down_workers(loader: DataLoader) -> None:
    """End a loader's persistent workers now; kill one that does not leave when asked.

    The trainer must do it before it exits: its workers ignore SIGTERM, and at interpreter exit
    multiprocessing terminates its daemonic children (with SIGTERM) and then joins them without a
    timeout, before or after torch's own clean-up depending on import order: that would wait forever.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is None:
        return
    loader._iterator = None
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # done event, then a None to each worker; joins them (5 s each)
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():  # stuck: SIGTERM is ignored, so torch's terminate() did nothing
            worker.kill()
            worker.join(timeout=5)


class BadImage(NamedTuple):
    """An image that failed to decode: skipped, counted, and reported by path."""

    path: str
    reason: str


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch: well mixed, and the same in any process."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0])


class ImageDataset(Dataset):
    """Samples addressed by (epoch, index) keys, so augmentation randomness follows the sample."""

    def __init__(self, samples: list[tuple[str, int]], transform, seed: int):
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return BadImage(path, f"{type(exc).__name__}: {exc}")
        # Transforms draw from torch's global generator: give them their own seed and leave the
        # caller's state untouched (with 0 workers this runs in the training process, next to dropout).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(image), label


def collate(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[BadImage]]:
    """Stack the decoded samples; bad images leave the batch and are returned for counting."""
    good = [item for item in batch if not isinstance(item, BadImage)]
    bad = [item for item in batch if isinstance(item, BadImage)]
    if not good:
        return None, None, bad
    return torch.stack([image for image, _ in good]), torch.tensor([label for _, label in good]), bad


class ResumableBatchSampler:
    """Batches of (epoch, index) keys: the seed+epoch permutation, starting at the first unconsumed batch.

    Under DDP every rank builds the same global batches and takes its contiguous slice of each
    (`trainer.distributed.shard`), so the ranks together see exactly the samples, and the
    augmentations, of a single-process run with the same global batch size.
    """

    def __init__(
        self, count: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ):
        self.count, self.batch_size, self.seed, self.shuffle = count, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        # Full batches only while training (a batch of one breaks BatchNorm), unless the set is smaller than one batch.
        self.drop_last = shuffle and count >= batch_size
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        full, rest = divmod(self.count, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def global_batches(self) -> Iterator[list[tuple[int, int]]]:
        """The whole batches (every rank's share), from the first unconsumed one."""
        if self.shuffle:
            order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.count))
        for batch in range(self.start_batch, len(self)):
            yield [(self.epoch, index) for index in order[batch * self.batch_size : (batch + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        from trainer.distributed import shard

        for batch in self.global_batches():
            # A rank whose slice of a short last (validation) batch is empty still yields it: every
            # rank then goes through the same number of batches, which the per-batch agreement needs.
            yield shard(batch, self.rank, self.world_size) if self.world_size > 1 else batch


@dataclass
class TrainingData:
    classes: list[str]
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: ResumableBatchSampler
    train_size: int
    val_size: int
    calibration_set: ImageDataset  # the training images with the validation transform (see calibration_batches)
    seed: int

    def close(self) -> None:
        """End the loaders' data workers (see shut_down_workers)."""
        for loader in (self.train_loader, self.val_loader):
            shut_down_workers(loader)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_sampler)

    def calibration_batches(self, count: int, batch_size: int = 32) -> Iterator[torch.Tensor]:
        """`count` training images (a seeded choice) as inference sees them: no augmentation, for int8
        calibration. Images that fail to decode are left out, as in training."""
        order = torch.randperm(len(self.calibration_set), generator=torch.Generator().manual_seed(self.seed))[
            :count
        ].tolist()
        for start in range(0, len(order), batch_size):
            images, _, _ = collate([self.calibration_set[(0, index)] for index in order[start : start + batch_size]])
            if images is not None:
                yield images

    def validation_spread(self, count: int, batch_size: int = 64) -> Iterator[torch.Tensor]:
        """Up to `count` validation images spread evenly over the set (which is sorted by class, so
        the first N would be the first classes only), in batches; bad images are left out."""
        dataset = self.val_loader.dataset
        take = min(count, len(dataset))
        indices = [i * len(dataset) // take for i in range(take)] if take else []
        for start in range(0, len(indices), batch_size):
            images, _, _ = collate([dataset[(0, index)] for index in indices[start : start + batch_size]])
            if images is not None:
                yield images


def build(
    spec: DataSpec,
    model: ModelSpec,
    seed: int,
    batch_size: int,
    train_root: Path,
    val_root: Path | None,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> TrainingData:
    """Datasets and loaders from local ImageFolders (see trainer.fetch for getting them there)."""
    train_index = scan(train_root, "train.data.train")
    if val_root is not None:
        val_index = scan(val_root, "train.data.val")
        check_same_classes(train_index, val_index)
        train_samples, val_samples = train_index.samples, val_index.samples
    else:
        train_ids, val_ids = split_indices(len(train_index.samples), spec.val_fraction, seed)
        train_samples = [train_index.samples[i] for i in train_ids]
        val_samples = [train_index.samples[i] for i in val_ids]
    norm = normalization(model)
    train_set = ImageDataset(train_samples, train_transform(spec, norm), seed)
    val_set = ImageDataset(val_samples, val_transform(spec, norm), seed)
    sampler = ResumableBatchSampler(len(train_set), batch_size, seed, rank=rank, world_size=world_size)

    def loader(dataset: ImageDataset, batches: ResumableBatchSampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=spec.workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            persistent_workers=spec.workers > 0,
            worker_init_fn=leave_signals_to_the_trainer if spec.workers > 0 else None,
            # Our own generator: otherwise every new iterator draws its workers' base seed from the
            # global generator, and a resumed run (which starts iterating mid-epoch) would drift from
            # the uninterrupted one in everything else that uses it (dropout).
            generator=torch.Generator(),
        )

    log.info(
        "data: %d classes, %d training and %d validation images", len(train_index.classes), len(train_set), len(val_set)
    )
    return TrainingData(
        classes=train_index.classes,
        train_loader=loader(train_set, sampler),
        val_loader=loader(
            val_set,
            ResumableBatchSampler(len(val_set), batch_size, seed, shuffle=False, rank=rank, world_size=world_size),
        ),
        train_sampler=sampler,
        train_size=len(train_set),
        val_size=len(val_set),
        calibration_set=ImageDataset(train_samples, val_transform(spec, norm), seed),
        seed=seed,
    )
