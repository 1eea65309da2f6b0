"""`train.recipe` expands to the published settings, the file's own fields win, and EMA's decay is
adjusted as torchvision's reference does."""

from __future__ import annotations

import pytest

from trainer.job.spec import RECIPES, EmaSpec
from trainer.job.spec_file import parse_spec

MINIMAL = """\
name: tiny
storage: s3://bucket-a/spotctl
train:
  model:
    name: resnet18
  data:
    train: s3://bucket-a/data/train
"""


def test_without_a_recipe_nothing_changes():
    train = parse_spec(MINIMAL).train
    aug = train.data.augmentation
    assert (aug.policy, aug.random_erasing, aug.mixup_alpha, aug.cutmix_alpha) == ("none", 0.0, 0.0, 0.0)
    assert (train.ema, train.compile, train.recipe, train.label_smoothing) == (None, False, None, 0.0)
    assert (train.optimizer.weight_decay, train.optimizer.norm_weight_decay, train.optimizer.bias_weight_decay) == (
        1e-4,
        None,
        None,
    )


def test_torchvision_v2_sets_the_reference_recipes_regularisation():
    train = parse_spec(MINIMAL + "  recipe: torchvision-v2\n").train
    aug = train.data.augmentation
    assert (aug.policy, aug.random_erasing, aug.mixup_alpha, aug.cutmix_alpha) == ("trivialaugment", 0.1, 0.2, 1.0)
    assert train.label_smoothing == 0.1
    assert (train.optimizer.weight_decay, train.optimizer.norm_weight_decay) == (2e-5, 0.0)
    assert (train.ema.decay, train.ema.every_steps) == (0.99998, 32)
    # what it leaves alone
    assert (train.optimizer.lr, train.epochs, train.batch_size, train.scheduler.name) == (0.01, 10, 32, "cosine")
    assert train.data.image_size == 224 and train.data.augmentation.horizontal_flip is True


def test_fields_in_the_file_override_the_recipe():
    spec = parse_spec(
        MINIMAL
        + "    augmentation: {mixup_alpha: 0.0, policy: randaugment}\n"
        + "  recipe: torchvision-v2\n  label_smoothing: 0.2\n  ema: null\n  optimizer: {name: adamw, lr: 0.001}\n"
    )
    train = spec.train
    assert (train.data.augmentation.mixup_alpha, train.data.augmentation.policy) == (0.0, "randaugment")
    assert train.data.augmentation.cutmix_alpha == 1.0  # still the recipe's
    assert (train.label_smoothing, train.ema) == (0.2, None)
    assert (train.optimizer.name, train.optimizer.lr, train.optimizer.weight_decay) == ("adamw", 0.001, 2e-5)


def test_an_unknown_recipe_is_refused_by_name(tmp_path):
    from trainer.job.spec_file import SpecError

    with pytest.raises(SpecError) as caught:
        parse_spec(MINIMAL + "  recipe: torchvision-v3\n")
    assert "recipe" in str(caught.value) and "torchvision-v2" in str(caught.value)


def test_every_recipe_validates_on_its_own():
    for name in RECIPES:
        assert parse_spec(MINIMAL + f"  recipe: {name}\n").train.recipe == name


@pytest.mark.parametrize(
    ("batch_size", "every_steps", "epochs", "expected"),
    [
        (1024, 32, 600, 1 - 2e-5 * 1024 * 32 / 600),  # the ResNet-50 V2 recipe: 8 GPUs x 128
        (32, 32, 10, 1 - 2e-5 * 32 * 32 / 10),
        (4096, 1000, 1, 0.0),  # alpha capped at 1: the average is the weights
    ],
)
def test_ema_decay_is_adjusted_for_batch_size_and_epochs(batch_size, every_steps, epochs, expected):
    spec = EmaSpec(every_steps=every_steps)
    assert spec.effective_decay(batch_size, epochs) == pytest.approx(expected)
    assert EmaSpec(every_steps=every_steps, adjust=False).effective_decay(batch_size, epochs) == 0.99998


def test_validate_shows_what_the_recipe_expanded_to(tmp_path, spotctl):
    job = tmp_path / "job.yaml"
    job.write_text(MINIMAL + "  recipe: torchvision-v2\n  label_smoothing: 0.2\n")
    code, out, err = spotctl("validate", str(job))
    assert (code, err) == (0, "")
    lines = [line.split("── ", 1)[-1] for line in out.splitlines()]
    recipe = "  (from recipe torchvision-v2)"  # what the recipe set, the file's own fields plain
    for shown in ("policy: trivialaugment", "random_erasing: 0.1", "mixup_alpha: 0.2", "cutmix_alpha: 1.0"):
        assert shown + recipe in lines
    assert "norm_weight_decay: 0.0" + recipe in lines and "decay: 0.99998" + recipe in lines
    assert "label_smoothing: 0.2" in lines and "recipe: torchvision-v2" in lines
