"""`spotctl tensorboard`'s core: copy the TensorBoard segments of jobs into a local folder, one
subfolder per job, and the command that starts TensorBoard on them.

A segment the trainer uploaded is closed and never changes (trainer.tensorboard), so a sync fetches
only the names the folder does not hold yet; each lands through a temporary file renamed into place,
so TensorBoard, reading the folder meanwhile, never sees half a file. TensorBoard reads a folder's
event files in name order, which is the trainer's order (attempt, then segment): a resumed job is one
run, one value per step.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.jobs.record import JobStore
from trainer.job import layout

INSTALL_HINT = "pip install 'spotctl[tensorboard]'"


@dataclass(frozen=True)
class Synced:
    job_id: str
    folder: Path
    new: int  # segments fetched by this sync
    new_bytes: int
    segments: int  # segments the folder holds now


def folder_of(root: Path, job_id: str) -> Path:
    """Where a job's segments are kept on this machine: one subfolder of `root` per job."""
    return root / job_id


def sync(store: JobStore, job_id: str, folder: Path) -> Synced:
    """Fetch the job's segments `folder` does not hold yet."""
    names = [
        name
        for name in store.storage.list(layout.in_job(job_id, layout.TENSORBOARD))
        if layout.is_tensorboard_segment(name)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    new = new_bytes = 0
    for name in names:
        target = folder / name
        if target.exists():
            continue
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")  # no "tfevents" at the start: not read
        os.close(handle)
        try:
            store.download(job_id, f"{layout.TENSORBOARD}/{name}", temporary)
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        new += 1
        new_bytes += target.stat().st_size
    segments = sum(1 for p in folder.iterdir() if layout.is_tensorboard_segment(p.name))
    return Synced(job_id, folder, new, new_bytes, segments)


def require_tensorboard() -> None:
    """TensorBoard comes with the `tensorboard` extra; without it, say how to get it."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("TensorBoard is not installed", f"install it with {INSTALL_HINT}, or use --sync-only")


def viewer_command(folders: dict[str, Path], port: int, host: str = "localhost") -> list[str]:
    """The TensorBoard command line for these jobs' folders: one run per job, named by its id."""
    command = [sys.executable, "-m", "tensorboard.main", "--port", str(port), "--host", host]
    if len(folders) == 1:
        return [*command, "--logdir", str(next(iter(folders.values())))]
    # logdir_spec: name:path pairs; job ids hold neither ':' nor ','.
    return [*command, "--logdir_spec", ",".join(f"{job_id}:{path}" for job_id, path in folders.items())]
