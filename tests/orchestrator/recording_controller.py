"""A recording stand-in for the controller's two modules, for testing the local cloud's plumbing
(orchestrator.local.eventbus, functions) before orchestrator.controller exists: rule patterns as
AWS documents them, and a handler that records each batch it is given and fails what it is told to.
It decides nothing; the controller's own tests cover the controller."""

from __future__ import annotations

import json
import os

EVENT_PATTERNS = {
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state-change": {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["shutting-down", "terminated", "stopped"]},
    },
}
SCHEDULE_EXPRESSION = "rate(1 minute)"
TICK_DETAIL_TYPE = "Scheduled Event"

BATCHES: list[dict] = []  # every event the handler was given, in order
FAIL: set[str] = set()  # instance ids whose messages the handler reports as failed
RAISE: list[Exception] = []  # an exception to raise on the next call


def handler(event: dict, context) -> dict:
    BATCHES.append({"event": event, "remaining_ms": context.get_remaining_time_in_millis()})
    if os.environ.get("RECORDING_FILE"):  # the daemon's process: the test reads what came
        with open(os.environ["RECORDING_FILE"], "a") as out:
            out.write(json.dumps({"event": event, "storage": os.environ.get("SPOTCTL_STORAGE")}) + "\n")
    if RAISE:
        raise RAISE.pop()
    failed = [r["messageId"] for r in event["Records"] if json.loads(r["body"])["detail"].get("instance-id") in FAIL]
    return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}
