"""Is a running job healthy? Two flags, decided from the trainer's heartbeat alone (no AWS calls):

- `stalled`: the instance runs but the trainer has not reported for a while: hung, crashed without a
  word, or still installing. Judged only after HEARTBEAT_STALE_S since launch, so a fresh instance
  has time to boot.
- `low_gpu_util`: the GPU has averaged under LOW_GPU_UTIL_PCT for LOW_GPU_WINDOW_S of training, so
  the job pays for a GPU it barely uses. The heartbeat's window averages (trainer.reporting) say why
  when they can: the loop waits for batches (data-bound) or most GPU memory is unused (small batch).
  Without GPU telemetry (nulls) nothing is flagged: no figure, no verdict.

A trainer's document that cannot be read whole (a heartbeat that is no JSON object, a final word with
a field of the wrong type: jobs.views) is a flag `unreadable` naming the object's URL and what is
wrong with it; what it would have said is shown as unknown.

A finished run's own warnings (final.json `warnings`, e.g. `chance_level`: validation accuracy no
better than guessing) are flags too: a warning on the result, never a failure of the job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from orchestrator.jobs.state import age_s, heartbeat_age
from trainer.job.documents import Heartbeat, JobState, Phase

if TYPE_CHECKING:
    from orchestrator.jobs.state import JobView

LOW_GPU_UTIL_PCT = 30
LOW_GPU_WINDOW_S = 300
HEARTBEAT_STALE_S = 120  # a running trainer writes one every ~15 s
DATA_BOUND_WAIT = 0.3  # fraction of the loop's time spent waiting for the next batch
SMALL_BATCH_MEM = 0.5  # fraction of GPU memory in use
WINDOW_SLACK = 0.95  # heartbeats are ~15 s apart, so a full window can read a little short

LOGS_HINT = "`spotctl logs JOB --bootstrap` shows what the instance is doing"
UNREADABLE = "unreadable"
UNREADABLE_HINT = "what it says is shown as unknown until it is rewritten, restored or deleted"


@dataclass(frozen=True)
class Flag:
    name: str
    message: str
    hint: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def job_health(view: JobView, now: datetime | None = None) -> list[Flag]:
    """The flags of a job while it runs, and the warnings its final word gives, as of `now` (default: now),
    after one for each of its documents that could not be read."""
    told = [Flag(UNREADABLE, str(problem), UNREADABLE_HINT) for problem in view.problems]
    return told + _running_flags(view, now)


def _running_flags(view: JobView, now: datetime | None) -> list[Flag]:
    if view.final is not None and view.final.warnings:
        return [Flag(warning.name, warning.message, warning.hint) for warning in view.final.warnings]
    current = view.record.current if view.record else None
    if view.state not in (JobState.RUNNING, JobState.EXPORTING) or current is None:
        return []
    age = heartbeat_age(view.heartbeat, now=now) if view.heartbeat else None
    return health_flags(
        view.heartbeat, True, age, age_s(current.launched_at, now) if current.launched_at else 0.0, current.number
    )


def health_flags(
    heartbeat: Heartbeat | None,
    instance_running: bool,
    heartbeat_age_s: float | None,
    running_for_s: float,
    now_attempt: int | None = None,
) -> list[Flag]:
    """The flags for a job now. heartbeat_age_s: seconds since the heartbeat was written (None when
    unknown); running_for_s: seconds since the current attempt launched; now_attempt: that attempt's
    number, so an earlier attempt's heartbeat does not count as this one's."""
    if not instance_running:
        return []
    current = heartbeat if heartbeat and (now_attempt is None or heartbeat.of_attempt(now_attempt)) else None
    if running_for_s > HEARTBEAT_STALE_S:
        if current is None:
            which = f"from attempt {now_attempt} " if heartbeat and now_attempt is not None else ""
            return [Flag("stalled", f"no heartbeat {which}yet, {duration(running_for_s)} after launch", LOGS_HINT)]
        if heartbeat_age_s is not None and heartbeat_age_s > HEARTBEAT_STALE_S:
            return [Flag("stalled", f"no heartbeat for {duration(heartbeat_age_s)} while the instance runs", LOGS_HINT)]
    # A stale or earlier attempt's heartbeat describes the past: no verdict on the GPU from it.
    flag = _low_gpu_util(current) if current else None
    return [flag] if flag else []


def _low_gpu_util(beat: Heartbeat) -> Flag | None:
    util = beat.gpu_util_window_pct
    if not beat.in_phase(Phase.TRAINING) or util is None or util >= LOW_GPU_UTIL_PCT:
        return None
    if (beat.health_window_s or 0) < WINDOW_SLACK * LOW_GPU_WINDOW_S:
        return None  # too short to tell a slow start from a slow job
    low = f"GPU at {util:.0f}% over the last {LOW_GPU_WINDOW_S // 60} min"
    wait, memory = beat.data_wait_window, beat.gpu_mem_window_fraction
    if wait is not None and wait >= DATA_BOUND_WAIT:
        return Flag(
            "low_gpu_util",
            f"{low}; data-bound: the loop waits for batches {wait:.0%} of the time",
            _raise("train.data.workers", beat.data_workers),
        )
    if memory is not None and memory < SMALL_BATCH_MEM:
        total = beat.gpu_mem_total_gib
        used = f"{memory * total:.1f} of {total:.0f} GiB" if total else f"{memory:.0%} of the"
        return Flag(
            "low_gpu_util", f"{low}; small batch: {used} GPU memory used", _raise("train.batch_size", beat.batch_size)
        )
    return Flag(
        "low_gpu_util",
        f"{low}; neither data loading nor batch size explains it",
        "profile a few steps (torch.profiler) to see where the time goes",
    )


def _raise(field: str, now: int | None) -> str:
    return f"raise {field} (now {now})" if now is not None else f"raise {field}"


def duration(seconds: float) -> str:
    """45s, 3m, 5m 12s, 1h 05m: as a person says it."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes}m {rest}s" if rest else f"{minutes}m"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
