"""A crashed attempt in words (Attempt.end_detail, and the reason a job is given up after too many
crashes): from the bootstrap's crash report (trainer.job.documents.Crash) and the trainer's last
heartbeat, whose memory high-water marks are all that is left to tell an out-of-memory kill by once
the process is gone. Pure: jobs.state.settle and jobs.policy.decide call it.

    killed by SIGKILL (exit 137): out of memory, the kernel's OOM killer says (host memory 15.1 of 15.5 GiB, ...)
    killed by SIGKILL (exit 137): probably out of memory (host memory 14.9 of 15.5 GiB at the last heartbeat, ...)
    killed by SIGSEGV (exit 139): a native crash (CUDA, the driver or a data-loading library; the bootstrap log has its stack)
    exited with code 120 and no final.json (not a code the trainer gives)
    the instance shut itself down with no word from the trainer or its bootstrap
"""

from __future__ import annotations

from trainer.job.documents import Crash, Heartbeat
from trainer.job.units import plural

WORKER = "data worker"  # Crash.process of a report the trainer wrote (trainer.run)
# Memory in use at the last heartbeat at or above this fraction of the machine's: a SIGKILL is then
# most likely the OOM killer's. The heartbeat comes every 15 s, so the figure at the kill was higher
# still; the kernel log, when the bootstrap could read it, says it for certain.
OOM_NEAR_FRACTION = 0.9
# What a native crash looks like: the process died on a signal of its own making.
NATIVE_CRASHES = frozenset({"SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE"})
# Signals that ask a process to end: something on the machine did, with no spot notice.
STOP_SIGNALS = frozenset({"SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"})
OOM_FIX = (
    "a smaller train.batch_size (or fewer train.data.workers), or instance types with more memory "
    "in compute.instance_types"
)
SILENT = (
    "the instance shut itself down with no word from the trainer or its bootstrap "
    "(the bootstrap itself was killed, or could not reach storage to report)"
)


def describe(crash: Crash | None, beat: Heartbeat | None) -> str:
    """How the trainer died, with the memory figures when its heartbeat had them."""
    if crash is None:
        return SILENT
    if crash.process == WORKER:
        how = f"a data worker was killed by {crash.signal or 'a signal'}"
    elif crash.signal:
        how = f"killed by {crash.signal}" + (f" (exit {crash.exit_code})" if crash.exit_code is not None else "")
    elif crash.exit_code is not None:
        how = f"exited with code {crash.exit_code} and no final.json (not a code the trainer gives)"
    else:
        how = "died without a final word"
    memory = memory_figures(beat)
    if crash.oom_killed:
        cause = "out of memory, the kernel's OOM killer says"
    elif probably_out_of_memory(crash, beat):
        cause = "probably out of memory"
    elif crash.signal in NATIVE_CRASHES:
        cause = "a native crash (CUDA, the driver or a data-loading library; the bootstrap log has its stack)"
    elif crash.signal in STOP_SIGNALS:
        cause = "stopped by something on the machine, with no spot notice, before it could checkpoint"
    elif crash.signal == "SIGKILL" and _figures_known(beat):
        cause = "not near the machine's memory at the last heartbeat: something on the machine killed it"
    elif crash.signal == "SIGKILL" and crash.oom_killed is False:
        cause = "not by the kernel's OOM killer, its log says: something on the machine killed it"
    elif crash.signal == "SIGKILL":
        cause = "perhaps out of memory (the OOM killer's signal; no memory figures to tell)"
    else:
        cause = ""
    return how + (f": {cause}" if cause else "") + (f" ({memory})" if memory else "")


def out_of_memory(crash: Crash | None, beat: Heartbeat | None) -> bool:
    """The kernel said so, or it is the likely cause."""
    return crash is not None and bool(crash.oom_killed or probably_out_of_memory(crash, beat))


def probably_out_of_memory(crash: Crash, beat: Heartbeat | None) -> bool:
    """A SIGKILL (the OOM killer's signal) while memory was near the machine's: only the kernel log can
    say for certain, and it may not have been readable (oom_killed None)."""
    if crash.signal != "SIGKILL" or crash.oom_killed is False or beat is None or not beat.host_mem_total_gib:
        return False
    used = max(beat.host_mem_used_peak_gib or 0.0, beat.mem_rss_peak_gib or 0.0)
    return used >= OOM_NEAR_FRACTION * beat.host_mem_total_gib


def _figures_known(beat: Heartbeat | None) -> bool:
    return beat is not None and bool(beat.host_mem_total_gib) and beat.host_mem_used_peak_gib is not None


def memory_figures(beat: Heartbeat | None) -> str:
    """`host memory 15.1 of 15.5 GiB, trainer peak 12.3 GiB, GPU peak 22.0 of 24.0 GiB at the last heartbeat`."""
    if beat is None:
        return ""
    parts = []
    if beat.host_mem_used_peak_gib is not None and beat.host_mem_total_gib:
        parts.append(f"host memory {beat.host_mem_used_peak_gib:.1f} of {beat.host_mem_total_gib:.1f} GiB")
    if beat.mem_rss_peak_gib is not None:
        parts.append(f"trainer peak {beat.mem_rss_peak_gib:.1f} GiB")
    if beat.gpu_mem_peak_gib is not None:
        of = f" of {beat.gpu_mem_total_gib:.1f}" if beat.gpu_mem_total_gib else ""
        parts.append(f"GPU peak {beat.gpu_mem_peak_gib:.1f}{of} GiB")
    return ", ".join(parts) + " at the last heartbeat" if parts else ""


def give_up_reason(crashes: int, limit: int, last: str | None) -> str:
    """Why a job that crashed more than recovery.max_crashes times is failed, and what to change."""
    told = f" (last: {last})" if last else ""
    fix = (
        f"it ran out of memory: {OOM_FIX}"
        if last and "out of memory" in last
        else f"if it runs out of memory: {OOM_FIX}; `spotctl logs JOB --bootstrap` shows how it died"
    )
    return f"the trainer crashed {plural(crashes, 'time')}{told}; recovery.max_crashes is {limit}: {fix}"
