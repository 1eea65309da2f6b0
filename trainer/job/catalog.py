"""What torchvision's classification models look like, readable without torch.

The orchestrator validates `train.model` on a laptop that may not have torch, so the facts it needs
(model names, weights names, module paths for `freeze` and `param_groups`, input-size limits) live in
`model_catalog.json`, generated from torchvision by `python -m trainer.job.catalog` and checked
against the installed torchvision by the test suite. Only `generate()` imports torch.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

CATALOG_PATH = Path(__file__).with_name("model_catalog.json")

# Module paths are stored this many levels deep: enough for `layer4`, `features.7` or
# `encoder.layers.encoder_layer_11`; a deeper prefix is checked on its first levels only.
MODULE_DEPTH = 3

# Input sides probed (on the meta device) to find the smallest a model accepts without weights and
# the models that accept only one size (ViT, MaxViT).
_PROBE_SIZES = (32, 64, 96, 160, 224)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    num_params: int
    modules: tuple[str, ...]
    """Named submodules, truncated to MODULE_DEPTH levels."""
    weights: dict[str, int]
    """Weights enum name -> the smallest input side those weights support."""
    default_weights: str
    fixed_size: int | None
    """Without weights the model accepts only this input side (None: any size above the minimum)."""
    probed_min_size: int
    """The smallest probed input side the model accepts without weights."""

    def has_module_prefix(self, prefix: str) -> bool:
        """True when `prefix` names a submodule (or its first MODULE_DEPTH levels do)."""
        head = ".".join(prefix.split(".")[:MODULE_DEPTH])
        return head in self.modules

    def resolve_weights(self, name: str) -> str:
        return self.default_weights if name == "DEFAULT" else name

    def min_image_size(self, weights: str | None) -> int:
        if weights is None:
            return min([self.probed_min_size, *self.weights.values()])
        return self.weights[self.resolve_weights(weights)]

    def required_image_size(self, weights: str | None) -> int | None:
        """The one input side this model takes with these weights, if it takes only one."""
        if self.fixed_size is None:
            return None
        if weights is None:
            return self.fixed_size
        return self.weights[self.resolve_weights(weights)]


@functools.cache
def load() -> dict[str, ModelInfo]:
    raw = json.loads(CATALOG_PATH.read_text())
    return {
        name: ModelInfo(
            name=name,
            num_params=entry["num_params"],
            modules=tuple(entry["modules"]),
            weights=entry["weights"],
            default_weights=entry["default_weights"],
            fixed_size=entry["fixed_size"],
            probed_min_size=entry["probed_min_size"],
        )
        for name, entry in raw["models"].items()
    }


def source_versions() -> dict[str, str]:
    """The torch/torchvision versions the shipped catalog was generated from."""
    return json.loads(CATALOG_PATH.read_text())["generated_from"]


def generate(names: list[str] | None = None) -> dict:
    """Describe torchvision's classification models; needs torch and torchvision."""
    import warnings

    import torch
    import torchvision
    from torchvision import models

    warnings.filterwarnings("ignore", category=FutureWarning, module="torchvision")
    entries = {}
    for name in names or sorted(models.list_models(module=models)):
        try:
            with torch.device("meta"):  # no memory, no init cost
                model = models.get_model(name, weights=None)
        except NotImplementedError:
            # RegNet computes its widths with tensor ops that meta tensors cannot answer.
            model = models.get_model(name, weights=None).to("meta")
        model.eval()
        enum = models.get_model_weights(name)
        accepted = [size for size in _PROBE_SIZES if _forward_ok(model, size)]
        entries[name] = {
            "num_params": enum.DEFAULT.meta["num_params"],
            "modules": sorted({".".join(path.split(".")[:MODULE_DEPTH]) for path, _ in model.named_modules() if path}),
            "weights": {w.name: int(w.meta.get("min_size", (1, 1))[0]) for w in enum},
            "default_weights": enum.DEFAULT.name,
            "fixed_size": accepted[0] if len(accepted) == 1 else None,
            "probed_min_size": accepted[0],
        }
    return {
        "generated_from": {
            "torch": torch.__version__.split("+")[0],
            "torchvision": torchvision.__version__.split("+")[0],
        },
        "models": entries,
    }


def _forward_ok(model, size: int) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
        return True
    except Exception:  # any failure means "this size is not accepted"
        return False


if __name__ == "__main__":
    CATALOG_PATH.write_text(json.dumps(generate(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {CATALOG_PATH} ({len(load.__wrapped__())} models)")
