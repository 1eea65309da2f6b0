"""EC2's events the controller reacts to, as EventBridge delivers them, and the rules that select them.

The documents are AWS's (EC2 User Guide: spot-instance-termination-notices, rebalance-recommendations,
monitoring-instance-state-changes), e.g.

    {"version": "0", "id": "...", "detail-type": "EC2 Spot Instance Interruption Warning",
     "source": "aws.ec2", "account": "123456789012", "time": "2026-11-25T10:00:00Z",
     "region": "us-east-1", "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-..."],
     "detail": {"instance-id": "i-...", "instance-action": "terminate"}}

A rebalance recommendation's detail is {"instance-id"}; a state change's {"instance-id", "state"}.
Delivery is best effort (an event may be late, twice, or never): an event only says "look at this
instance's job now", never what happened to it; the job's step reads EC2 and S3 for that.

EVENT_PATTERNS is the one definition of the EventBridge rules: the CloudFormation template and the
local cloud's rules are built from it (a test keeps the template equal to it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

SOURCE = "aws.ec2"
INTERRUPTION_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE_RECOMMENDATION = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE = "EC2 Instance State-change Notification"
# The states that end (or pause) an instance's work: pending and running say nothing to act on.
ENDING_STATES = ("shutting-down", "terminated", "stopped")

# After a spot warning the trainer checkpoints and reports within seconds, long before EC2 takes the
# machine (two minutes) and the tick (a minute): the controller sends the warning back to its own
# queue, delayed (SQS DelaySeconds), and looks again, until the attempt's end is recorded or the notice's
# two minutes (and a margin) have passed. Each look is a short invocation of its own: nothing sleeps.
LOOK_AGAIN_S = 10  # the delay of each look
MAX_LOOKS = 15  # 150 s of looks: past the notice's two minutes; then EC2's state change and the tick
LOOK_KEY = "spotctl-look"  # the warning's body as re-queued: EC2's document plus this count

SCHEDULE_EXPRESSION = "rate(1 minute)"
TICK_DETAIL_TYPE = "Scheduled Event"  # what an EventBridge schedule's events carry (source aws.events)

EVENT_PATTERNS: dict[str, dict[str, Any]] = {
    "spot-interruption-warning": {"source": [SOURCE], "detail-type": [INTERRUPTION_WARNING]},
    "rebalance-recommendation": {"source": [SOURCE], "detail-type": [REBALANCE_RECOMMENDATION]},
    "instance-state-change": {
        "source": [SOURCE],
        "detail-type": [STATE_CHANGE],
        "detail": {"state": list(ENDING_STATES)},
    },
}


class Kind(str, enum.Enum):
    INTERRUPTION = "interruption"  # the two-minute notice: the trainer checkpoints, EC2 takes it next
    REBALANCE = "rebalance"  # elevated risk of interruption: nothing to do yet, a look costs little
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class InstanceEvent:
    """One EC2 event about one instance: which, what, where."""

    instance_id: str
    kind: Kind
    region: str | None
    time: str | None
    look: int = 0  # how many times the controller re-queued this warning to look again (LOOK_KEY)


class NotAnInstanceEvent(ValueError):
    """An event that is none of the EC2 events the controller's rules select (or is malformed)."""


def is_tick(event: dict[str, Any]) -> bool:
    return event.get("detail-type") == TICK_DETAIL_TYPE


def parse(event: dict[str, Any]) -> InstanceEvent:
    """The instance and what happened to it; NotAnInstanceEvent naming what does not fit."""
    if not isinstance(event, dict):
        raise NotAnInstanceEvent(f"an event is a JSON object, not {type(event).__name__}")
    if event.get("source") != SOURCE:
        raise NotAnInstanceEvent(f"source {event.get('source')!r} is not {SOURCE}")
    detail_type, detail = event.get("detail-type"), event.get("detail")
    if not isinstance(detail, dict):
        raise NotAnInstanceEvent(f"{detail_type!r}: no detail object")
    instance_id = detail.get("instance-id")
    if not isinstance(instance_id, str) or not instance_id.startswith("i-"):
        raise NotAnInstanceEvent(f"{detail_type!r}: detail.instance-id {instance_id!r} is no instance id")
    if detail_type == INTERRUPTION_WARNING:
        kind = Kind.INTERRUPTION
    elif detail_type == REBALANCE_RECOMMENDATION:
        kind = Kind.REBALANCE
    elif detail_type == STATE_CHANGE:
        state = detail.get("state")
        if state not in ENDING_STATES:
            raise NotAnInstanceEvent(f"{detail_type!r}: state {state!r} is not one of {', '.join(ENDING_STATES)}")
        kind = Kind(state)
    else:
        raise NotAnInstanceEvent(f"detail-type {detail_type!r} is not an EC2 event the controller selects")
    region, time, look = event.get("region"), event.get("time"), event.get(LOOK_KEY)
    return InstanceEvent(
        instance_id,
        kind,
        region if isinstance(region, str) else None,
        time if isinstance(time, str) else None,
        look if isinstance(look, int) and not isinstance(look, bool) and look > 0 else 0,
    )


def look_again(event: dict[str, Any], look: int) -> dict[str, Any]:
    """The warning's body as the controller re-queues it for its `look`-th look."""
    return {**event, LOOK_KEY: look}


def queue_of(arn: str) -> tuple[str, str, str] | None:
    """(region, account, queue name) of an SQS queue's ARN (a record's eventSourceARN); None if it is none."""
    parts = arn.split(":") if isinstance(arn, str) else []
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sqs" or not all(parts[3:]):
        return None
    return parts[3], parts[4], parts[5]


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """Whether EventBridge's rule `pattern` selects `event` (the subset of pattern syntax EVENT_PATTERNS
    uses: every named field's value is one of the listed ones, nested objects likewise)."""
    for key, wanted in pattern.items():
        value = event.get(key) if isinstance(event, dict) else None
        if isinstance(wanted, dict):
            if not matches(wanted, value):
                return False
        elif value not in wanted:
            return False
    return True
