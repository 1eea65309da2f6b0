"""A job's exported artifacts (`artifacts/`, described by `artifacts/manifest.json`, which the trainer
writes last): listing them, and downloading them with every file's sha256 verified."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.record import JobStore
from trainer.storage import file_sha256

MANIFEST = "artifacts/manifest.json"


@dataclass(frozen=True)
class Downloaded:
    name: str
    path: Path
    size: int
    sha256: str


def manifest_of(store: JobStore, job_id: str) -> dict:
    manifest = store.read_json(job_id, MANIFEST)
    if manifest is None:
        raise UserError(f"job {job_id} has no exported artifacts yet ({store.url(job_id, MANIFEST)} is missing)",
                        "artifacts are exported when training succeeds; `spotctl status JOB` shows where the job is")
    return manifest


def download(store: JobStore, job_id: str, folder: Path) -> list[Downloaded]:
    """Fetch every file the manifest names into `folder`, each checked against its sha256. A file that
    does not match is not kept, and the error names it."""
    manifest = manifest_of(store, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name, entry in sorted(manifest.get("files", {}).items()):
        if "/" in name or name in ("", ".", ".."):
            raise UserError(f"artifacts/manifest.json names an unsafe file '{name}'", "the manifest was not written by spotctl's trainer")
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        os.close(handle)
        try:
            store.storage.fs.get_file(store.storage.path(f"jobs/{job_id}/artifacts/{name}"), temporary)
            digest = file_sha256(temporary)
            if digest != entry["sha256"]:
                raise UserError(f"artifacts/{name}: sha256 {digest[:16]}... does not match the manifest's {entry['sha256'][:16]}...; not kept",
                                "the file changed after the export; export again (or re-run the job's last attempt)")
            os.replace(temporary, folder / name)
        except FileNotFoundError:
            raise UserError(f"artifacts/{name} is named in the manifest but missing from {store.url(job_id, 'artifacts')}") from None
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        done.append(Downloaded(name, folder / name, (folder / name).stat().st_size, digest))
    return done
