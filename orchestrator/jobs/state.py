"""The job state machine: what a job is doing, derived (never guessed) from its record, the trainer's
documents and EC2's own view of the instance (`derive_state`), and how each ended attempt ended
(`settle`). Both are pure: callers read (jobs.views) and write (jobs.record) around them.

    pending -> launching -> running -> (interrupted -> launching -> running)* -> exporting -> succeeded
    stopping: asked to stop (spotctl stop, the budget) while the machine still runs
    terminal: succeeded, failed, cancelled, budget_exceeded, no_capacity (JobState.terminal)

An instance that is gone with no final.json is *interrupted*, never done; so is a running instance
whose trainer reported `interrupted` (it checkpointed on the spot notice and EC2 is about to take the
machine): recovery starts the next attempt then, without waiting for EC2 to finish the termination.
An instance that shut itself down with no final.json is interrupted too: its trainer crashed (the
bootstrap's crash report says how) or the bootstrap itself died; its attempt ends `crashed`.

Closing an attempt (`settle`) takes the best witness available, in this order: the trainer's final
word for that attempt (succeeded, failed, stopped), its `interrupted` heartbeat, the bootstrap's crash
report for that attempt (crashed), then EC2's state reason (Server.SpotInstanceTermination,
Client.UserInitiatedShutdown, ...). The trainer's word comes
first because it knows whether the work was saved; EC2's says who pulled the plug and, with the
transition time, when billing stopped (`ended_at`, which the cost uses).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from orchestrator.aws.instances import GONE, SELF_SHUTDOWN, SPOT_TERMINATION, USER_SHUTDOWN, Instance, launch_failure
from orchestrator.jobs import crash as crashes
from trainer.job.documents import (
    Attempt,
    Crash,
    EndReason,
    Final,
    Heartbeat,
    JobRecord,
    JobState,
    Manifest,
    Outcome,
    Phase,
)
from trainer.job.problems import Problem

# describe_instances is eventually consistent: a just-started instance may not be listed yet.
NOT_LISTED_GRACE_S = 300.0
# A claim left without an instance this long is taken over (its orchestrator died between claiming
# and EC2's answer; the ClientToken makes a repeat harmless).
STALE_CLAIM_S = 300.0
# EC2 bills an instance from `running`, and no API says when that began: the first poll that sees it
# is the record (Attempt.running_at). That is late by at most the time since the previous look, so it
# is trusted only this soon after the launch; a later first look (nobody watched) keeps the launch
# time, which bills the pending phase too: a little high, never low.
RUNNING_SEEN_WITHIN_S = 120.0
_TRANSITION_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


@dataclass
class JobView:
    """Everything known about a job at one moment (jobs.views reads it)."""

    job_id: str
    record: JobRecord | None
    heartbeat: Heartbeat | None
    final: Final | None
    instance: Instance | None  # the current attempt's
    artifacts: Manifest | None = None
    instances: dict[int, Instance] | None = None  # every attempt's, by attempt number
    unreadable: Problem | None = None  # record.json is there and cannot be read: the job is `unreadable`
    problems: list[Problem] = field(default_factory=list)  # the trainer's documents that failed: parts unknown
    crash: Crash | None = None  # the current attempt's crash report, read where it may have ended (jobs.views)
    machines: dict[str, Instance] | None = None  # every instance of the job EC2 lists, by id (a multi-node job's nodes)

    @property
    def state(self) -> JobState:
        if self.unreadable is not None:
            return JobState.UNREADABLE
        return derive_state(self.record, self.final, self.heartbeat, self.instance)


def derive_state(
    record: JobRecord | None,
    final: Final | None,
    heartbeat: Heartbeat | None,
    instance: Instance | None,
    now: datetime | None = None,
) -> JobState:
    if record is None:  # the trainer ran alone (`python -m trainer run`): only its own documents tell
        if final and (final.finished or final.is_(Outcome.STOPPED)):
            return JobState.CANCELLED if final.is_(Outcome.STOPPED) else JobState.of(final.outcome)
        if heartbeat and heartbeat.in_phase(Phase.INTERRUPTED):
            return JobState.INTERRUPTED
        return JobState.UNKNOWN  # running, or gone without a word: no machine to ask, so no guess
    if final and final.finished:
        return JobState.of(final.outcome)  # what the trainer (or its bootstrap) said is final, even after a stop
    if record.cancelled_at:
        return JobState.CANCELLED
    alive = instance is not None and instance.state not in GONE
    if record.outcome:  # no_capacity, budget_exceeded, failed: decided by the orchestrator
        return JobState.STOPPING if record.stop_requested_at and alive else JobState.of(record.outcome)
    if record.stop_requested_at:  # a stop was asked for: stopping until the machine is gone
        return JobState.STOPPING if alive else JobState.CANCELLED
    if final and final.is_(Outcome.STOPPED):
        return JobState.CANCELLED
    current = record.current
    if current is None:
        return JobState.PENDING
    if current.instance_id is None:
        return JobState.LAUNCHING  # claimed; EC2 has not answered yet
    beat = heartbeat if heartbeat is not None and heartbeat.of_attempt(current.number) else None
    if beat and beat.in_phase(Phase.INTERRUPTED):
        return JobState.INTERRUPTED  # checkpointed on the spot notice: the machine is about to go
    if instance is None and age_s(current.launched_at, now) < NOT_LISTED_GRACE_S:
        return JobState.LAUNCHING
    if instance is None or instance.state in GONE:
        # Shut itself down without a final word (SELF_SHUTDOWN): the trainer crashed, or the bootstrap
        # died; recoverable like the rest below, and settle ends the attempt `crashed`.
        if instance is not None and launch_failure(instance.reason_code) == "client":
            return JobState.FAILED  # EC2 could not start it, for a reason the same request meets again
        return JobState.INTERRUPTED  # gone without a final outcome: recoverable
    if instance.state == "pending":
        return JobState.LAUNCHING
    if beat and beat.in_phase(Phase.EXPORTING):
        return JobState.EXPORTING
    return JobState.RUNNING


def age_s(iso: str | None, now: datetime | None = None) -> float:
    """Seconds from an ISO time to `now` (default: now); infinite when the time is unknown."""
    return ((now or datetime.now(timezone.utc)) - datetime.fromisoformat(iso)).total_seconds() if iso else float("inf")


def heartbeat_age(beat: Heartbeat, plus: float | None = 0.0, now: datetime | None = None) -> float | None:
    """Seconds since the heartbeat was written (plus an age it reported)."""
    if plus is None or not beat.updated_at:
        return None
    return round(age_s(beat.updated_at, now) + plus, 1)


def eta_left_s(beat: Heartbeat, now: datetime | None = None) -> float | None:
    """The trainer's ETA as of now: what it said at `updated_at`, less the time since (the one ETA every
    view shows; the list and the detail read a second apart must not disagree by a heartbeat's age)."""
    if beat.eta_s is None:
        return None
    since = age_s(beat.updated_at, now) if beat.updated_at else 0.0
    return round(max(0.0, beat.eta_s - max(0.0, since)), 1)


def stale_claim(attempt: Attempt, now: datetime | None = None) -> bool:
    """A claim older than STALE_CLAIM_S: its orchestrator is taken to have died."""
    return attempt.requested_at is None or age_s(attempt.requested_at, now) > STALE_CLAIM_S


def unfinished_claim(record: JobRecord, now: datetime | None = None) -> bool:
    """The current attempt was claimed long ago and never got an instance."""
    last = record.current
    return last is not None and last.instance_id is None and stale_claim(last, now)


# ------------------------------------------------------------------------------- closing attempts
def settled(view: JobView, now: datetime | None = None) -> JobView:
    """The view with its ended attempts closed as `settle` would record them, on a copy: what
    `spotctl status` shows of a job nobody watches (an interrupted or failed attempt reads as ended,
    with EC2's reason and end time, not as a stale `ended -`), writing nothing."""
    if view.record is None or view.instances is None:  # EC2 was not asked (a cancelled job): nothing to go by
        return view
    record = copy.deepcopy(view.record)
    if not settle(record, view.instances or {}, view.final, view.heartbeat, now, view.crash, view.machines):
        return view
    return replace(view, record=record)


def settle(
    record: JobRecord,
    instances: dict[int, Instance],
    final: Final | None,
    heartbeat: Heartbeat | None,
    now: datetime | None = None,
    crash: Crash | None = None,
    machines: dict[str, Instance] | None = None,
) -> bool:
    """Fill in end_reason / end_detail / ended_at / state_reason / steps of attempts that have ended,
    and running_at of those seen running for the first time. `crash` is the bootstrap's crash report
    (of whichever attempt it names). A multi-node attempt's `instances` entry is the node that stands
    for it (jobs.nodes.standing_for); `machines` (every instance by id) gives each node its own
    running_at, and, once the attempt ended, `lost` or its end. Returns whether anything changed (then
    the caller writes the record). Idempotent: run it every poll."""
    now = now or datetime.now(timezone.utc)
    changed = False
    for attempt in record.attempts:
        if attempt.instance_id is None or attempt.ended_at is not None:
            continue
        if attempt.nodes and machines is not None:
            changed |= _nodes_seen(attempt, machines, now)
        instance = instances.get(attempt.number)
        if attempt.running_at is None and instance is not None and instance.state == "running":
            seen_late = age_s(attempt.launched_at, now) > RUNNING_SEEN_WITHIN_S
            attempt.running_at = attempt.launched_at if seen_late else now.isoformat(timespec="seconds")
            changed = True
        beat = heartbeat if heartbeat and heartbeat.of_attempt(attempt.number) else None
        said = final if final and final.attempt == attempt.number else None
        reported = crash if crash and crash.attempt == attempt.number else None
        reason = _trainer_reason(said, beat) or (EndReason.CRASHED if reported else None)
        if instance is not None and instance.state in GONE:
            attempt.ended_at = _transition_time(instance) or now.isoformat(timespec="seconds")
            attempt.state_reason = instance.reason_code
            attempt.end_reason = attempt.end_reason or reason or _ec2_reason(instance.reason_code)
        elif instance is None and age_s(attempt.launched_at, now) > NOT_LISTED_GRACE_S:
            # EC2 forgets terminated instances after about an hour. Its last heartbeat is the last sign
            # of life we know; without one, its launch (billed the one-minute minimum), never "now":
            # a job nobody watched for a day must not be charged for that day.
            attempt.ended_at = (beat.updated_at if beat else None) or attempt.launched_at
            attempt.end_reason = attempt.end_reason or reason or EndReason.LOST
        elif reason and attempt.end_reason is None:
            attempt.end_reason = reason  # the machine still runs (EC2 takes it soon): ended_at follows
        else:
            continue
        if attempt.end_reason == EndReason.CRASHED and attempt.end_detail is None:
            attempt.end_detail = crashes.describe(reported, beat)
        if attempt.nodes and machines is not None:
            _nodes_ended(attempt, machines)
        if beat:  # the steps it trained: what an interruption costs in repeated work
            attempt.start_step = beat.resumed_from_step if beat.resumed_from_step is not None else attempt.start_step
            attempt.end_step = beat.step if beat.step is not None else attempt.end_step
        changed = True
    return changed


def _nodes_seen(attempt: Attempt, machines: dict[str, Instance], now: datetime) -> bool:
    """Each node's running_at, as Attempt.running_at (its own billing starts there)."""
    changed = False
    for node in attempt.nodes or []:
        machine = machines.get(node.instance_id or "")
        if node.running_at is None and machine is not None and machine.state == "running":
            seen_late = age_s(node.launched_at, now) > RUNNING_SEEN_WITHIN_S
            node.running_at = node.launched_at if seen_late else now.isoformat(timespec="seconds")
            changed = True
    return changed


def _nodes_ended(attempt: Attempt, machines: dict[str, Instance]) -> None:
    """The attempt ended: a node whose machine is gone (or forgotten) is lost, with EC2's reason and
    time; the others stop serving it at its end (a survivor kept for the next one goes on from there)."""
    for node in attempt.nodes or []:
        machine = machines.get(node.instance_id or "")
        if machine is None or machine.state in GONE:
            node.lost = True
            node.state_reason = machine.reason_code if machine else node.state_reason
            node.ended_at = node.ended_at or (_transition_time(machine) if machine else None) or attempt.ended_at
        else:
            node.ended_at = node.ended_at or attempt.ended_at


def _trainer_reason(final: Final | None, beat: Heartbeat | None) -> EndReason | None:
    if final and final.outcome in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.STOPPED):
        return EndReason(final.outcome)
    if beat and beat.in_phase(Phase.INTERRUPTED):
        return EndReason.INTERRUPTED
    return None


def _ec2_reason(code: str | None) -> EndReason:
    if code == SPOT_TERMINATION:
        return EndReason.INTERRUPTED
    if code == USER_SHUTDOWN:
        return EndReason.TERMINATED
    if code == SELF_SHUTDOWN:
        # Shut itself down with neither final.json nor a crash report: the bootstrap reports every end
        # it sees, so it was itself killed (or could not reach storage). Nothing says the job is at
        # fault: a crash, recovered within recovery.max_crashes.
        return EndReason.CRASHED
    failure = launch_failure(code)
    if failure == "client":
        return EndReason.FAILED  # e.g. Client.InternalError (a KMS key it may not use): not an interruption
    if failure == "server":
        return EndReason.NOT_STARTED  # e.g. Server.InsufficientInstanceCapacity: another pool, not counted
    return EndReason.LOST


def _transition_time(instance: Instance) -> str | None:
    match = _TRANSITION_TIME.search(instance.transition or "")
    if not match:
        return None
    return (
        datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
        .replace(tzinfo=timezone.utc)
        .isoformat(timespec="seconds")
    )
