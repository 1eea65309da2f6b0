"""The EC2 events the controller acts on, as AWS documents them (EC2 User Guide), and the rules that
select them (orchestrator.controller.events)."""

from __future__ import annotations

import copy

import pytest

from orchestrator.controller.events import (
    EVENT_PATTERNS,
    SCHEDULE_EXPRESSION,
    TICK_DETAIL_TYPE,
    InstanceEvent,
    Kind,
    NotAnInstanceEvent,
    is_tick,
    matches,
    parse,
)

ARN = "arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0"


def aws_event(detail_type: str, detail: dict) -> dict:
    """An event as EventBridge delivers it (the documented envelope)."""
    return {
        "version": "0",
        "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": detail_type,
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2026-11-25T10:00:00Z",
        "region": "us-east-2",
        "resources": [ARN],
        "detail": detail,
    }


INTERRUPTION = aws_event(
    "EC2 Spot Instance Interruption Warning",
    {"instance-id": "i-1234567890abcdef0", "instance-action": "terminate"},
)
REBALANCE = aws_event("EC2 Instance Rebalance Recommendation", {"instance-id": "i-1234567890abcdef0"})


def state_change(state: str) -> dict:
    return aws_event("EC2 Instance State-change Notification", {"instance-id": "i-1234567890abcdef0", "state": state})


TICK = {
    "version": "0",
    "id": "89d1a02d-5ec7-412e-82f5-13505f849b41",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-25T10:01:00Z",
    "region": "us-east-2",
    "resources": ["arn:aws:events:us-east-2:123456789012:rule/spotctl-controller-tick"],
    "detail": {},
}


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (INTERRUPTION, Kind.INTERRUPTION),
        (REBALANCE, Kind.REBALANCE),
        (state_change("shutting-down"), Kind.SHUTTING_DOWN),
        (state_change("terminated"), Kind.TERMINATED),
        (state_change("stopped"), Kind.STOPPED),
    ],
)
def test_each_documented_event_names_its_instance_and_what_happened(event, kind):
    assert parse(event) == InstanceEvent("i-1234567890abcdef0", kind, "us-east-2", "2026-11-25T10:00:00Z")
    assert [name for name, pattern in EVENT_PATTERNS.items() if matches(pattern, event)] == [
        {
            Kind.INTERRUPTION: "spot-interruption-warning",
            Kind.REBALANCE: "rebalance-recommendation",
        }.get(kind, "instance-state-change")
    ]
    assert not is_tick(event)


@pytest.mark.parametrize("state", ["pending", "running", "stopping"])
def test_state_changes_that_end_nothing_are_neither_selected_nor_parsed(state):
    event = state_change(state)
    assert not any(matches(pattern, event) for pattern in EVENT_PATTERNS.values())
    with pytest.raises(NotAnInstanceEvent, match=f"state '{state}' is not one of shutting-down, terminated, stopped"):
        parse(event)


def test_the_patterns_are_the_rules_the_issue_names():
    assert EVENT_PATTERNS == {
        "spot-interruption-warning": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
        "rebalance-recommendation": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
        "instance-state-change": {
            "source": ["aws.ec2"],
            "detail-type": ["EC2 Instance State-change Notification"],
            "detail": {"state": ["shutting-down", "terminated", "stopped"]},
        },
    }
    assert (SCHEDULE_EXPRESSION, TICK_DETAIL_TYPE) == ("rate(1 minute)", "Scheduled Event")


def test_the_schedule_tick_is_a_tick_and_no_instance_event():
    assert is_tick(TICK)
    assert not any(matches(pattern, TICK) for pattern in EVENT_PATTERNS.values())
    with pytest.raises(NotAnInstanceEvent, match="source 'aws.events' is not aws.ec2"):
        parse(TICK)


def _without(event: dict, *path: str) -> dict:
    changed = copy.deepcopy(event)
    target = changed
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return changed


@pytest.mark.parametrize(
    ("event", "said"),
    [
        (_without(INTERRUPTION, "detail"), "no detail object"),
        (_without(INTERRUPTION, "detail", "instance-id"), "detail.instance-id None is no instance id"),
        ({**INTERRUPTION, "detail": {"instance-id": "vol-1"}}, "detail.instance-id 'vol-1' is no instance id"),
        ({**INTERRUPTION, "detail-type": "EC2 Instance Launch Successful"}, "is not an EC2 event"),
        ({**INTERRUPTION, "source": "my.app"}, "source 'my.app' is not aws.ec2"),
        (["not", "an", "object"], "an event is a JSON object, not list"),
    ],
)
def test_what_does_not_fit_is_said(event, said):
    with pytest.raises(NotAnInstanceEvent, match=said):
        parse(event)


def test_an_event_without_region_or_time_still_names_its_instance():
    event = _without(_without(INTERRUPTION, "region"), "time")
    assert parse(event) == InstanceEvent("i-1234567890abcdef0", Kind.INTERRUPTION, None, None)


def test_a_warning_sent_back_to_look_again_carries_its_count_and_stays_ec2s_document():
    from orchestrator.controller.events import LOOK_KEY, look_again, queue_of

    again = look_again(INTERRUPTION, 3)
    assert {k: v for k, v in again.items() if k != LOOK_KEY} == INTERRUPTION and parse(again).look == 3
    assert parse(INTERRUPTION).look == 0
    for odd in ("3", True, -1, None):  # what no controller wrote: a first look
        assert parse({**INTERRUPTION, LOOK_KEY: odd}).look == 0
    assert queue_of("arn:aws:sqs:eu-west-1:123456789012:spotctl-ControllerQueue-X") == (
        "eu-west-1",
        "123456789012",
        "spotctl-ControllerQueue-X",
    )
    for odd in ("", "arn:aws:sns:eu-west-1:123456789012:topic", "arn:aws:sqs:eu-west-1::q", None):
        assert queue_of(odd) is None
