"""`python -m trainer export --job URL [--formats ...]`: export a job's best checkpoint again (or in
other formats) without training: on the instance, or here against the same storage.

Read-only but for artifacts/: it loads the model from `best/` (else the latest checkpoint) without
repairing anything it finds corrupt, sends no heartbeat, and downloads the data only to calibrate
and check the exports. Formats not named are kept from the earlier manifest when it describes the
same checkpoint.
"""

from __future__ import annotations

import logging
import sys

from trainer.fetch import default_cache_dir
from trainer.job import layout
from trainer.job.spec import JobSpec
from trainer.job.spec_file import EXIT_BAD_SPEC, load_or_report
from trainer.job.storage import Storage
from trainer.run import EXIT_FAILED, EXIT_SUCCEEDED, USER_ERRORS, job_prefix, setup_logging

log = logging.getLogger("trainer")


def export_job(
    job_url: str, job_id: str | None = None, formats: list[str] | None = None, spec: JobSpec | None = None
) -> int:
    """0 when every format exported and validated, 1 otherwise (each failure says why), 2 bad job file
    (`spec`: the file, already loaded by the entry point)."""
    spec = spec or load_or_report(job_url)
    if spec is None:
        return EXIT_BAD_SPEC
    job_id, prefix = job_prefix(spec, job_url, job_id)
    _, console = setup_logging(None)
    storage = Storage(prefix)
    if not storage.list(layout.CHECKPOINTS) and not storage.list(layout.BEST):
        print(
            f"error: job {job_id} has no checkpoint under {prefix} to export from; train it first (python -m trainer run --job {job_url})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        manifest = _export(spec, storage, job_id, formats, console)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if manifest is None:
        print(
            f"error: no checkpoint of job {job_id} under {prefix} could be loaded (see the warnings above)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    asked = formats or spec.train.export.formats
    for name in asked:
        entry = manifest["formats"][name]
        print(
            f"{name}: {'ok, ' + ', '.join(entry['files']) if entry['status'] == 'ok' else 'failed: ' + entry['reason']}"
        )
    print(
        f"manifest: {storage.url_of(layout.MANIFEST)} (checkpoint step {manifest['checkpoint_step']}, {manifest['source']})"
    )
    return EXIT_SUCCEEDED if all(manifest["formats"][name]["status"] == "ok" for name in asked) else EXIT_FAILED


EXPORT_BATCH = 32  # images per batch of an export's data when the job's batch was `auto`


def _export(spec, storage: Storage, job_id: str, formats: list[str] | None, console) -> dict | None:
    from trainer import data as data_mod
    from trainer.checkpoint import Checkpointer
    from trainer.display import ConsoleProgress
    from trainer.export import export_artifacts, export_data
    from trainer.fetch import fetch
    from trainer.loop import checkpoint_identity
    from trainer.model import build_model

    train, display = spec.train, ConsoleProgress(console, live=False)
    cache = default_cache_dir()
    train_root = fetch(train.data.train, "train.data.train", cache, display.downloading)
    val_root = fetch(train.data.val, "train.data.val", cache, display.downloading) if train.data.val else None
    identity_train = train
    if not isinstance(train.batch_size, int):  # auto: the batch only sizes the export's loaders here
        train = train.model_copy(update={"batch_size": EXPORT_BATCH})
    data = data_mod.build(train.data, train.model, train.seed, train.batch_size, train_root, val_root)
    identity = checkpoint_identity(identity_train, data.classes)
    best = Checkpointer(storage, layout.BEST, keep=1, identity=identity).load_latest(repair=False)
    loaded = best or Checkpointer(storage, layout.CHECKPOINTS, identity=identity).load_latest(repair=False)
    if loaded is None:
        return None
    committed, state = loaded
    # The architecture only: the weights come from the checkpoint, so nothing is downloaded for them.
    model = build_model(train.model.model_copy(update={"weights": None, "weights_sha256": None}), len(data.classes))
    model.load_state_dict(state["model"])
    metrics = state["metrics"] if best else (state["history"][-1] if state.get("history") else None)
    return export_artifacts(
        storage,
        train,
        model,
        state if best else None,
        data.classes,
        data_mod.normalization(train.model),
        job_id,
        committed.step,
        metrics,
        export_data(data, train),
        formats,
    )
