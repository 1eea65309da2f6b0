"""A job's exported artifacts (`artifacts/`, described by `artifacts/manifest.json`, which the trainer
writes last): listing them, and downloading them with every file's sha256 verified."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.jobs.record import JobStore
from trainer.job import layout
from trainer.job.documents import Manifest
from trainer.job.storage import file_sha256


@dataclass(frozen=True)
class Downloaded:
    name: str
    path: Path
    size: int
    sha256: str


def manifest_of(store: JobStore, job_id: str) -> Manifest:
    manifest = store.read(job_id, Manifest, layout.MANIFEST)
    if manifest is None:
        raise UserError(
            f"job {job_id} has no exported artifacts yet ({store.url(job_id, layout.MANIFEST)} is missing)",
            "artifacts are exported when training succeeds; `spotctl status JOB` shows where the job is",
        )
    return manifest


def download(store: JobStore, job_id: str, folder: Path) -> list[Downloaded]:
    """Fetch every file the manifest names into `folder`, each checked against its sha256. A file that
    does not match is not kept, and the error names it."""
    manifest = manifest_of(store, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name, entry in sorted(manifest.files.items()):
        where = entry.path or name  # artifacts/<export id>/<name>; older manifests: artifacts/<name>
        if (
            "/" in name
            or name in ("", ".", "..")
            or ".." in where.split("/")
            or where.startswith("/")
            or where.count("/") > 1
        ):
            raise UserError(
                f"artifacts/manifest.json names an unsafe file '{where}'",
                "the manifest was not written by spotctl's trainer",
            )
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        os.close(handle)
        try:
            store.download(job_id, f"{layout.ARTIFACTS}/{where}", temporary)
            digest = file_sha256(temporary)
            if digest != entry.sha256:
                raise UserError(
                    f"artifacts/{where}: sha256 {digest[:16]}... does not match the manifest's {entry.sha256[:16]}...; not kept",
                    "the file changed after the export; export again (python -m trainer export --job URL)",
                )
            os.replace(temporary, folder / name)
        except FileNotFoundError:
            raise UserError(
                f"artifacts/{where} is named in the manifest but missing from {store.url(job_id, layout.ARTIFACTS)}"
            ) from None
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        done.append(Downloaded(name, folder / name, (folder / name).stat().st_size, digest))
    return done


def speed(entry: dict, size: str) -> str:
    """int8's speed against fp32 at one batch size, in words: "5.0x faster", "1.4x slower", or
    that it was not measured reliably (the manifest's ratio is None; trainer.quantize)."""
    ratio = (entry.get("speedup") or {}).get(size)
    if not isinstance(ratio, int | float) or ratio <= 0:
        return "speed not measured reliably"
    if round(ratio, 1) == 1.0:
        return "as fast as fp32"
    return f"{ratio:.1f}x faster" if ratio > 1 else f"{1 / ratio:.1f}x slower"


def describe(name: str, entry: dict) -> str:
    """One line on how one format came out: its validation, or why it failed."""
    if entry.get("status") != "ok":
        return f"{name}: not exported ({entry.get('reason')})"
    if name == "int8" and "validation_set" in entry:
        agreed, size = entry["validation_set"], entry["size"]
        note = f"; why the speed is unknown: {entry['speedup_note']}" if entry.get("speedup_note") else ""
        return (
            f"int8: {size['ratio']:.1f}x smaller than fp32, {speed(entry, '8')} at batch 8, {speed(entry, '1')} at batch 1 "
            f"on {entry['cpu_latency_ms'].get('threads')} CPU threads; top-1 agreement {agreed['top1_agreement']:.1%}, SQNR {agreed['sqnr_db']} dB "
            f"on {agreed['images']} validation images{note}"
        )
    checked = entry.get("validation") or {}
    return f"{name}: matches the model on {checked.get('batch')} validation images (max abs diff {checked.get('max_abs_diff', 0):.2g}, top-1 agreement {checked.get('top1_agreement', 0):.0%})"


def summary(manifest: dict) -> str:
    """The formats in one line, for `spotctl status` (from the manifest as its document shows it)."""
    formats = manifest.get("formats", {})
    done = [
        name
        if name != "int8" or "size" not in entry
        else f"int8 ({entry['size']['ratio']:.1f}x smaller, {speed(entry, '8')}, top-1 {entry['validation_set']['top1_agreement']:.0%})"
        for name, entry in formats.items()
        if entry.get("status") == "ok"
    ]
    failed = [name for name, entry in formats.items() if entry.get("status") != "ok"]
    return ", ".join(done) + (f"; failed: {', '.join(failed)} (`spotctl artifacts JOB` says why)" if failed else "")
