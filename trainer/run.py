"""One attempt of a job: find its prefix, start reporting and the interruption watcher, train, and
record the outcome. Run again after an interruption, the same call continues from the latest checkpoint.

Exit codes (the bootstrap script and `spotctl watch` act on them):

    0   succeeded (also when the job had already succeeded: nothing is redone)
    1   failed: the error is in status/final.json and the log
    2   the job file is invalid (nothing was started)
    3   stopped on request (control/stop): final checkpoint committed, resumable
    70  crashed: a data worker was killed (the OOM killer, a native crash); status/crash-attempt-<k>.json
        says how, no final.json: resumable from the last checkpoint
    75  interrupted (spot notice, SIGTERM, Ctrl-C): final checkpoint committed, run again to resume

Killed by a signal (128+N to the shell: the OOM killer's SIGKILL, a native SIGSEGV), it says nothing:
the bootstrap reports the crash for it (orchestrator.jobs.userdata).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import re
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from trainer import batch_probe
from trainer.batch_probe import BatchProbeError
from trainer.checkpoint import CheckpointMismatch
from trainer.distributed import BatchSplitError
from trainer.fetch import DataError, default_cache_dir
from trainer.job import layout
from trainer.job.documents import Crash, Final, Outcome, now_iso
from trainer.job.settings import BootEnv, Settings
from trainer.job.spec import JobSpec
from trainer.job.spec_file import EXIT_BAD_SPEC, load_or_report
from trainer.job.storage import Storage
from trainer.model import WeightsError
from trainer.reporting import Reporter, chance_level

log = logging.getLogger("trainer")

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 3, 75  # 2: EXIT_BAD_SPEC
# A data worker was killed (its crash report written): not a failure of the job, a crash (sysexits' EX_SOFTWARE).
EXIT_CRASHED = 70
# torch's words for a data worker that died under the loader (torch/csrc/DataLoader.cpp, utils/data/dataloader.py):
# "DataLoader worker (pid 123) is killed by signal: Killed." / "... (pid(s) 123, 124) exited unexpectedly".
WORKER_DIED = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? [\d, ]+\) (?:is killed by signal: ([^.]+)|exited unexpectedly)"
)
SIGNAL_NAMES = {signal.strsignal(s): s.name for s in signal.Signals if signal.strsignal(s)}

# Errors whose message says all a user needs: no traceback in the log or final.json.
USER_ERRORS = (DataError, WeightsError, CheckpointMismatch, FloatingPointError, BatchSplitError, BatchProbeError)


def job_prefix(spec: JobSpec, job_url: str, job_id: str | None = None) -> tuple[str, str]:
    """(job id, URL of the job's prefix). The id is the one given (--job-id, or SPOTCTL_JOB_ID from
    the user-data), else that of a job file where `spotctl launch` puts it (a person naming only its
    URL), else the job's name (a job file of one's own)."""
    job_id = job_id or BootEnv.from_env().job_id or layout.job_id_in(job_url) or spec.name
    return job_id, layout.job_prefix(spec.storage, job_id)


def next_attempt(storage: Storage) -> int:
    """SPOTCTL_ATTEMPT when the orchestrator set it, else one past the attempts that left a log."""
    given = BootEnv.from_env().attempt
    if given:
        return given
    numbers = [n for name in storage.list(layout.LOGS) if (n := layout.attempt_of_log(name)) is not None]
    numbers += [n for name in storage.list(layout.METRICS) if (n := layout.attempt_of_metrics(name)) is not None]
    return max(numbers, default=0) + 1


def run(
    job_url: str,
    job_id: str | None = None,
    attempt: int | None = None,
    heartbeat_seconds: float | None = None,
    spec: JobSpec | None = None,
) -> int:
    """One attempt of the job at `job_url` (`spec`: that file, already loaded by the entry point)."""
    # A native crash (SIGSEGV, SIGABRT, SIGBUS... in CUDA, the driver, a data-loading library) kills the
    # process with no final word: the bootstrap reports the signal (status/crash-attempt-<k>.json), and
    # this leaves every thread's Python stack on stderr, which the bootstrap log keeps.
    with contextlib.suppress(OSError, ValueError, AttributeError):  # a stderr with no file (a test's capture)
        faulthandler.enable()
    spec = spec or load_or_report(job_url)
    if spec is None:
        return EXIT_BAD_SPEC
    try:  # a test hook (never set in production): read once, before anything is written
        batch_probe.inject(Settings.from_env().test_probe_memory)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from trainer.distributed import Ranks

    ranks = Ranks.from_env()
    code = _run(spec, job_url, job_id, attempt, heartbeat_seconds, ranks)
    exit_file = Settings.from_env().exit_file
    if exit_file and ranks.distributed:
        # torchrun says only "a worker failed" (exit 1); the user-data reads each local rank's own word.
        with contextlib.suppress(OSError):
            Path(f"{exit_file}.{ranks.local_rank}").write_text(f"{code}\n")
    return code


def _run(spec: JobSpec, job_url: str, job_id: str | None, attempt: int | None, heartbeat_seconds, ranks) -> int:
    job_id, prefix = job_prefix(spec, job_url, job_id)
    try:
        storage = Storage(prefix)
        storage.check()
        previous = read_final(storage)
        if previous and previous.is_(Outcome.SUCCEEDED):
            print(f"job {job_id} already succeeded (status/final.json under {prefix}); nothing to do", file=sys.stderr)
            return EXIT_SUCCEEDED
        if previous and ranks.is_main:  # a stopped or failed job being resumed: it is running again
            storage.delete(layout.FINAL)
        attempt = attempt or next_attempt(storage)
    except Exception as exc:  # nowhere to report to: say it here, once
        hint = {
            PermissionError: "check the credentials or instance profile",
            FileNotFoundError: "create it, or fix `storage` in the job file",
        }.get(type(exc), "check `storage` in the job file and the network")
        print(f"error: cannot use the job's storage {prefix} ({type(exc).__name__}: {exc}); {hint}", file=sys.stderr)
        return EXIT_FAILED
    log_file, console = setup_logging(attempt)
    log.info("job %s attempt %d: %s -> %s", job_id, attempt, job_url, prefix)

    # Imported here: torch takes seconds to import, and a bad job file should fail at once.
    from trainer import tensorboard
    from trainer.display import ConsoleProgress
    from trainer.distributed import Group, peer_lost
    from trainer.loop import Trainer
    from trainer.preemption import InterruptionWatcher

    interval = heartbeat_seconds or Settings.from_env().heartbeat_seconds
    # Under torchrun, rank 0 alone reports and writes (TensorBoard too); each machine's local rank 0
    # polls its IMDS (its notice reaches the other ranks through the step boundary's agreement).
    events = tensorboard.for_process(storage, attempt, spec.train.tensorboard, is_main=ranks.is_main)
    reporter = Reporter(storage, attempt, log_file, interval=interval, writes=ranks.is_main, events=events).start()
    watcher = InterruptionWatcher(poll_imds=ranks.local_rank == 0).start()
    display = ConsoleProgress(console, live=console.is_terminal and ranks.is_main)
    group = Group(ranks)
    outcome = trainer = None
    try:
        group.start()
        if ranks.distributed:
            log.info(
                "rank %d of %d (local rank %d) on %s", ranks.rank, ranks.world_size, ranks.local_rank, group.device
            )
        trainer = Trainer(spec, job_id, storage, reporter, watcher, display, default_cache_dir(), attempt, group=group)
        outcome = trainer.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: leave at once, resumable from the last checkpoint
        log.warning("stopped without a final checkpoint; run the same command to resume from the last one")
        reporter.close("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if watcher.interrupt.is_set():
            # The machine is going away (spot notice, SIGTERM at shutdown) and took part of us with it,
            # e.g. data workers killed by the same SIGTERM: an interruption, not the job's failure.
            log.warning(
                "interrupted (%s: %s); run the same command to resume from the last checkpoint", type(exc).__name__, exc
            )
            reporter.close("interrupted")
            return EXIT_INTERRUPTED
        if ranks.distributed and peer_lost(exc):
            # Another training process (or its machine) went without a word: this one cannot go on
            # alone, and nothing is wrong with the job. Resumable from the last checkpoint.
            log.warning("interrupted: a collective failed (%s: %s); a peer was lost", type(exc).__name__, exc)
            reporter.close("interrupted")
            return EXIT_INTERRUPTED
        died = worker_death(exc)
        if died is not None:
            _record_crash(storage, reporter, attempt, exc, died)
            return EXIT_CRASHED
        if ranks.is_main:
            _record_failure(storage, reporter, attempt, exc)
        else:
            log.error("failed: %s: %s", type(exc).__name__, exc, exc_info=not isinstance(exc, USER_ERRORS))
        return EXIT_FAILED
    finally:
        if trainer is not None:
            trainer.close()  # its data workers ignore SIGTERM: they are ended here, not at exit
        display.close()
        watcher.close()
        group.close()

    if outcome.status == "interrupted":
        log.warning("interrupted (%s) at step %d; run the same command to resume", outcome.reason, outcome.step)
        reporter.close("interrupted")
        return EXIT_INTERRUPTED
    if outcome.status == "stopped":
        if not ranks.is_main:
            return EXIT_STOPPED
        _write_final(storage, {"outcome": Outcome.STOPPED, "reason": outcome.reason, **_summary(outcome, attempt)})
        log.info("stopped (%s) at step %d; final checkpoint committed", outcome.reason, outcome.step)
        reporter.close("stopped")
        return EXIT_STOPPED
    if not ranks.is_main:
        return EXIT_SUCCEEDED
    _write_final(storage, {"outcome": Outcome.SUCCEEDED, **_summary(outcome, attempt)})
    best = (
        f"; best {outcome.best['metric']} {outcome.best['value']:.4f} at epoch {outcome.best['epoch']} (under best/)"
        if outcome.best
        else ""
    )
    log.info("succeeded after %d steps%s", outcome.step, best)
    reporter.close("done")
    return EXIT_SUCCEEDED


def read_final(storage: Storage) -> Final | None:
    try:
        body = storage.read_bytes(layout.FINAL)
    except FileNotFoundError:
        return None
    return Final.parse(body) or Final(outcome=Outcome.UNREADABLE)


def _summary(outcome, attempt: int) -> dict:
    warnings = [w for w in (chance_level(outcome.history, outcome.num_classes, outcome.val_images),) if w]
    for warning in warnings:
        log.warning("%s (%s)", warning["message"], warning["hint"])
    return {
        "attempt": attempt,
        "warnings": warnings,
        "step": outcome.step,
        "epochs_completed": outcome.epoch,
        "best": outcome.best,
        "metrics": outcome.history[-1] if outcome.history else None,
        "history": outcome.history,
        "finished_at": now_iso(),
    }


def worker_death(exc: BaseException) -> str | None:
    """The signal's name ("SIGKILL"; "" when torch does not say) when `exc`, or what caused it, is torch
    telling that a data worker died under the loader; None for any other error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        match = WORKER_DIED.search(str(exc))
        if match:
            return SIGNAL_NAMES.get(match.group(1) or "", "")
        exc = exc.__cause__ or exc.__context__
    return None


def _record_crash(storage: Storage, reporter: Reporter, attempt: int, exc: Exception, signal_name: str) -> None:
    """A data worker was killed (most often by the OOM killer, which picks the largest process): no
    final.json, but the crash report the bootstrap would write for the trainer itself, create-only."""
    message = f"{type(exc).__name__}: {exc}"
    log.error("crashed: %s; resumable from the last checkpoint", message)
    report = {
        "attempt": attempt,
        "process": "data worker",
        "signal": signal_name or None,
        "reported_at": now_iso(),
    }
    try:
        storage.write_bytes(layout.crash_of(attempt), Crash.dump(report), create_only=True)
    except Exception as write_error:
        log.error("could not write %s: %s", storage.url_of(layout.crash_of(attempt)), write_error)
    reporter.update(error=message)
    reporter.close("failed")


def _record_failure(storage: Storage, reporter: Reporter, attempt: int, exc: Exception) -> None:
    message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, USER_ERRORS) else str(exc)
    lines = [] if isinstance(exc, USER_ERRORS) else traceback.format_exception(exc)
    if lines:
        log.error("failed: %s\n%s", message, "".join(lines).rstrip())
    else:
        log.error("failed: %s", message)
    tail = "".join(lines).splitlines()[-20:]
    try:
        final = {
            "outcome": Outcome.FAILED,
            "attempt": attempt,
            "error": message,
            "traceback": tail,
            "finished_at": now_iso(),
        }
        _write_final(storage, final)
    except Exception as write_error:  # the storage itself may be what failed
        log.error("could not write %s: %s", storage.url_of(layout.FINAL), write_error)
    reporter.update(error=message)
    reporter.close("failed")


def _write_final(storage: Storage, final: dict) -> None:
    storage.write_bytes(layout.FINAL, Final.dump(final))


def setup_logging(attempt: int | None):
    """Log to stderr (rich on a terminal) and, for an attempt, to a file shipped to logs/attempt-<k>.log."""
    from rich.console import Console
    from rich.logging import RichHandler

    console = Console(stderr=True)
    plain = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    if console.is_terminal:
        to_console: logging.Handler = RichHandler(console=console, show_path=False)
    else:
        to_console = logging.StreamHandler(sys.stderr)
        to_console.setFormatter(plain)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(to_console)
    log_file = None
    if attempt is not None:
        log_file = Path(tempfile.mkdtemp(prefix="spotctl-trainer-")) / f"attempt-{attempt}.log"
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(plain)
        root.addHandler(to_file)
    root.setLevel(logging.INFO)
    for noisy in (
        "botocore",
        "boto3",
        "s3fs",
        "aiobotocore",
        "urllib3",
        "fsspec",
        "PIL",
        "onnxscript",
        "onnx_ir",
        "torch.onnx",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return log_file, console
