"""The shipped model catalog matches the torchvision it was generated from."""

from __future__ import annotations

import pytest

from trainer.job import catalog as model_catalog

torchvision = pytest.importorskip("torchvision")


def test_catalog_was_generated_from_the_installed_torchvision():
    assert model_catalog.source_versions()["torchvision"] == torchvision.__version__.split("+")[0]


def test_catalog_lists_every_classification_model_and_its_weights():
    from torchvision import models

    catalog = model_catalog.load()
    assert sorted(catalog) == sorted(models.list_models(module=models))
    for name, info in catalog.items():
        enum = models.get_model_weights(name)
        assert set(info.weights) == {w.name for w in enum}
        assert info.default_weights == enum.DEFAULT.name


@pytest.mark.parametrize(
    "name", ["resnet50", "efficientnet_b0", "vit_b_16", "convnext_tiny", "regnet_y_400mf", "inception_v3"]
)
def test_catalog_entry_matches_a_fresh_generation(name):
    assert model_catalog.generate([name])["models"][name] == _raw_entry(name)


def _raw_entry(name):
    import json

    return json.loads(model_catalog.CATALOG_PATH.read_text())["models"][name]


def test_module_prefixes():
    resnet = model_catalog.load()["resnet50"]
    assert resnet.has_module_prefix("layer4") and resnet.has_module_prefix("layer4.2.conv1")
    assert not resnet.has_module_prefix("layer5") and not resnet.has_module_prefix("layer")
    vit = model_catalog.load()["vit_b_16"]
    assert vit.has_module_prefix("encoder.layers.encoder_layer_11.mlp")  # deeper than stored: first levels checked
    assert vit.required_image_size(None) == 224
    assert vit.required_image_size("IMAGENET1K_SWAG_E2E_V1") == 384
