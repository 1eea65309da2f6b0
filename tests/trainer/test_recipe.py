"""The recipe's parts on their own: batch mixing keyed by (seed, epoch, batch), the augmentation
policies keyed by (seed, epoch, index), the EMA's updates and warm-up, and weight decay off for
normalisation and bias parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer import recipe
from trainer.data import ImageDataset, Normalization, train_transform
from trainer.ema import WeightsEma
from trainer.job.spec import AugmentationSpec, DataSpec, EmaSpec, OptimizerSpec
from trainer.model import build_optimizer


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, 16, 16, generator=generator), torch.arange(8) % 4


@pytest.mark.parametrize("alphas", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_a_batch_mixes_the_same_for_the_same_key_and_leaves_the_global_generator_alone(alphas):
    mixer = recipe.build_mixer(AugmentationSpec(mixup_alpha=alphas[0], cutmix_alpha=alphas[1]), 4, seed=7)
    images, labels = batch()
    before = torch.get_rng_state()
    first = mixer(images, labels, 1, 3)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)  # whatever else drew from the global generator in between does not matter
    again = mixer(images, labels, 1, 3)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    mixed, soft = first
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(dim=1), torch.ones(8))
    assert not torch.equal(mixed, images)
    others = [mixer(images, labels, epoch, b)[1] for epoch, b in ((1, 4), (2, 3))]
    assert not any(torch.equal(soft, other) for other in others)


def test_without_mixup_or_cutmix_there_is_no_mixer_and_accuracy_uses_the_labels():
    assert recipe.build_mixer(AugmentationSpec(), 4, seed=0) is None
    labels = torch.tensor([2, 0, 1])
    assert torch.equal(recipe.hard_labels(labels), labels)
    soft = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.4, 0.0]])
    assert recipe.hard_labels(soft).tolist() == [2, 0]


def test_mixup_and_cutmix_both_on_pick_one_per_batch():
    mixer = recipe.build_mixer(AugmentationSpec(mixup_alpha=0.2, cutmix_alpha=1.0), 4, seed=0)
    images, labels = batch()
    kinds = set()
    for b in range(40):
        mixed, _ = mixer(images, labels, 0, b)
        # cutmix pastes a box: some pixels are exactly the image's own or its neighbour's; mixup blends all
        kinds.add("cutmix" if bool((mixed == images).any()) else "mixup")
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment", "autoaugment"])
def test_each_policy_is_keyed_by_seed_epoch_and_index(policy, image_folder):
    data = image_folder(per_class={"train": 2})
    spec = DataSpec(train=data.split("train"), image_size=32, augmentation={"policy": policy, "random_erasing": 0.5})
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1.0)
    samples = [(path, 0) for path in data.files["train"]]
    dataset = ImageDataset(samples, train_transform(spec, norm), seed=3)
    seen = [dataset[(epoch, 0)][0] for epoch in range(6)]
    assert torch.equal(dataset[(2, 0)][0], seen[2])  # the same key, the same image
    assert len({tuple(image.flatten()[:64].tolist()) for image in seen}) > 1
    names = [type(t).__name__ for t in train_transform(spec, norm).transforms]
    assert names[-1] == "RandomErasing" and {"TrivialAugmentWide", "RandAugment", "AutoAugment"} & set(names)


def test_ema_averages_every_n_batches_and_copies_during_warm_up():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightsEma(model, EmaSpec(decay=0.5, every_steps=2, adjust=False), 32, 10, warmup_epochs=1)
    weight = lambda m: m[0].weight.detach().clone()  # noqa: E731
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema.after_step(model, epoch=0, batch=0)  # warm-up: a copy
    assert torch.equal(weight(ema.module), weight(model))
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.after_step(model, epoch=1, batch=1)  # not a multiple of every_steps: nothing
    assert torch.equal(weight(ema.module), torch.ones(2, 2))
    ema.after_step(model, epoch=1, batch=2)  # the first update after warm-up: still a copy (n_averaged was reset)
    assert torch.equal(weight(ema.module), torch.full((2, 2), 3.0))
    with torch.no_grad():
        model[0].weight.fill_(5.0)
    ema.after_step(model, epoch=1, batch=4)
    assert torch.equal(weight(ema.module), torch.full((2, 2), 4.0))  # 0.5 * 3 + 0.5 * 5
    state = ema.state_dict()
    other = WeightsEma(model, EmaSpec(decay=0.5, every_steps=2, adjust=False), 32, 10, warmup_epochs=1)
    other.load_state_dict(state)
    assert torch.equal(weight(other.module), torch.full((2, 2), 4.0))


def groups(model: nn.Module, **spec) -> list[tuple[str, float, int]]:
    optimizer = build_optimizer(model, OptimizerSpec(weight_decay=1e-4, **spec))
    return [(g["name"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups]


def test_norm_and_bias_weight_decay_split_the_groups_as_the_reference():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    assert groups(model) == [("default", 1e-4, 6)]  # as before: one group
    assert groups(model, norm_weight_decay=0.0) == [("default", 1e-4, 4), ("default:norm", 0.0, 2)]
    # a bias goes by its name first (the norm layer's too), as the reference's custom key "bias"
    assert groups(model, norm_weight_decay=0.0, bias_weight_decay=1e-5) == [
        ("default", 1e-4, 2),
        ("default:bias", 1e-5, 3),
        ("default:norm", 0.0, 1),
    ]


def test_param_groups_keep_their_lr_when_split():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    optimizer = build_optimizer(
        model,
        OptimizerSpec(lr=0.1, param_groups=[{"prefixes": ["3"], "lr": 0.01}], bias_weight_decay=0.0),
    )
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("group0:3", 0.01, 1e-4),
        ("group0:3:bias", 0.01, 0.0),
        ("default", 0.1, 1e-4),
        ("default:bias", 0.1, 0.0),
    ]
