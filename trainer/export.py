"""Artifacts: the best model in the formats `train.export.formats` lists, under `artifacts/`, with
`artifacts/manifest.json` written last (artifacts count only once the manifest names them, as a
checkpoint counts only once its manifest is written).

Every format is loaded back with its own runtime and run on a real validation batch; the max abs
difference and top-1 agreement with the model go into the manifest with the tolerance they were held
to. A file that misses its tolerance is not uploaded: a deployable artifact is a validated one.

- `state_dict`: the weights as safetensors plus `model.json` (architecture, class names, input size,
  normalisation: enough to rebuild the model with torchvision);
- `torchscript`: traced (deprecated in recent torch, which warns; still made because many serving
  stacks load it);
- `exported`: a `torch.export` program (`.pt2`) with a dynamic batch dimension;
- `onnx`: one self-contained file (weights embedded) with a dynamic batch dimension, passing
  `onnx.checker`, run back through onnxruntime;
- `int8`: statically quantized for CPU (trainer.quantize), also measured on up to
  `agreement_images` validation images (SQNR, top-1), for size and for CPU latency against fp32
  (interleaved pairs; the speed-up is their median ratio, or None with a note when the spread
  cannot tell: trainer.quantize.speedup_estimate).

A format that fails is recorded with its reason; it never loses the others, and never fails the run.

Each export writes its files under a folder of its own, `artifacts/<export id>/`, and the manifest
names each file's path there: files the current manifest names are never overwritten, so a download
never meets a file newer than its manifest. Folders no manifest names any more are removed after it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import secrets
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision
from torch import nn

from trainer import quantize
from trainer.job import layout
from trainer.job.documents import Manifest
from trainer.job.spec import TrainSpec
from trainer.job.storage import Storage, file_sha256

log = logging.getLogger(__name__)

# Float formats must reproduce the model's logits within this fraction of their largest magnitude
# (they differ only by kernel choice and operation order); int8 must pick the same class this often.
FLOAT_RTOL = 1e-3
INT8_MIN_TOP1 = 0.9


@dataclass
class ExportData:
    """The images exports are built and judged on."""

    sample: torch.Tensor
    """A validation batch (CPU, float): every artifact must reproduce the model's logits on it."""
    calibration: Callable[[], Iterable[torch.Tensor]] = lambda: ()
    """Training images without augmentation, for int8 calibration."""
    validation: Callable[[], Iterable[torch.Tensor]] = lambda: ()
    """Validation images for int8's agreement with the fp32 model."""


def export_data(data, train: TrainSpec) -> ExportData | None:
    """What the exports are judged on, from a trainer.data.TrainingData: a validation batch of 8 spread
    over the classes; up to `agreement_images` validation images and `calibration_images` training
    images. None when no validation image can be read."""
    spec = train.export
    first = next(data.validation_spread(8), None)
    if first is None:
        return None
    return ExportData(
        sample=first.float(),
        calibration=lambda: data.calibration_batches(spec.calibration_images, train.batch_size),
        validation=lambda: (images.float() for images in data.validation_spread(spec.agreement_images)),
    )


@dataclass
class Built:
    files: list[Path]
    run: Callable[[torch.Tensor], torch.Tensor]  # the artifact loaded back with its own runtime
    figures: dict | None = None  # format-specific measurements for the manifest


def export_artifacts(
    storage: Storage,
    train: TrainSpec,
    model: nn.Module,
    best_state: dict | None,
    classes: list[str],
    normalization,
    job_id: str,
    step: int,
    metrics: dict | None,
    data: ExportData | None,
    formats: list[str] | None = None,
) -> dict:
    """Export `formats` (default: the spec's), upload, and write the manifest; returns it.

    Formats not asked for this time are kept from an earlier manifest of the same checkpoint step
    and torch version (`python -m trainer export --formats int8` adds int8 without redoing the rest)."""
    formats = list(train.export.formats if formats is None else formats)
    # A CPU copy in the default memory layout (a GPU run trains channels_last): what a user loads.
    cpu_model = copy.deepcopy(model).cpu().float().to(memory_format=torch.contiguous_format).eval()
    if best_state is not None:
        cpu_model.load_state_dict(best_state["model"])  # the best epoch, not merely the last
    info = {
        "architecture": train.model.name,
        "num_classes": len(classes),
        "classes": classes,
        "input_size": train.data.image_size,
        "mean": list(normalization.mean),
        "std": list(normalization.std),
        "resize_ratio": normalization.resize_ratio,
    }
    created = datetime.now(timezone.utc)
    export_id = f"{created:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    manifest = {
        "job_id": job_id,
        "created_at": created.isoformat(timespec="seconds"),
        "export_id": export_id,
        "checkpoint_step": step,
        "source": f"best/ (epoch {best_state['epoch']})" if best_state else "the final model",
        "metrics": metrics or {},
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "formats": {},
        "files": {},
    }
    _keep_earlier(storage, manifest, formats)
    input_shape = [None, 3, train.data.image_size, train.data.image_size]  # None: any batch size
    problem = None
    if data is None:
        problem = "no validation image could be read to check the exports against"
    else:
        if len(data.sample) < 2:  # torch.export specialises a batch of 1 to a constant
            data.sample = data.sample.repeat(2, 1, 1, 1)
        with torch.no_grad():
            expected = cpu_model(data.sample)
        if not torch.isfinite(expected).all():
            problem = "the model's outputs on the validation batch are not finite (NaN or inf): nothing it exports could be checked"
    with tempfile.TemporaryDirectory(prefix="spotctl-export-") as folder:
        for name in formats:
            if problem:
                manifest["formats"][name] = {"status": "failed", "reason": problem}
                continue
            try:
                built = BUILDERS[name](cpu_model, info, Path(folder), data)
                with torch.no_grad():
                    validation = _agreement(expected, built.run(data.sample))
                entry = {
                    "status": "ok",
                    "created_at": manifest["created_at"],
                    "files": [p.name for p in built.files],
                    "validation": validation,
                    **(built.figures or {}),
                }
                entry["tolerance"], miss = _judge(name, expected, entry)
                if miss:
                    log.warning("export: %s not uploaded: %s", name, miss)
                    manifest["formats"][name] = {**entry, "status": "failed", "reason": miss, "files": []}
                    continue
                files = {}
                for path in built.files:
                    storage.upload(str(path), layout.artifact(export_id, path.name))
                    files[path.name] = {
                        "format": name,
                        "path": f"{export_id}/{path.name}",
                        "sha256": file_sha256(path),
                        "size": path.stat().st_size,
                        "input_shape": input_shape,
                    }
            except (
                Exception
            ) as exc:  # one format's failure (building, checking or uploading it) must not lose the others
                log.warning("export: %s failed: %s: %s", name, type(exc).__name__, exc)
                manifest["formats"][name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                continue
            manifest["files"].update(files)
            manifest["formats"][name] = entry
            log.info("export: %s -> %s", name, ", ".join(layout.artifact(export_id, p.name) for p in built.files))
    Manifest.of(**manifest)  # what the orchestrator reads it as (a field it does not know is a bug here)
    storage.write_bytes(layout.MANIFEST, json.dumps(_finite(manifest), indent=1, allow_nan=False).encode())
    _remove_unlisted(storage, manifest)
    return manifest


def _finite(value):
    """JSON has no NaN or Infinity: such a figure is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return [_finite(v) for v in value] if isinstance(value, list) else value


def _remove_unlisted(storage: Storage, manifest: dict) -> None:
    """Delete what the manifest no longer names: earlier export folders, files of a format redone
    since, and files of the flat layout before export folders."""
    listed = {entry.get("path", name) for name, entry in manifest["files"].items()}
    folders = {path.split("/", 1)[0] for path in listed if "/" in path}
    unlisted = []
    for name in storage.list(layout.ARTIFACTS):
        if name in folders:
            unlisted += [
                f"{name}/{file}"
                for file in storage.list(f"{layout.ARTIFACTS}/{name}")
                if f"{name}/{file}" not in listed
            ]
        elif name not in listed and f"{layout.ARTIFACTS}/{name}" != layout.MANIFEST:
            unlisted.append(name)
    for path in unlisted:
        try:
            storage.delete(f"{layout.ARTIFACTS}/{path}", recursive=True)
        except Exception as exc:  # leftovers cost storage, not correctness: the manifest does not name them
            log.warning("export: could not remove artifacts/%s (%s)", path, exc)


def _keep_earlier(storage: Storage, manifest: dict, formats: list[str]) -> None:
    try:
        earlier = json.loads(storage.read_bytes(layout.MANIFEST))
    except (FileNotFoundError, ValueError):
        return
    same = ("checkpoint_step", "torch", "torchvision")
    if any(earlier.get(key) != manifest[key] for key in same):
        return  # another model, or built by another torch: not this manifest's to vouch for
    for name, entry in earlier.get("formats", {}).items():
        if name not in formats:
            manifest["formats"][name] = entry
            manifest["files"].update(
                {file: meta for file, meta in earlier.get("files", {}).items() if meta.get("format") == name}
            )


def _agreement(expected: torch.Tensor, got: torch.Tensor) -> dict:
    """How closely a reloaded artifact reproduces the model on the validation batch."""
    return {
        "batch": len(expected),
        "max_abs_diff": float((expected - got).abs().max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).float().mean()),
    }


def _judge(name: str, expected: torch.Tensor, entry: dict) -> tuple[dict, str | None]:
    """(the tolerance this format is held to, what misses it or None)."""
    if not math.isfinite(entry["validation"]["max_abs_diff"]):
        return {}, f"{name} gives outputs that are not finite (NaN or inf) where the model's are"
    if name == "int8":
        found = entry["validation_set"]["top1_agreement"]
        problem = f"int8 picks the fp32 model's class for only {found:.1%} of {entry['validation_set']['images']} validation images (at least {INT8_MIN_TOP1:.0%} needed)"
        return {"min_top1_agreement": INT8_MIN_TOP1}, problem if found < INT8_MIN_TOP1 else None
    limit = FLOAT_RTOL * max(1.0, float(expected.abs().max()))
    found = entry["validation"]["max_abs_diff"]
    problem = f"{name} reproduces the model's logits only within {found:.3g} (tolerance {limit:.3g})"
    return {"max_abs_diff": limit}, problem if not found <= limit else None


# ------------------------------------------------------------------------------------------ formats
def _state_dict(model: nn.Module, info: dict, folder: Path, data: ExportData) -> Built:
    from safetensors.torch import load_file, save_file

    weights, description = folder / "model.safetensors", folder / "model.json"
    # safetensors wants contiguous tensors that share no memory: clone each one.
    save_file(
        {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
        str(weights),
        metadata={"architecture": info["architecture"]},
    )
    description.write_text(json.dumps(info, indent=1))
    rebuilt = copy.deepcopy(model)
    rebuilt.load_state_dict(load_file(str(weights)))
    return Built([weights, description], rebuilt.eval())


def _torchscript(model: nn.Module, info: dict, folder: Path, data: ExportData) -> Built:
    path = folder / "model.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # said once in the module docstring
        torch.jit.trace(model, data.sample[:1]).save(str(path))
        loaded = torch.jit.load(str(path))
    return Built([path], loaded)


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1)},)


def _exported(model: nn.Module, info: dict, folder: Path, data: ExportData) -> Built:
    path = folder / "model.pt2"
    program = torch.export.export(model, (data.sample,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, str(path))
    return Built([path], torch.export.load(str(path)).module())


def _onnx(model: nn.Module, info: dict, folder: Path, data: ExportData) -> Built:
    import onnx
    import onnxruntime

    path = folder / "model.onnx"
    # The dynamo exporter (torch >= 2.5); external_data=False embeds the weights instead of writing
    # a model.onnx.data file beside it, which a deployment would have to carry along.
    torch.onnx.export(
        model,
        (data.sample,),
        str(path),
        dynamo=True,
        external_data=False,
        verbose=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=_dynamic_batch(),
    )
    sidecars = [p.name for p in folder.glob("model.onnx.*")]
    if sidecars:
        raise RuntimeError(
            f"the exporter wrote {', '.join(sidecars)} beside model.onnx instead of embedding the weights"
        )
    onnx.checker.check_model(str(path), full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return Built([path], lambda images: torch.from_numpy(session.run(None, {"input": images.numpy()})[0]))


def _int8(model: nn.Module, info: dict, folder: Path, data: ExportData) -> Built:
    path = folder / "model.int8.pt"
    quantized, calibrated = quantize.quantize(model, data.calibration(), data.sample)
    quantized.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # TorchScript's deprecation, as above
        loaded = torch.jit.load(str(path))
    timed = quantize.compare_latency(model, loaded, data.sample)
    fp32_bytes = quantize.size_bytes(model)
    figures = {
        "method": quantize.METHOD,
        "engine": quantize.engine(),
        "calibration_images": calibrated,
        "kept_fp32": [head] if (head := quantize.classifier_head(model)) else [],
        "validation_set": quantize.agreement(model, loaded, data.validation()),
        "size": {
            "fp32_bytes": fp32_bytes,
            "int8_bytes": path.stat().st_size,
            "ratio": round(fp32_bytes / path.stat().st_size, 2),
        },
        "cpu_latency_ms": {**timed["cpu_latency_ms"], "threads": torch.get_num_threads()},
        **{key: timed[key] for key in ("speedup", "speedup_spread", "speedup_note")},
    }
    return Built([path], loaded, figures)


BUILDERS = {"state_dict": _state_dict, "torchscript": _torchscript, "exported": _exported, "onnx": _onnx, "int8": _int8}
