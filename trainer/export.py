"""Artifacts: the best model in the formats `train.export.formats` lists, under `artifacts/`, with
`artifacts/manifest.json` written last (artifacts count only once the manifest names them, as a
checkpoint counts only once its manifest is written).

Formats built here: `state_dict` -- the weights as safetensors plus `model.json` (architecture, class
names, input size, normalisation: enough to rebuild the model with torchvision). A format that fails,
or that this version does not build yet, is recorded in the manifest with its reason; it never loses
the others, and never fails the run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision
from torch import nn

from trainer.config import TrainSpec
from trainer.storage import Storage

log = logging.getLogger(__name__)
MANIFEST = "artifacts/manifest.json"


def export_artifacts(storage: Storage, train: TrainSpec, model: nn.Module, best_state: dict | None, classes: list[str], normalization, job_id: str,
                     step: int, metrics: dict | None) -> dict:
    """Export, upload, and write the manifest; returns it."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    if best_state is not None:
        cpu_model.load_state_dict(best_state["model"])  # the best epoch, not merely the last
    info = {"architecture": train.model.name, "num_classes": len(classes), "classes": classes, "input_size": train.data.image_size,
            "mean": list(normalization.mean), "std": list(normalization.std), "resize_ratio": normalization.resize_ratio}
    manifest = {"job_id": job_id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "checkpoint_step": step,
                "source": f"best/ (epoch {best_state['epoch']})" if best_state else "the final model", "metrics": metrics or {},
                "torch": torch.__version__, "torchvision": torchvision.__version__, "formats": {}, "files": {}}
    input_shape = [None, 3, train.data.image_size, train.data.image_size]  # None: any batch size
    with tempfile.TemporaryDirectory(prefix="spotctl-export-") as folder:
        for name in train.export.formats:
            builder = BUILDERS.get(name)
            if builder is None:
                manifest["formats"][name] = {"status": "failed", "reason": f"this spotctl version does not export {name} yet"}
                log.warning("export: %s is not exported by this version", name)
                continue
            try:
                written = builder(cpu_model, info, Path(folder))
            except Exception as exc:  # one format's failure must not lose the others
                log.warning("export: %s failed: %s: %s", name, type(exc).__name__, exc)
                manifest["formats"][name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                continue
            for path in written:
                storage.upload(str(path), f"artifacts/{path.name}")
                manifest["files"][path.name] = {"format": name, "sha256": _sha256(path), "size": path.stat().st_size, "input_shape": input_shape}
            manifest["formats"][name] = {"status": "ok", "files": [p.name for p in written]}
            log.info("export: %s -> %s", name, ", ".join(f"artifacts/{p.name}" for p in written))
    storage.write_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def _state_dict(model: nn.Module, info: dict, folder: Path) -> list[Path]:
    from safetensors.torch import save_file

    weights, description = folder / "model.safetensors", folder / "model.json"
    # safetensors wants contiguous tensors that share no memory: clone each one.
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(weights), metadata={"architecture": info["architecture"]})
    description.write_text(json.dumps(info, indent=1))
    return [weights, description]


BUILDERS: dict[str, Callable[[nn.Module, dict, Path], list[Path]]] = {"state_dict": _state_dict}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
