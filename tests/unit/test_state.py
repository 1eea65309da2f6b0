"""Closing attempts (jobs.state.settle) as a table: each witness (the trainer's final word, its
heartbeat, EC2's state and reason, EC2 forgetting the instance) gives one end reason and end time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.jobs.state import settle, stale_claim
from tests.unit.jobs import NOW, ago, attempt, beat, final, instance, record

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
        ("shut itself down without a word", instance("terminated", SELF), None, None, True, "failed", NOW.isoformat(), (None, None)),
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
