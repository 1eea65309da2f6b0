"""The decision step's memory between calls (orchestrator.jobs.step): what the controller keeps in
care/controller.json must carry the watch's behaviour across invocations that remember nothing."""

from __future__ import annotations

import json

from orchestrator.jobs.record import JobStore
from orchestrator.jobs.step import StepMemory, Stepper, WatchOptions
from tests.unit.jobs import attempt, record, view
from trainer.job.documents import JobState


def stepper(tmp_path, now: list[float], told: list):
    store = JobStore(str(tmp_path / "root"))
    store.write_record(record(attempt(1, end="interrupted", ended=60)), create=True)
    options = WatchOptions(capacity_deadline_s=100, capacity_retry_s=10, capacity_retry_max_s=40)
    # The backoff needs no cloud: EC2's refusals are handed to it as they come.
    return store, Stepper(store, lambda region: None, lambda cloud: None, options, lambda: now[0], told.append)


def reloaded(memory: StepMemory) -> StepMemory:
    """The memory as the next invocation reads it back."""
    return StepMemory.parse(memory.to_json()) or StepMemory()


def test_capacity_backoff_survives_a_round_trip_through_its_document(tmp_path):
    now, told = [1000.0], []
    store, step = stepper(tmp_path, now, told)
    memory = StepMemory()
    delays = []
    for at in (1000.0, 1010.0, 1030.0, 1070.0, 1099.0):
        now[0] = at
        step._cannot_start("j", "EC2 refused all 3 offers", JobState.NO_CAPACITY, 1, memory)
        memory = reloaded(memory)
        delays.append(memory.delay)
    assert delays == [10, 20, 40, 40, 40]  # doubling from capacity_retry_s, capped at capacity_retry_max_s
    assert memory.waiting_since == 1000.0 and memory.next_try == 1099.0 + 40
    assert [e.message for e in told][:2] == [
        "no capacity (EC2 refused all 3 offers); trying again in 10s",
        "no capacity (EC2 refused all 3 offers); trying again in 20s",
    ]
    now[0] = 1100.0  # the deadline: given up, and nothing left to remember
    step._cannot_start("j", "EC2 refused all 3 offers", JobState.NO_CAPACITY, 1, memory)
    assert (memory.waiting_since, memory.next_try, memory.delay) == (None, None, None)
    assert store.read_record("j").outcome == "no_capacity"
    assert told[-1].message == "no_capacity: EC2 refused all 3 offers; gave up after 100s"


def test_state_and_health_news_is_told_once_across_invocations(tmp_path):
    now, told = [0.0], []
    _, step = stepper(tmp_path, now, told)
    memory = StepMemory()
    running = view(record(attempt(1)))
    for _ in range(2):
        step._note_state(running, memory)
        memory = reloaded(memory)
    assert told == []  # the first look at a running job is no news
    ended = view(record(attempt(1), outcome="no_capacity"))
    for _ in range(2):
        step._note_state(ended, memory)
        memory = reloaded(memory)
    assert [e.message for e in told] == [f"{running.state} -> no_capacity"]


def test_a_memory_document_read_leniently():
    assert StepMemory.parse(None) is None and StepMemory.parse(b"not json") is None
    odd = StepMemory.parse(json.dumps({"delay": "soon", "flags": ["stalled"], "later": 1}).encode())
    assert odd.delay is None and odd.flags == ["stalled"]  # an unreadable field is unknown, the rest counts
