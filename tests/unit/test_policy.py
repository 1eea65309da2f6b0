"""The recovery policy as a table: every state a job can be in, crossed with what matters there (limits,
budget, time), gives one action. jobs.policy.decide and failover_order are pure: no moto, no clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from orchestrator.aws.offers import InstanceType, Offer
from orchestrator.jobs.policy import Action, decide, failover_order
from orchestrator.jobs.state import derive_state
from tests.unit.jobs import NOW, SPEC, attempt, beat, cost, final, instance, record, view
from trainer.job.problems import Problem

SPOT, SELF, USER = "Server.SpotInstanceTermination", "Client.InstanceInitiatedShutdown", "Client.UserInitiatedShutdown"
GONE_BY_SPOT = instance("terminated", SPOT)
OOM = "killed by SIGKILL (exit 137): probably out of memory (host memory 15.2 of 15.5 GiB at the last heartbeat)"
SEGV = "killed by SIGSEGV (exit 139): a native crash (CUDA, the driver or a data-loading library; the bootstrap log has its stack)"

# (case, view, cost, expected state, action, outcome, reason contains); one row a line, as a table reads
# fmt: off
TABLE = [
    ("no record", view(None), None, "unknown", Action.DONE, None, "no record"),
    ("record.json unreadable", replace(view(None), unreadable=Problem("s3://b/p/jobs/j/record.json", "a JSON list, not an object")), None, "unreadable",
     Action.WAIT, None, "s3://b/p/jobs/j/record.json: a JSON list, not an object"),
    # pending and launching
    ("pending: nothing started yet", view(record()), None, "pending", Action.START, None, "starting"),
    ("launching: a fresh claim, EC2 still answering", view(record(attempt(instance_id=None, requested=10))), None, "launching", Action.WAIT, None, ""),
    ("launching: a claim whose orchestrator died", view(record(attempt(instance_id=None, requested=400))), None, "launching", Action.START, None, "resuming"),
    ("launching: just started, EC2 not listing it yet", view(record(attempt(launched=30))), None, "launching", Action.WAIT, None, ""),
    ("launching: EC2 says pending", view(record(attempt()), instance("pending")), None, "launching", Action.WAIT, None, ""),
    # interrupted
    ("interrupted by EC2", view(record(attempt()), GONE_BY_SPOT), None, "interrupted", Action.START, None, "resuming from the latest checkpoint"),
    ("interrupted: the trainer checkpointed on the notice", view(record(attempt()), instance(), beat(phase="interrupted")), None, "interrupted", Action.START, None, "resuming"),
    ("interrupted: gone from EC2's view long after launch", view(record(attempt(launched=900))), None, "interrupted", Action.START, None, "resuming"),
    # settled first, as watch does: the attempt that just ended counts
    ("interrupted: the second of max_interruptions 2 is still recovered",
     view(record(attempt(1, end="interrupted", ended=600), attempt(2, end="lost", ended=60)), instance("terminated", SPOT, 2)),
     None, "interrupted", Action.START, None, "resuming"),
    ("interrupted: the third is past recovery.max_interruptions",
     view(record(attempt(1, end="interrupted"), attempt(2, end="terminated"), attempt(3, end="interrupted", ended=60)), instance("terminated", SPOT, 3)),
     None, "interrupted", Action.GIVE_UP, "failed", "interrupted 3 times; recovery.max_interruptions is 2"),
    ("interrupted: the budget is spent", view(record(attempt(), budget=5.0), GONE_BY_SPOT), cost(5.0), "interrupted", Action.GIVE_UP, "budget_exceeded",
     "cost $5.00 has reached the budget $5.00"),
    ("interrupted: budget left", view(record(attempt(), budget=5.0), GONE_BY_SPOT), cost(4.99), "interrupted", Action.START, None, "resuming"),
    # crashed: the trainer died without a final word (jobs.state.settle ends the attempt `crashed`)
    ("crashed: a SIGKILLed trainer's machine shut itself down; its crash report says how",
     view(record(attempt(end="crashed", ended=30, detail=OOM)), instance("terminated", SELF)), None, "interrupted", Action.START, None,
     "resuming from the latest checkpoint"),
    ("crashed: a silent self-shutdown (no final word, no crash report: the bootstrap died) is recovered too",
     view(record(attempt()), instance("terminated", SELF)), None, "interrupted", Action.START, None, "resuming"),
    ("crashed: the second of max_crashes 2 is still recovered",
     view(record(attempt(1, end="crashed"), attempt(2, end="crashed", ended=30)), instance("terminated", SELF, 2)), None, "interrupted", Action.START,
     None, "resuming"),
    ("crashed: the third is past recovery.max_crashes, and the reason says why and what to change",
     view(record(attempt(1, end="crashed"), attempt(2, end="crashed"), attempt(3, end="crashed", ended=30, detail=OOM)), instance("terminated", SELF, 3)),
     None, "interrupted", Action.GIVE_UP, "failed",
     f"the trainer crashed 3 times (last: {OOM}); recovery.max_crashes is 2: it ran out of memory: a smaller train.batch_size"),
    ("crashed: past max_crashes by a native crash, the fix is looked for in the log",
     view(record(attempt(1, end="crashed"), attempt(2, end="crashed"), attempt(3, end="crashed", ended=30, detail=SEGV)), instance("terminated", SELF, 3)),
     None, "interrupted", Action.GIVE_UP, "failed", "if it runs out of memory: a smaller train.batch_size (or fewer train.data.workers), or instance types "
     "with more memory in compute.instance_types; `spotctl logs JOB --bootstrap` shows how it died"),
    ("crashed: crashes do not use up max_interruptions",
     view(record(attempt(1, end="interrupted"), attempt(2, end="interrupted"), attempt(3, end="crashed", ended=30)), instance("terminated", SELF, 3)),
     None, "interrupted", Action.START, None, "resuming"),
    ("crashed: interruptions do not use up max_crashes",
     view(record(attempt(1, end="crashed"), attempt(2, end="crashed"), attempt(3, end="interrupted", ended=30)), instance("terminated", SPOT, 3)),
     None, "interrupted", Action.START, None, "resuming"),
    ("crashed: the budget still ends it", view(record(attempt(end="crashed"), budget=5.0), instance("terminated", SELF)), cost(5.0), "interrupted",
     Action.GIVE_UP, "budget_exceeded", "has reached the budget"),
    # failed
    ("failed: the trainer's error, a retry left", view(record(attempt(end="failed")), instance("terminated", SELF), None, final("failed")), None, "failed",
     Action.RETRY, None, "the trainer failed (retry 1 of 1)"),
    ("failed: retries used up", view(record(attempt(1, end="failed"), attempt(2, end="failed")), instance("terminated", SELF, 2), None, final("failed", 2)),
     None, "failed", Action.DONE, None, "failed"),
    ("failed: decided by the orchestrator", view(record(attempt(end="interrupted"), outcome="failed")), None, "failed", Action.DONE, None, "failed"),
    # running and exporting, with and without a budget
    ("running, no budget", view(record(attempt()), instance(), beat()), cost(1.0, 3.6), "running", Action.WAIT, None, ""),
    ("running, the budget far off", view(record(attempt(), budget=50.0), instance(), beat(last_checkpoint_age_s=100)), cost(4.9, 3.6), "running", Action.WAIT, None, ""),
    ("running, the next checkpoint would pass the budget", view(record(attempt(), budget=5.0), instance(), beat(last_checkpoint_age_s=100)), cost(4.9, 3.6),
     "running", Action.STOP, "budget_exceeded", "cost $4.90 + $0.195 to the next checkpoint would pass the budget $5.00"),
    ("running, a checkpoint is due within a poll: the poll is the horizon", view(record(attempt(), budget=5.0), instance(), beat(last_checkpoint_age_s=290)),
     cost(4.9, 3.6), "running", Action.WAIT, None, ""),
    ("running, no price known now", view(record(attempt(), budget=5.0), instance(), beat()), cost(4.99, None), "running", Action.WAIT, None, ""),
    ("exporting past the budget", view(record(attempt(), budget=5.0), instance(), beat(phase="exporting")), cost(5.5, 3.6), "exporting", Action.STOP,
     "budget_exceeded", "would pass the budget"),
    # stopping
    ("stopping: waiting for the final checkpoint", view(record(attempt(), stop_asked=10), instance(), beat()), None, "stopping", Action.WAIT, None,
     "waiting for the final checkpoint"),
    ("stopping: the trainer stopped", view(record(attempt(), stop_asked=10), instance(), beat(), final("stopped")), None, "stopping", Action.TERMINATE, None,
     "the trainer stopped"),
    ("stopping: no answer within the grace", view(record(attempt(), stop_asked=200), instance(), beat()), None, "stopping", Action.TERMINATE, None, "no stop after 200s"),
    ("stopping at the budget, machine still up", view(record(attempt(), stop_asked=10, outcome="budget_exceeded"), instance()), None, "stopping", Action.WAIT, None, ""),
    # terminal
    ("succeeded", view(record(attempt(end="succeeded")), instance("terminated", SELF), None, final("succeeded")), None, "succeeded", Action.DONE, None, "succeeded"),
    ("succeeded even though a stop came after", view(record(attempt(), stop_asked=10), instance(), None, final("succeeded")), None, "succeeded", Action.DONE, None, ""),
    ("cancelled by spotctl stop", view(record(attempt(end="stopped"), cancelled=True)), None, "cancelled", Action.DONE, None, "cancelled"),
    ("cancelled: the stop took the machine", view(record(attempt(), stop_asked=10), GONE_BY_SPOT), None, "cancelled", Action.DONE, None, "cancelled"),
    ("budget_exceeded, the machine gone", view(record(attempt(end="stopped"), stop_asked=60, outcome="budget_exceeded"), instance("terminated", USER)), None,
     "budget_exceeded", Action.DONE, None, "budget_exceeded"),
    ("no_capacity", view(record(outcome="no_capacity")), None, "no_capacity", Action.DONE, None, "no_capacity"),
]
# fmt: on


@pytest.mark.parametrize(
    ("case", "job", "spent", "state", "action", "outcome", "reason"), TABLE, ids=[row[0] for row in TABLE]
)
def test_decide(case, job, spent, state, action, outcome, reason):
    if job.unreadable is not None:
        assert job.state == state
    if job.record is not None:
        assert derive_state(job.record, job.final, job.heartbeat, job.instance, NOW) == state
    decision = decide(job, SPEC, spent, poll_s=10.0, now=NOW)
    assert (decision.action, decision.outcome) == (action, outcome)
    assert reason in decision.reason


def test_every_job_state_has_a_row():
    from trainer.job.documents import JobState

    assert {row[3] for row in TABLE} == {state.value for state in JobState}


# ------------------------------------------------------------------------------------------ failover
def offer(name: str, zone: str, price: float) -> Offer:
    return Offer(InstanceType(name, 1, "A10G", 24.0, 4, 16.0), zone, price, 1.0, "fixed")


OFFERS = [
    offer("g4dn.xlarge", "us-east-1a", 0.21),
    offer("g5.xlarge", "us-east-1b", 0.38),
    offer("g6.xlarge", "us-east-1a", 0.33),
]


# fmt: off
@pytest.mark.parametrize(
    ("attempts", "avoid", "expected"),
    [
        ([], {}, ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]),
        ([attempt(pool=("g4dn.xlarge", "us-east-1a"), end="interrupted", ended=600)], {}, ["g5.xlarge", "g6.xlarge", "g4dn.xlarge"]),
        ([attempt(pool=("g4dn.xlarge", "us-east-1a"), end="lost", ended=600)], {}, ["g5.xlarge", "g6.xlarge", "g4dn.xlarge"]),
        ([attempt(pool=("g4dn.xlarge", "us-east-1a"), end="interrupted", ended=4000)], {}, ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]),  # over an hour ago
        ([attempt(pool=("g4dn.xlarge", "us-east-1a"), end="failed", ended=600)], {}, ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]),  # not the pool's fault
        ([], {("g5.xlarge", "us-east-1b"): NOW - timedelta(minutes=5)}, ["g4dn.xlarge", "g6.xlarge", "g5.xlarge"]),  # seen interrupted elsewhere
        ([], {("g5.xlarge", "us-east-1b"): NOW - timedelta(hours=2)}, ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]),
        ([attempt(1, pool=("g4dn.xlarge", "us-east-1a"), end="interrupted", ended=900), attempt(2, pool=("g6.xlarge", "us-east-1a"), end="interrupted", ended=60)],
         {}, ["g5.xlarge", "g4dn.xlarge", "g6.xlarge"]),  # all avoided but one: the avoided keep their rank order
    ],
)
# fmt: on
def test_failover_order(attempts, avoid, expected):
    assert [o.instance.name for o in failover_order(OFFERS, record(*attempts), avoid, NOW)] == expected


# ------------------------------------------------------------------------------ budget look-ahead
STEPS_SPEC = SPEC.model_copy(
    update={
        "train": SPEC.train.model_copy(
            update={"checkpoint": SPEC.train.checkpoint.model_copy(update={"every_seconds": 600, "every_steps": 10})}
        )
    }
)


@pytest.mark.parametrize(
    "heartbeat, action",
    [
        # 0.5 s a step (32 images at 64/s): step 10 comes in 4.5 s, long before every_seconds' 600 s
        (beat(step=1, last_checkpoint_age_s=5, images_per_sec=64.0, batch_size=32), Action.WAIT),
        # 60 s a step: the 600 s save comes first (595 s away at $0.25/h: $0.041 more)
        (beat(step=1, last_checkpoint_age_s=5, images_per_sec=32 / 60, batch_size=32), Action.STOP),
        # the pace not measured yet: every_seconds is all that is known
        (beat(step=1, last_checkpoint_age_s=5), Action.STOP),
    ],
)
def test_the_budget_look_ahead_takes_the_sooner_of_every_seconds_and_every_steps(heartbeat, action):
    """Bug: `resume --budget 0.02` of a job saving every 10 steps trained one step and stopped again,
    the look-ahead pricing 600 s (every_seconds) to a checkpoint 10 steps (seconds) away."""
    job = view(record(attempt(), budget=0.02), instance(), heartbeat)
    assert decide(job, STEPS_SPEC, cost(0.015, 0.25), poll_s=10.0, now=NOW).action is action
