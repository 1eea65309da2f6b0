"""torchvision's reference-recipe techniques that shape the training data: an automatic augmentation
policy and random erasing per image, mixup and cutmix per batch.

All are `torchvision.transforms.v2` transforms, so they work on PIL images and on uint8 / float
tensors alike. They draw from torch's global generator, which is why nothing here is called outside a
seeded scope: per image, `data.ImageDataset` seeds each sample from (seed, epoch, index); per batch,
`BatchMixer` seeds each batch from (seed, epoch, batch) and leaves the caller's generator untouched, so
a resumed run (and any number of data workers) mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from trainer.job.spec import AugmentationSpec

# The reference recipe's interpolation (its --interpolation default); v2's policies default to nearest.
INTERPOLATION = InterpolationMode.BILINEAR
RANDAUGMENT_MAGNITUDE = 9  # the reference's --ra-magnitude default
_MIX_STREAM = 1  # spawn key that keeps batch seeds apart from the per-sample seeds of data.sample_seed


def policy_transforms(aug: AugmentationSpec) -> list:
    """The automatic augmentation policy, placed after the crop and flip (as the reference's presets)."""
    if aug.policy == "trivialaugment":
        return [v2.TrivialAugmentWide(interpolation=INTERPOLATION)]
    if aug.policy == "randaugment":
        return [v2.RandAugment(interpolation=INTERPOLATION, magnitude=RANDAUGMENT_MAGNITUDE)]
    if aug.policy == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=INTERPOLATION)]
    return []


def erasing_transforms(aug: AugmentationSpec, fill: list[int] | None = None) -> list:
    """Random erasing, last of an image's transforms. The images are uint8 until the device normalises
    them, so the erased box is filled with `fill`, the mean colour (the reference erases after
    normalising, with zeros: the same colour)."""
    return [v2.RandomErasing(p=aug.random_erasing, value=fill or 0)] if aug.random_erasing > 0 else []


def batch_seed(seed: int, epoch: int, batch: int, part: int = 0) -> int:
    """The seed of one batch's mixing: well mixed, and apart from every per-sample seed. `part`: the
    micro-batch's place in the global batch (rank x accumulation + micro-batch), so ranks and micro-
    batches draw apart; a whole batch on one process (part 0) is keyed as it always was."""
    entropy = [seed, epoch, batch] + ([part] if part else [])
    sequence = np.random.SeedSequence(entropy, spawn_key=(_MIX_STREAM,))
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


class BatchMixer:
    """Mixup and/or cutmix of a whole batch (one of them, chosen at random per batch, when both are
    on: the reference's RandomChoice), returning soft targets (one-hot mixes)."""

    def __init__(self, aug: AugmentationSpec, num_classes: int, seed: int):
        choices = []
        if aug.mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
        if aug.cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
        self.transform = v2.RandomChoice(choices) if len(choices) > 1 else choices[0]
        self.seed = seed

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, epoch: int, batch: int, part: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The draws (the choice, Beta's lambda, the box) are made on the CPU generator; the mixing
        # itself runs wherever the batch is.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(batch_seed(self.seed, epoch, batch, part))
            return self.transform(images, targets)


def build_mixer(aug: AugmentationSpec, num_classes: int, seed: int) -> BatchMixer | None:
    """The batch mixer the spec asks for; None when mixup and cutmix are both off."""
    if aug.mixup_alpha <= 0 and aug.cutmix_alpha <= 0:
        return None
    return BatchMixer(aug, num_classes, seed)


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices for accuracy: the targets themselves, or a soft target's dominant class."""
    return targets.argmax(dim=1) if targets.ndim == 2 else targets
