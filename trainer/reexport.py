"""`python -m trainer export --job URL [--formats ...]`: export a job's best checkpoint again (or in
other formats) without training: on the instance, or here against the same storage.

The job's status is left alone: nothing here heartbeats, and only artifacts/ is written. Formats not
named are kept from the earlier manifest when it describes the same checkpoint.
"""

from __future__ import annotations

import logging
import sys

from trainer.fetch import default_cache_dir
from trainer.run import EXIT_BAD_SPEC, EXIT_FAILED, EXIT_SUCCEEDED, USER_ERRORS, _setup_logging, job_prefix
from trainer.spec_file import SpecError, load_spec
from trainer.storage import Storage

log = logging.getLogger("trainer")


def export_job(job_url: str, job_id: str | None = None, formats: list[str] | None = None) -> int:
    """0 when every format exported and validated, 1 otherwise (each failure says why), 2 bad job file."""
    try:
        spec = load_spec(job_url)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"error: {exc.summary}", file=sys.stderr)
        return EXIT_BAD_SPEC
    job_id, prefix = job_prefix(spec, job_url, job_id)
    _, console = _setup_logging(None)
    storage = Storage(prefix)
    if not storage.list("checkpoints") and not storage.list("best"):
        print(f"error: job {job_id} has no checkpoint under {prefix} to export from; train it first (python -m trainer run --job {job_url})", file=sys.stderr)
        return EXIT_FAILED

    from trainer.display import ConsoleProgress
    from trainer.loop import Trainer
    from trainer.preemption import InterruptionWatcher
    from trainer.reporting import Reporter

    # A reporter never started publishes nothing: the job's heartbeat stays the training run's.
    reporter = Reporter(storage, attempt=0)
    display = ConsoleProgress(console, live=False)
    try:
        trainer = Trainer(spec, storage, reporter, InterruptionWatcher(), display, default_cache_dir())
        manifest = trainer.export(formats)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    asked = formats or spec.train.export.formats
    failed = {name: manifest["formats"][name].get("reason") for name in asked if manifest["formats"][name]["status"] != "ok"}
    for name in asked:
        entry = manifest["formats"][name]
        print(f"{name}: {'ok, ' + ', '.join(entry['files']) if entry['status'] == 'ok' else 'failed: ' + entry['reason']}")
    print(f"manifest: {storage.url_of('artifacts/manifest.json')} (checkpoint step {manifest['checkpoint_step']}, {manifest['source']})")
    return EXIT_FAILED if failed else EXIT_SUCCEEDED
