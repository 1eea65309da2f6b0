"""Artifacts: the best model in the formats `train.export.formats` lists, under `artifacts/`, with
`artifacts/manifest.json` written last (artifacts count only once the manifest names them, as a
checkpoint counts only once its manifest is written).

Formats built here, each loaded back with its own runtime and checked against the model on a real
validation batch (max abs difference and top-1 agreement go into the manifest):

- `state_dict`: the weights as safetensors plus `model.json` (architecture, class names, input size,
  normalisation: enough to rebuild the model with torchvision);
- `torchscript`: traced (deprecated in recent torch, which warns; still made because many serving
  stacks load it);
- `exported`: a `torch.export` program (`.pt2`) with a dynamic batch dimension.

A format that fails, or that this version does not build yet, is recorded in the manifest with its
reason; it never loses the others, and never fails the run.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision
from torch import nn

from trainer.config import TrainSpec
from trainer.storage import Storage, file_sha256

log = logging.getLogger(__name__)
MANIFEST = "artifacts/manifest.json"


def export_artifacts(storage: Storage, train: TrainSpec, model: nn.Module, best_state: dict | None, classes: list[str], normalization, job_id: str,
                     step: int, metrics: dict | None, sample: torch.Tensor | None = None) -> dict:
    """Export, upload, and write the manifest; returns it. `sample`: a validation batch (CPU) that every
    exported file must reproduce."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    if best_state is not None:
        cpu_model.load_state_dict(best_state["model"])  # the best epoch, not merely the last
    info = {"architecture": train.model.name, "num_classes": len(classes), "classes": classes, "input_size": train.data.image_size,
            "mean": list(normalization.mean), "std": list(normalization.std), "resize_ratio": normalization.resize_ratio}
    manifest = {"job_id": job_id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "checkpoint_step": step,
                "source": f"best/ (epoch {best_state['epoch']})" if best_state else "the final model", "metrics": metrics or {},
                "torch": torch.__version__, "torchvision": torchvision.__version__, "formats": {}, "files": {}}
    input_shape = [None, 3, train.data.image_size, train.data.image_size]  # None: any batch size
    if sample is None or len(sample) == 0:
        sample = torch.randn(2, *input_shape[1:])
    with torch.no_grad():
        expected = cpu_model(sample)
    with tempfile.TemporaryDirectory(prefix="spotctl-export-") as folder:
        for name in train.export.formats:
            builder = BUILDERS.get(name)
            if builder is None:
                manifest["formats"][name] = {"status": "failed", "reason": f"this spotctl version does not export {name} yet"}
                log.warning("export: %s is not exported by this version", name)
                continue
            try:
                written, reloaded = builder(cpu_model, info, Path(folder), sample)
                validation = _agreement(expected, reloaded(sample))
            except Exception as exc:  # one format's failure must not lose the others
                log.warning("export: %s failed: %s: %s", name, type(exc).__name__, exc)
                manifest["formats"][name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                continue
            for path in written:
                storage.upload(str(path), f"artifacts/{path.name}")
                manifest["files"][path.name] = {"format": name, "sha256": file_sha256(path), "size": path.stat().st_size, "input_shape": input_shape}
            manifest["formats"][name] = {"status": "ok", "files": [p.name for p in written], "validation": validation}
            log.info("export: %s -> %s", name, ", ".join(f"artifacts/{p.name}" for p in written))
    storage.write_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def _state_dict(model: nn.Module, info: dict, folder: Path, sample: torch.Tensor):
    from safetensors.torch import load_file, save_file

    weights, description = folder / "model.safetensors", folder / "model.json"
    # safetensors wants contiguous tensors that share no memory: clone each one.
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(weights), metadata={"architecture": info["architecture"]})
    description.write_text(json.dumps(info, indent=1))
    rebuilt = copy.deepcopy(model)
    rebuilt.load_state_dict(load_file(str(weights)))
    return [weights, description], rebuilt.eval()


def _torchscript(model: nn.Module, info: dict, folder: Path, sample: torch.Tensor):
    path = folder / "model.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # said once in the module docstring
        torch.jit.trace(model, sample[:1]).save(str(path))
        loaded = torch.jit.load(str(path))
    return [path], loaded


def _exported(model: nn.Module, info: dict, folder: Path, sample: torch.Tensor):
    path = folder / "model.pt2"
    program = torch.export.export(model, (sample,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(path))
    return [path], torch.export.load(str(path)).module()


def _agreement(expected: torch.Tensor, got: torch.Tensor) -> dict:
    """How closely a reloaded artifact reproduces the model on the validation batch."""
    return {"batch": len(expected), "max_abs_diff": float((expected - got).abs().max()), "top1_agreement": float((expected.argmax(1) == got.argmax(1)).float().mean())}


BUILDERS = {"state_dict": _state_dict, "torchscript": _torchscript, "exported": _exported}
