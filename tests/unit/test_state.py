"""Closing attempts (jobs.state.settle) as a table: each witness (the trainer's final word, its
heartbeat, EC2's state and reason, EC2 forgetting the instance) gives one end reason and end time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.jobs.state import settle, stale_claim
from tests.unit.jobs import NOW, ago, attempt, beat, crash, final, instance, record

SPOT, SELF, USER = "Server.SpotInstanceTermination", "Client.InstanceInitiatedShutdown", "Client.UserInitiatedShutdown"
TRANSITION = "Service initiated (2026-12-01 11:58:00 GMT)"


# fmt: off
@pytest.mark.parametrize(
    ("case", "ec2", "heartbeat", "said", "changed", "end_reason", "ended_at", "steps"),
    [
        ("still running, nothing said", instance(), beat(step=40), None, False, None, None, (None, None)),
        ("taken by EC2, the transition time ends billing", instance("terminated", SPOT, transition=TRANSITION), beat(step=40, resumed_from_step=10), None, True,
         "interrupted", "2026-12-01T11:58:00+00:00", (10, 40)),
        ("taken by EC2 without a transition time: now", instance("terminated", SPOT), None, None, True, "interrupted", NOW.isoformat(), (None, None)),
        ("the trainer's interruption, before EC2 acts: no end time yet", instance(), beat(phase="interrupted", step=42), None, True, "interrupted", None, (None, 42)),
        ("the trainer's word beats EC2's", instance("terminated", SELF), None, final("succeeded"), True, "succeeded", NOW.isoformat(), (None, None)),
        ("stopped on request", instance("terminated", SELF), None, final("stopped"), True, "stopped", NOW.isoformat(), (None, None)),
        ("terminated by a person", instance("terminated", USER), None, None, True, "terminated", NOW.isoformat(), (None, None)),
        ("shut itself down without a word: a crash (the bootstrap died)", instance("terminated", SELF), None, None, True, "crashed", NOW.isoformat(), (None, None)),
        ("gone with a reason nobody knows", instance("terminated", "Server.SomethingNew"), None, None, True, "lost", NOW.isoformat(), (None, None)),
        ("EC2 could not start it: another pool", instance("terminated", "Server.InsufficientInstanceCapacity"), None, None, True, "not_started", NOW.isoformat(), (None, None)),
        ("the request's own fault: failed, not interrupted", instance("terminated", "Client.InternalError"), None, None, True, "failed", NOW.isoformat(), (None, None)),
        ("EC2 forgot it: ends at its last heartbeat", None, beat(step=7), None, True, "lost", ago(5), (None, 7)),
        ("EC2 forgot it, no heartbeat: ends at launch, never now", None, None, None, True, "lost", ago(900), (None, None)),
        ("another attempt's word is not this one's", instance(), beat(attempt=2, phase="interrupted"), final("failed", attempt=2), False, None, None, (None, None)),
    ],
)
# fmt: on
def test_settle(case, ec2, heartbeat, said, changed, end_reason, ended_at, steps):
    job = record(replace(attempt(launched=900), running_at=ago(880)))  # seen running before (tests/unit/test_cost.py)
    assert settle(job, {1: ec2} if ec2 else {}, said, heartbeat, NOW) is changed
    [closed] = job.attempts
    assert (closed.end_reason, closed.ended_at, (closed.start_step, closed.end_step)) == (end_reason, ended_at, steps)
    assert settle(job, {1: ec2} if ec2 else {}, said, heartbeat, NOW) is False  # idempotent: run it every poll


GIB = {"host_mem_total_gib": 15.5}


# fmt: off
@pytest.mark.parametrize(
    ("case", "ec2", "heartbeat", "said", "report", "end_reason", "ended_at", "detail"),
    [
        ("SIGKILLed near the machine's memory: probably out of memory, with the figures",
         instance("terminated", SELF), beat(step=12, host_mem_used_peak_gib=15.1, mem_rss_peak_gib=11.0, **GIB), None, crash(), "crashed", NOW.isoformat(),
         "killed by SIGKILL (exit 137): probably out of memory (host memory 15.1 of 15.5 GiB, trainer peak 11.0 GiB at the last heartbeat)"),
        ("the kernel log names the trainer's pid: out of memory for certain",
         instance("terminated", SELF), beat(host_mem_used_peak_gib=9.0, **GIB), None, crash(oom_killed=True, kernel_log=["Out of memory: Killed process 7"]),
         "crashed", NOW.isoformat(), "killed by SIGKILL (exit 137): out of memory, the kernel's OOM killer says (host memory 9.0 of 15.5 GiB at the last heartbeat)"),
        ("SIGKILLed far from the machine's memory: something else killed it",
         instance("terminated", SELF), beat(host_mem_used_peak_gib=3.0, mem_rss_peak_gib=2.0, **GIB), None, crash(oom_killed=False), "crashed", NOW.isoformat(),
         "killed by SIGKILL (exit 137): not near the machine's memory at the last heartbeat: something on the machine killed it "
         "(host memory 3.0 of 15.5 GiB, trainer peak 2.0 GiB at the last heartbeat)"),
        ("a data worker the OOM killer took: the trainer's own report",
         instance("terminated", SELF), beat(host_mem_used_peak_gib=15.0, **GIB), None, crash(code=None, process="data worker"), "crashed", NOW.isoformat(),
         "a data worker was killed by SIGKILL: probably out of memory (host memory 15.0 of 15.5 GiB at the last heartbeat)"),
        ("a native crash in a CUDA or data-loading library",
         instance("terminated", SELF), None, None, crash("SIGSEGV", 139), "crashed", NOW.isoformat(),
         "killed by SIGSEGV (exit 139): a native crash (CUDA, the driver or a data-loading library; the bootstrap log has its stack)"),
        ("an abort, with the GPU's peak",
         instance("terminated", SELF), beat(gpu_mem_peak_gib=23.5, gpu_mem_total_gib=24.0), None, crash("SIGABRT", 134), "crashed", NOW.isoformat(),
         "killed by SIGABRT (exit 134): a native crash (CUDA, the driver or a data-loading library; the bootstrap log has its stack) "
         "(GPU peak 23.5 of 24.0 GiB at the last heartbeat)"),
        ("a SIGTERM with no spot notice", instance("terminated", SELF), None, None, crash("SIGTERM", 143), "crashed", NOW.isoformat(),
         "killed by SIGTERM (exit 143): stopped by something on the machine, with no spot notice, before it could checkpoint"),
        ("an exit code the trainer never gives", instance("terminated", SELF), None, None, crash(None, 120), "crashed", NOW.isoformat(),
         "exited with code 120 and no final.json (not a code the trainer gives)"),
        ("no crash report: the bootstrap itself died", instance("terminated", SELF), beat(step=3), None, None, "crashed", NOW.isoformat(),
         "the instance shut itself down with no word from the trainer or its bootstrap (the bootstrap itself was killed, or could not reach storage to report)"),
        ("another attempt's crash report is not this one's", instance("terminated", SPOT), None, None, crash(attempt=2), "interrupted", NOW.isoformat(), None),
        ("the trainer raised: its final word wins over any report", instance("terminated", SELF), None, final("failed", error="ValueError: x"), crash(),
         "failed", NOW.isoformat(), None),
        ("checkpointed on the notice, then killed: an interruption", instance("terminated", SPOT), beat(phase="interrupted"), None, crash(), "interrupted",
         NOW.isoformat(), None),
        ("reported while the machine still shuts down: crashed, the end time follows", instance(), None, None, crash(), "crashed", None,
         "killed by SIGKILL (exit 137): perhaps out of memory (the OOM killer's signal; no memory figures to tell)"),
        ("EC2 forgot it, its crash report remains", None, beat(step=7), None, crash(oom_killed=False), "crashed", ago(5),
         "killed by SIGKILL (exit 137): not by the kernel's OOM killer, its log says: something on the machine killed it"),
    ],
)
# fmt: on
def test_settle_a_trainer_that_died_without_a_word(case, ec2, heartbeat, said, report, end_reason, ended_at, detail):
    job = record(replace(attempt(launched=900), running_at=ago(880)))
    assert settle(job, {1: ec2} if ec2 else {}, said, heartbeat, NOW, report) is True
    [closed] = job.attempts
    assert (closed.end_reason, closed.ended_at, closed.end_detail) == (end_reason, ended_at, detail)
    assert settle(job, {1: ec2} if ec2 else {}, said, heartbeat, NOW, report) is False  # idempotent


def test_a_recorded_end_is_kept():
    job = record(attempt(end="stopped", ended=60))
    assert settle(job, {1: instance("terminated", SPOT)}, None, None, NOW) is False
    assert (job.attempts[0].end_reason, job.attempts[0].ended_at) == ("stopped", ago(60))


@pytest.mark.parametrize(("requested", "stale"), [(None, True), (10, False), (299, False), (301, True)])
def test_a_claim_is_stale_after_five_minutes(requested, stale):
    assert stale_claim(attempt(instance_id=None, requested=requested), NOW) is stale


@pytest.mark.parametrize(
    ("said", "heartbeat", "expected"),
    [
        (final("succeeded"), beat(phase="done"), "succeeded"),  # bug 7 of issue 16: it read `unknown`
        (final("failed"), None, "failed"),
        (final("stopped"), beat(phase="stopped"), "cancelled"),
        (None, beat(phase="interrupted"), "interrupted"),
        (None, beat(phase="training"), "unknown"),  # no machine to ask whether it still runs: no guess
        (None, None, "unknown"),
    ],
)
def test_a_job_the_trainer_ran_alone_reads_its_state_from_the_trainers_documents(said, heartbeat, expected):
    from orchestrator.jobs.state import derive_state

    assert derive_state(None, said, heartbeat, None, NOW) == expected


def test_a_list_shows_live_jobs_and_those_ended_within_a_day():
    from orchestrator.jobs.views import listed
    from tests.unit.jobs import view
    from trainer.job.documents import JobState

    running = view(record(attempt()), instance("running"), beat())
    recent = view(record(attempt(end="succeeded", ended=3600)), instance("terminated"), None, final("succeeded"))
    old = view(record(attempt(end="failed", ended=2 * 86400)), instance("terminated"), None, final("failed"))
    old.record.created_at = ago(3 * 86400)
    assert listed([running, recent, old], now=NOW) == ([running, recent], 1)
    assert listed([running, recent, old], every=True, now=NOW) == ([running, recent, old], 0)
    assert listed([running, recent, old], frozenset({JobState.FAILED}), now=NOW) == ([], 1)
