"""Checkpoints: immutable step folders committed by a manifest, saved in the background.

Protocol (docs/architecture.md): `<prefix>/step-<N>/` holds the state file(s) and `MANIFEST.json`, written LAST
and create-only; a folder without a manifest is not a checkpoint. `<prefix>/LATEST.json` points at
the newest committed step and carries its manifest's sha256, so the latest checkpoint is found in two
reads; a missing or stale pointer falls back to listing. Loading verifies every file's sha256 and uses
`torch.load(weights_only=True)`; a corrupt checkpoint is skipped with a warning and the previous one
is used. Retention keeps the last `keep` committed steps and never the one in use; a deletion that
fails (a role without s3:DeleteObject, S3 trouble) is logged and counted, never fatal: the checkpoint
it followed is committed, and the next save tries the cleanup again.

The loop calls `save(step, ...)` at every step boundary and the checkpointer decides (every N steps,
every N seconds, or forced at epoch ends and spot notices). The caller's thread only copies the state
to host memory; serialising and uploading run on one background thread, one save at a time.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from trainer.job import layout, problems
from trainer.job.storage import Storage

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
POINTER = layout.POINTER
STATE_FILE = "state.pt"
KIND_TAG = "spotctl:kind"  # S3 object tag: checkpoint | best
FORMAT_VERSION = 1


class CheckpointMismatch(Exception):
    """A committed checkpoint that belongs to another model or spec: refused, never half-loaded."""


class CorruptCheckpoint(Exception):
    """A checkpoint whose files do not match its manifest: skipped, the previous one is used."""


@dataclass(frozen=True)
class Committed:
    """A committed checkpoint: its step and its (already read) manifest."""

    step: int
    manifest: dict[str, Any]
    manifest_sha256: str


def step_folder(step: int) -> str:
    return f"step-{step}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_host(value: Any) -> Any:
    """A copy of `value` whose tensors live in CPU memory, detached from training."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(item) for item in value)
    return value


class Checkpointer:
    """Saves and finds the checkpoints under one prefix (`checkpoints` or `best`) of the job's storage."""

    def __init__(
        self,
        storage: Storage,
        prefix: str = layout.CHECKPOINTS,
        keep: int = 3,
        every_steps: int | None = None,
        every_seconds: float | None = None,
        identity: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        kind: str = "checkpoint",
        depends_on: Checkpointer | None = None,
        writes: bool = True,
        world_size: int = 1,
    ):
        self.storage = storage
        # Under DDP only rank 0 writes; the other ranks still go through save() at the same steps,
        # since building the state takes collectives every rank must join (trainer.distributed).
        self.writes, self.world_size = writes, world_size
        self.prefix = prefix
        # S3 object tag `spotctl:kind` of what this writes: the bucket's optional lifecycle rule
        # (infra/spotctl.yaml, CheckpointExpirationDays) expires `checkpoint` objects, never `best`.
        self.tags = {KIND_TAG: kind}
        self.keep = keep
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        # What a checkpoint must match to be loaded into this run (model name, classes, spec hash...).
        self.identity = identity or {}
        self._clock = clock
        self._last_save_time = clock()
        self._last_saved_step: int | None = None
        self.protected: set[int] = set()  # the step this run resumed from: never deleted
        self.depends_on = depends_on  # whose upload in flight must commit before ours
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_committed: Committed | None = None
        self.last_commit_time: float | None = None  # wall clock, for the heartbeat's checkpoint age
        self.undeleted: set[int] = set()  # older steps retention could not delete (yet): the heartbeat reports how many
        self.load_timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------------ saving
    def due(self, step: int) -> bool:
        """Whether a save is due at this step boundary (by step count or elapsed time)."""
        if step == self._last_saved_step:
            return False
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_seconds) and self._clock() - self._last_save_time >= self.every_seconds

    def save(
        self, step: int, state_fn: Callable[[], dict], meta: dict[str, Any] | None = None, force: bool = False
    ) -> bool:
        """Save at this step if due (or forced). `state_fn` is only called when saving.

        Returns once the state is copied to host memory; the upload continues in the background.
        """
        if step == self._last_saved_step or not (force or self.due(step)):
            return False
        self.wait()  # one upload at a time; also surfaces the previous upload's error
        if not self.writes:
            state_fn()
            self._last_save_time, self._last_saved_step = self._clock(), step
            return True
        snapshot = to_host(state_fn())
        self._last_save_time = self._clock()
        self._last_saved_step = step
        before = self.depends_on._worker if self.depends_on is not None else None
        self._worker = threading.Thread(
            target=self._write_guarded,
            args=(step, snapshot, dict(meta or {}), before),
            name=f"checkpoint-{step}",
            daemon=True,
        )
        self._worker.start()
        return True

    def wait(self) -> None:
        """Block until the upload in flight (if any) is committed; re-raise its error."""
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _write_guarded(self, step: int, snapshot: dict, meta: dict, before: threading.Thread | None) -> None:
        if before is not None:
            before.join()
        try:
            self.write(step, snapshot, meta)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def write(self, step: int, state: dict, meta: dict[str, Any]) -> Committed:
        """Serialise, upload, then commit: state file, MANIFEST (create-only), pointer, retention."""
        folder = f"{self.prefix}/{step_folder(step)}"
        existing = self._read_manifest(step)
        if existing is not None:  # an earlier attempt already committed this very step
            log.info("checkpoint: step %d already committed; keeping it", step)
            return self._commit_pointer(existing)
        with tempfile.TemporaryDirectory(prefix="spotctl-ckpt-") as spool:
            local = os.path.join(spool, STATE_FILE)
            with open(local, "wb") as handle:
                hashing = _HashingWriter(handle)  # hashed as it is written: no second pass over the file
                torch.save(state, hashing)
            digest, size = hashing.sha256.hexdigest(), hashing.size
            self.storage.upload(local, f"{folder}/{STATE_FILE}", move=True, tags=self.tags)
        manifest = {
            "format": FORMAT_VERSION,
            "step": step,
            **meta,
            **self.identity,
            "files": {STATE_FILE: {"sha256": digest, "size": size}},
            "torch": torch.__version__,
            "world_size": self.world_size,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        try:
            self.storage.write_bytes(f"{folder}/{MANIFEST}", body, create_only=True, tags=self.tags)
        except FileExistsError:  # another writer committed this step between our check and now
            existing = self._read_manifest(step)
            if existing is None:
                raise
            return self._commit_pointer(existing)
        committed = self._commit_pointer(Committed(step, manifest, _sha256(body)))
        self._apply_retention()
        return committed

    def _commit_pointer(self, committed: Committed) -> Committed:
        pointer = {"step": committed.step, "manifest_sha256": committed.manifest_sha256}
        current = self._read_pointer()
        if current is None or current["step"] <= committed.step:  # never move the pointer backwards
            self.storage.write_bytes(f"{self.prefix}/{POINTER}", json.dumps(pointer).encode())
        self.last_committed = committed
        self.last_commit_time = time.time()
        log.info("checkpoint: committed %s/step-%d", self.prefix, committed.step)
        return committed

    def _apply_retention(self) -> None:
        try:
            steps = self.committed_steps()
        except Exception as exc:  # cleaning up can wait; the checkpoint just committed stands
            log.warning(
                "checkpoint: retention could not list %s (%s: %s); training goes on",
                self.prefix,
                type(exc).__name__,
                exc,
            )
            return
        # What is still committed and should go: a step uncommitted meanwhile is debris, not a checkpoint.
        self.undeleted = set()
        for step in [s for s in steps[: -self.keep] if s not in self.protected]:
            try:
                self._remove(step)
            except Exception as exc:  # one older checkpoint left behind must not fail a healthy run
                self.undeleted.add(step)
                log.warning(
                    "checkpoint: retention could not remove %s/step-%d (%s: %s); training goes on, the next save tries again",
                    self.prefix,
                    step,
                    type(exc).__name__,
                    exc,
                )
                continue
            log.info("checkpoint: retention removed %s/step-%d", self.prefix, step)

    def _remove(self, step: int) -> None:
        # Uncommit first (manifest), then remove the files: a crash in between leaves debris, never a
        # manifest whose files are gone.
        folder = f"{self.prefix}/{step_folder(step)}"
        self.storage.delete(f"{folder}/{MANIFEST}")
        self.storage.delete(folder, recursive=True)

    def resume_from(self, committed: Committed) -> None:
        """This run continues from `committed`: retention never deletes it, and it is the last commit
        (its age counted from when it was written)."""
        self.protected.add(committed.step)
        self.last_committed = committed
        created = committed.manifest.get("created")
        self.last_commit_time = datetime.fromisoformat(created).timestamp() if created else time.time()

    # ----------------------------------------------------------------------------------- finding
    def committed_steps(self) -> list[int]:
        """Steps whose folder holds a manifest, oldest first (a listing: used as the fallback)."""
        steps = []
        for name in self.storage.list(self.prefix):
            if (
                name.startswith("step-")
                and name[5:].isdigit()
                and self.storage.exists(f"{self.prefix}/{name}/{MANIFEST}")
            ):
                steps.append(int(name[5:]))
        return sorted(steps)

    def latest(self) -> Committed | None:
        """The newest committed checkpoint: through the pointer (2 reads), else by listing."""
        pointer = self._read_pointer()
        if pointer is not None:
            found = self._read_manifest(pointer["step"])
            if found is not None and found.manifest_sha256 == pointer.get("manifest_sha256"):
                return found
            log.warning(
                "checkpoint: %s/%s is stale or points at a missing manifest; listing instead", self.prefix, POINTER
            )
        for step in reversed(self.committed_steps()):  # a manifest that cannot be read is no commit
            found = self._read_manifest(step)
            if found is not None:
                return found
        return None

    def load_latest(
        self, map_location: str | torch.device = "cpu", repair: bool = True
    ) -> tuple[Committed, dict] | None:
        """Load the newest checkpoint that verifies; a corrupt one is skipped with a warning (and,
        with `repair`, uncommitted; a reader that must change nothing passes repair=False)."""
        newest = self.latest()
        if newest is None:
            return None

        def older():  # listed only if the newest one fails to verify
            for step in reversed(self.committed_steps()):
                if step < newest.step:
                    yield self._read_manifest(step)

        for committed in itertools.chain([newest], older()):
            if committed is None:
                continue
            self.check_identity(committed)
            try:
                return committed, self.load(committed, map_location)
            except CorruptCheckpoint as exc:
                log.warning(
                    "checkpoint: step %d is corrupt (%s); %strying the previous one",
                    committed.step,
                    exc,
                    "uncommitting it and " if repair else "",
                )
                if repair:  # without its manifest it is no checkpoint: reaching this step again writes it afresh
                    self._remove(committed.step)
        return None

    def check_identity(self, committed: Committed) -> None:
        """Refuse a checkpoint written for another model, class set or spec, naming what differs."""
        differences = _differences(committed.manifest, self.identity)
        if differences:
            shown = "; ".join(
                f"{key}: checkpoint has {found!r}, this run has {expected!r}"
                for key, found, expected in differences[:3]
            )
            more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
            raise CheckpointMismatch(
                f"checkpoint step {committed.step} under {self.storage.url_of(self.prefix)} was written for another run: {shown}{more}; "
                "use a new job name, or delete the old checkpoints"
            )

    def load(self, committed: Committed, map_location: str | torch.device = "cpu") -> dict:
        """Download, verify size and sha256 of every file, then load with weights_only=True.

        The seconds each part took are left in `load_timings` (reported in the heartbeat)."""
        folder = f"{self.prefix}/{step_folder(committed.step)}"
        entry = committed.manifest["files"][STATE_FILE]
        started = time.perf_counter()
        try:
            data = self.storage.read_bytes(f"{folder}/{STATE_FILE}")
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{STATE_FILE} is missing") from None
        downloaded = time.perf_counter()
        if len(data) != entry["size"] or _sha256(data) != entry["sha256"]:
            raise CorruptCheckpoint(
                f"{STATE_FILE} does not match its manifest (size {len(data)}, expected {entry['size']})"
            )
        verified = time.perf_counter()
        # Only tensors and plain containers: a checkpoint is untrusted input.
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        self.load_timings = {
            "download_s": downloaded - started,
            "verify_s": verified - downloaded,
            "load_s": time.perf_counter() - verified,
            "bytes": len(data),
        }
        return state

    def _read_pointer(self) -> dict | None:
        try:
            pointer = problems.json_object(self.storage.read_bytes(f"{self.prefix}/{POINTER}"))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except ValueError:
            return None  # a torn or garbled pointer is only a hint: fall back to listing
        step = pointer.get("step")
        return pointer if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None

    def _read_manifest(self, step: int) -> Committed | None:
        """The commit of `step`; None when it has no manifest, or one that is not a checkpoint's (logged:
        that step is ignored, as if uncommitted, and an older one is used)."""
        path = f"{self.prefix}/{step_folder(step)}/{MANIFEST}"
        try:
            body = self.storage.read_bytes(path)
            manifest = problems.json_object(body)
            _check_manifest(manifest)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except ValueError as exc:
            log.warning("checkpoint: %s: %s; ignoring step %d", self.storage.url_of(path), exc, step)
            return None
        return Committed(step, manifest, _sha256(body))


def _check_manifest(manifest: dict) -> None:
    """ValueError unless `manifest` has what loading reads: the state file's size and sha256, a time."""
    entry = (manifest.get("files") or {}).get(STATE_FILE) if isinstance(manifest.get("files"), dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"files.{STATE_FILE}: missing")
    size, digest = entry.get("size"), entry.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"files.{STATE_FILE}.size: {problems.shown(size)} is not a size")
    if not isinstance(digest, str):
        raise ValueError(f"files.{STATE_FILE}.sha256: {problems.shown(digest)} is not a string")
    created = manifest.get("created")
    if created is not None:
        try:
            datetime.fromisoformat(created)
        except (TypeError, ValueError):
            raise ValueError(f"created: {problems.shown(created)} is not a date-time") from None


def _differences(found: dict, expected: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, found, expected) for every identity field that differs, nested dicts walked."""
    result = []
    for key, want in expected.items():
        have = found.get(key) if isinstance(found, dict) else None
        if isinstance(want, dict) and isinstance(have, dict):
            result += _differences(have, want, f"{prefix}{key}.")
        elif have != want and not (
            isinstance(want, (list, tuple)) and isinstance(have, (list, tuple)) and list(have) == list(want)
        ):
            result.append((f"{prefix}{key}", have, want))
    return result


class _HashingWriter:
    """A binary file wrapper that computes the sha256 and size of what passes through it."""

    def __init__(self, handle):
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()
