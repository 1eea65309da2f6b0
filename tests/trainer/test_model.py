"""Building the model: any torchvision classifier, starting weights, a new head, freezing, groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models

from trainer.job.spec import ModelSpec, OptimizerSpec
from trainer.model import WeightsError, build_model, build_optimizer, find_head, replace_head


def test_the_head_of_every_torchvision_classifier_is_found():
    for name in models.list_models(module=models):
        kwargs = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
        try:
            with torch.device("meta"):
                model = models.get_model(name, **kwargs)
        except NotImplementedError:  # RegNet cannot be built on meta: one of them is built below
            continue
        head_name, head = find_head(model)
        width = head.out_features if isinstance(head, nn.Linear) else head.out_channels
        assert width == 1000, f"{name}: {head_name} is not the 1000-class head"


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet18", 64),
        ("mobilenet_v3_small", 64),
        ("squeezenet1_1", 64),
        ("efficientnet_b0", 64),
        ("googlenet", 64),
        ("regnet_x_400mf", 64),
        ("convnext_tiny", 64),
        ("vit_b_32", 224),
    ],
)
def test_new_head_gives_num_classes_logits(name, size):
    model = build_model(ModelSpec(name=name, weights=None), num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    model.train()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)  # plain logits while training too (no aux heads)


def test_torchvision_weights_come_from_torchs_cache(tmp_path, monkeypatch):
    # Weights cannot be downloaded here: put "ImageNet" weights where torch's hub cache looks first.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = models.ResNet18_Weights.IMAGENET1K_V1
    reference = models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    model = build_model(ModelSpec(name="resnet18", weights="DEFAULT"), num_classes=3)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 3


@pytest.fixture
def trained_elsewhere(tmp_path):
    """A resnet18 fine-tuned for 7 classes, saved as a state dict."""
    model = models.resnet18(num_classes=7)
    path = tmp_path / "custom.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_custom_weights_from_a_local_path(trained_elsewhere):
    reference, path = trained_elsewhere
    model = build_model(ModelSpec(name="resnet18", weights=str(path)), num_classes=3)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 3  # the 7-class head was not forced onto 3 classes


def test_custom_weights_from_s3(trained_elsewhere, s3_bucket):
    import boto3

    reference, path = trained_elsewhere
    boto3.client("s3").upload_file(str(path), s3_bucket, "weights/custom.pt")
    model = build_model(ModelSpec(name="resnet18", weights=f"s3://{s3_bucket}/weights/custom.pt"), num_classes=3)
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_weights_of_another_architecture_are_refused(trained_elsewhere):
    _, path = trained_elsewhere
    with pytest.raises(WeightsError, match=r"do not fit MobileNetV3: \d+ missing keys"):
        build_model(ModelSpec(name="mobilenet_v3_small", weights=str(path)), num_classes=3)


def test_missing_weights_url(tmp_path):
    with pytest.raises(WeightsError, match="do not exist; check train.model.weights"):
        build_model(ModelSpec(name="resnet18", weights=str(tmp_path / "nope.pt")), num_classes=3)


def test_freeze_backbone_trains_only_the_head(trained_elsewhere):
    _, path = trained_elsewhere
    model = build_model(ModelSpec(name="resnet18", weights=str(path), freeze="backbone"), num_classes=3)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]


def test_frozen_prefixes_get_no_optimizer_state_and_groups_get_their_lr():
    model = build_model(ModelSpec(name="resnet18", weights=None, freeze=["conv1", "bn1", "layer1"]), num_classes=3)
    spec = OptimizerSpec(
        name="sgd", lr=0.1, param_groups=[{"prefixes": ["layer4", "layer3.1"], "lr": 0.01, "weight_decay": 0.0}]
    )
    optimizer = build_optimizer(model, spec)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("group0:layer4,layer3.1", 0.01, 0.0),
        ("default", 0.1, 1e-4),
    ]
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    by_name = dict(model.named_parameters())
    assert id(by_name["layer4.0.conv1.weight"]) in {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(by_name["layer3.0.conv1.weight"]) in {id(p) for p in optimizer.param_groups[1]["params"]}
    assert id(by_name["conv1.weight"]) not in grouped and id(by_name["layer1.0.conv1.weight"]) not in grouped
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    assert all(id(p) in grouped for p in optimizer.state)  # momentum buffers only for trained parameters
    assert len(optimizer.state) == sum(len(g["params"]) for g in optimizer.param_groups)


def test_replace_head_on_squeezenet_keeps_the_conv_form():
    model = models.squeezenet1_1()
    replace_head(model, 4)
    assert isinstance(model.classifier[1], nn.Conv2d) and model.classifier[1].out_channels == 4


def test_the_setup_lines_say_what_was_built():
    import torch

    from trainer.job.spec import TrainSpec
    from trainer.model import setup_lines
    from trainer.schedule import build_scheduler

    train = TrainSpec.model_validate(
        {
            "model": {"name": "resnet18", "weights": None, "freeze": ["conv1", "bn1", "layer1"]},
            "data": {"train": "./d", "workers": 2},
            "optimizer": {"name": "sgd", "lr": 0.1, "param_groups": [{"prefixes": ["layer4"], "lr": 0.01}]},
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            "batch_size": 16,
        }
    )
    model = build_model(train.model, num_classes=3)
    optimizer = build_optimizer(model, train.optimizer)
    build_scheduler(optimizer, train, steps_per_epoch=10)  # the warm-up lowers each group's lr
    layer4 = sum(p.numel() for name, p in model.named_parameters() if name.startswith("layer4"))
    frozen = sum(p.numel() for name, p in model.named_parameters() if name.startswith(("conv1", "bn1", "layer1")))
    rest = sum(p.numel() for p in model.parameters()) - layer4 - frozen
    assert setup_lines(train, model, optimizer, None, torch.device("cpu")) == [
        "model: resnet18, weights none (random init)",
        "model: head fc replaced by a new Linear 512 -> 3 features",
        f"model: {layer4 + rest:,} trainable and {frozen:,} frozen parameters (freeze: conv1, bn1, layer1)",
        f"optimizer: sgd, 2 param group(s): group0:layer4 lr 0.01 (weight decay 0.0001, {layer4:,} parameters); "
        f"default lr 0.1 (weight decay 0.0001, {rest:,} parameters)",
        "training: batch size 16, AMP off (fp32), 2 data workers, on cpu",
    ]
    named = train.model.model_copy(update={"weights": "IMAGENET1K_V1", "freeze": "backbone"})
    assert setup_lines(
        train.model_copy(update={"model": named}), model, optimizer, torch.bfloat16, torch.device("cuda")
    )[::4] == [
        "model: resnet18, weights torchvision IMAGENET1K_V1",
        "training: batch size 16, AMP bf16, 2 data workers, on cuda",
    ]
