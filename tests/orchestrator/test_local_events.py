"""The local cloud's part of the controller (orchestrator.local.eventbus, functions, the runner's
events) against a real moto server: EC2's event documents as AWS sends them, through moto's
EventBridge rules to SQS, to a handler called as Lambda calls it, with its partial batch response
honoured (deletions, redelivery, the dead-letter queue). The handler here is a recorder
(tests/orchestrator/recording_controller.py): these test the plumbing, not the controller."""

from __future__ import annotations

import json
import time

import boto3
import pytest

from orchestrator.local import eventbus, functions
from tests.orchestrator import recording_controller as recorder

WAIT_S = 30.0  # the longest a test waits on SQS's visibility timeout or a timer; never asserted on


@pytest.fixture
def bus(aws):
    recorder.BATCHES.clear()
    recorder.FAIL.clear()
    recorder.RAISE.clear()
    made = []

    def make(**settings):
        settings = {"visibility_s": 1, "max_receives": 2, **settings}
        built = eventbus.EventBus(
            boto3.client("events", endpoint_url=aws.moto_endpoint),
            boto3.client("sqs", endpoint_url=aws.moto_endpoint),
            boto3.client("sts", endpoint_url=aws.moto_endpoint),
            "us-east-1",
            recorder,
            **settings,
        ).deploy()
        runner = functions.FunctionRunner(
            built.sqs, built.queue_url, built.queue_arn, "us-east-1", built.account, recorder.handler
        )
        made.append(built)
        return built, runner

    return make


def records() -> list[dict]:
    return [r for batch in recorder.BATCHES for r in batch["event"]["Records"]]


def bodies() -> list[dict]:
    return [json.loads(r["body"]) for r in records()]


@pytest.mark.parametrize(
    "before, now, told",
    [
        (None, "pending", ["pending"]),
        (None, "running", ["pending", "running"]),
        ("pending", "running", ["running"]),
        ("running", "terminated", ["shutting-down", "terminated"]),  # moto terminates at once; EC2 passes through
        ("shutting-down", "terminated", ["terminated"]),
        ("pending", "terminated", ["shutting-down", "terminated"]),
        ("running", "stopped", ["stopping", "stopped"]),
        ("stopped", "running", ["pending", "running"]),
        ("running", "running", []),
        ("terminated", "terminated", []),
    ],
)
def test_each_state_ec2_passes_through_is_told_in_order(before, now, told):
    assert eventbus.state_path(before, now) == told


def test_ec2s_events_reach_the_handler_as_lambda_passes_an_sqs_batch(bus):
    events, runner = bus()
    events.state_change("i-0123456789abcdef0", "running")  # no rule selects it: the controller never sees it
    events.state_change("i-0123456789abcdef0", "terminated")
    events.interruption_warning("i-0fedcba9876543210")
    assert (events.published, events.suppressed) == (3, 0)
    assert runner.poll_once() == 2

    [batch] = recorder.BATCHES
    assert 0 < batch["remaining_ms"] <= functions.TIMEOUT_S * 1000
    arn = f"arn:aws:ec2:us-east-1:{events.account}:instance/"
    envelopes = sorted(bodies(), key=lambda b: b["detail-type"])
    for body in envelopes:  # EventBridge's envelope: every field AWS sends, and only those
        assert {k: type(v) for k, v in body.items()} == {
            "version": str,
            "id": str,
            "detail-type": str,
            "source": str,
            "account": str,
            "time": str,
            "region": str,
            "resources": list,
            "detail": dict,
        }
        assert (body["version"], body["source"], body["account"], body["region"]) == (
            "0",
            "aws.ec2",
            events.account,
            "us-east-1",
        )
        assert time.strptime(body["time"], "%Y-%m-%dT%H:%M:%SZ")
    assert [(b["detail-type"], b["resources"], b["detail"]) for b in envelopes] == [
        (
            "EC2 Instance State-change Notification",
            [arn + "i-0123456789abcdef0"],
            {"instance-id": "i-0123456789abcdef0", "state": "terminated"},
        ),
        (
            "EC2 Spot Instance Interruption Warning",
            [arn + "i-0fedcba9876543210"],
            {"instance-id": "i-0fedcba9876543210", "instance-action": "terminate"},
        ),
    ]
    for record in records():  # the SQS event Lambda passes
        assert set(record) == {
            "messageId",
            "receiptHandle",
            "body",
            "attributes",
            "messageAttributes",
            "md5OfBody",
            "eventSource",
            "eventSourceARN",
            "awsRegion",
        }
        assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == (
            "aws:sqs",
            events.queue_arn,
            "us-east-1",
        )
        assert record["attributes"]["ApproximateReceiveCount"] == "1" and "SentTimestamp" in record["attributes"]
    # Both succeeded: deleted, nothing comes again.
    assert runner.snapshot()["deleted"] == 2 and _queue_depth(events) == (0, 0)


def test_a_failed_item_comes_again_and_then_goes_to_the_dead_letter_queue(bus):
    events, runner = bus(visibility_s=1, max_receives=2)
    recorder.FAIL.add("i-bad")
    events.state_change("i-bad", "terminated")
    events.state_change("i-good", "terminated")
    runner.poll_once()
    assert _queue_depth(events) == (0, 1)  # the good one deleted; the bad one invisible until it comes again
    assert _wait(lambda: runner.poll_once(1)) == 1  # delivered again after the visibility timeout
    assert [json.loads(r["body"])["detail"]["instance-id"] for r in recorder.BATCHES[-1]["event"]["Records"]] == [
        "i-bad"
    ]
    assert recorder.BATCHES[-1]["event"]["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    _wait(lambda: runner.poll_once(1) == 0 and events.dead_letters())  # SQS moves it aside at the next receive
    assert events.dead_letters() == 1 and _queue_depth(events) == (0, 0)
    assert runner.snapshot() | {"last_invocation": None} == {
        "handler": functions.DEFAULT_HANDLER,
        "invocations": 2,
        "delivered": 3,
        "deleted": 1,
        "failed_items": 2,
        "handler_errors": 0,
        "last_error": None,
        "last_invocation": None,
    }


def test_a_handler_that_raises_fails_its_whole_batch(bus):
    events, runner = bus(visibility_s=1, max_receives=5)
    recorder.RAISE.append(RuntimeError("S3 is down"))
    events.state_change("i-1", "terminated")
    events.state_change("i-2", "stopped")
    runner.poll_once()
    assert runner.snapshot()["handler_errors"] == 1 and runner.snapshot()["last_error"] == "RuntimeError: S3 is down"
    assert _queue_depth(events) == (0, 2)  # nothing deleted
    _wait(lambda: runner.poll_once(1) and len(records()) >= 4)
    assert sorted(json.loads(r["body"])["detail"]["instance-id"] for r in records()[2:]) == ["i-1", "i-2"]
    assert _queue_depth(events) == (0, 0)


def test_a_reply_that_is_no_partial_batch_response_fails_the_batch():
    batch = [{"messageId": "m1"}, {"messageId": "m2"}]
    assert functions.failed_ids({"batchItemFailures": [{"itemIdentifier": "m2"}]}, batch) == {"m2"}
    assert functions.failed_ids({"batchItemFailures": []}, batch) == set()
    assert functions.failed_ids(None, batch) == set()
    assert functions.failed_ids({"batchItemFailures": [{"itemIdentifier": "m3"}]}, batch) is None
    assert functions.failed_ids({"batchItemFailures": [{"itemIdentifier": ""}]}, batch) is None
    assert functions.failed_ids("ok", batch) is None


def test_with_delivery_off_ec2s_events_are_lost_and_the_tick_still_comes(bus):
    events, runner = bus(deliver=False)
    events.state_change("i-1", "terminated")
    events.interruption_warning("i-1")
    tick = events.tick()
    runner.poll_once()
    assert bodies() == [tick]
    assert {k: v for k, v in tick.items() if k not in ("id", "time")} == {
        "version": "0",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": events.account,
        "region": "us-east-1",
        "resources": [f"arn:aws:events:us-east-1:{events.account}:rule/spotctl-schedule"],
        "detail": {},
    }
    assert (events.published, events.suppressed, events.ticks, events.last_tick) == (0, 2, 1, tick["time"])


def test_the_rules_are_the_patterns_given_and_feed_the_queue(bus):
    events, _ = bus()
    client = events.events
    rules = {r["Name"]: r for r in client.list_rules()["Rules"]}
    assert {name: json.loads(rules[f"spotctl-{name}"]["EventPattern"]) for name in recorder.EVENT_PATTERNS} == (
        recorder.EVENT_PATTERNS
    )
    assert rules["spotctl-schedule"]["ScheduleExpression"] == "rate(1 minute)"
    for name in recorder.EVENT_PATTERNS:
        assert [t["Arn"] for t in client.list_targets_by_rule(Rule=f"spotctl-{name}")["Targets"]] == [events.queue_arn]
    redrive = json.loads(
        events.sqs.get_queue_attributes(QueueUrl=events.queue_url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert redrive["maxReceiveCount"] == 2 and redrive["deadLetterTargetArn"].endswith(":spotctl-controller-dlq")


class Told:
    """What the runner told its bus, in order."""

    def __init__(self):
        self.told: list[tuple] = []

    def state_change(self, instance_id, state):
        self.told.append((instance_id, state))

    def interruption_warning(self, instance_id, action="terminate"):
        self.told.append((instance_id, f"warning: {action}"))


def test_the_runner_tells_every_state_change_and_the_notice_whoever_caused_it(aws, tmp_path):
    from orchestrator.aws.instances import TAG_ATTEMPT, TAG_JOB
    from orchestrator.local.runner import InstanceRunner

    ec2 = boto3.client("ec2")
    told = Told()
    runner = InstanceRunner(ec2, "us-east-1", tmp_path, {}, events=told)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

    def launch(job: str, script: str) -> str:
        tags = [{"Key": TAG_JOB, "Value": job}, {"Key": TAG_ATTEMPT, "Value": "1"}]
        [instance] = ec2.run_instances(
            ImageId=image,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            UserData=script,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"]
        aws.wait_consistent()  # EC2 knows it (the strict proxy's eventual consistency)
        _wait(lambda: runner.poll() or instance["InstanceId"] in runner.machines)
        return instance["InstanceId"]

    try:
        # It shuts itself down at the end of its job.
        done = launch("done", "#!/bin/bash\nsleep 0.5\n")
        runner.machines[done].process.wait(WAIT_S)
        runner.poll()
        # Terminated through EC2's API (spotctl stop, the console).
        stopped = launch("stopped", "#!/bin/bash\nsleep 60\n")
        ec2.terminate_instances(InstanceIds=[stopped])
        _wait(lambda: runner.poll() or stopped not in runner.machines)
        # Interrupted: the warning with the notice, then the end.
        taken = launch("taken", "#!/bin/bash\nsleep 60\n")
        runner.interrupt(taken, 0.1)
        _wait(lambda: (taken, "terminated") in told.told)
        runner.poll()
    finally:
        runner.stop()

    def of(instance_id):
        return [state for i, state in told.told if i == instance_id]

    assert of(done) == ["pending", "running", "shutting-down", "terminated"]
    assert of(stopped) == ["pending", "running", "shutting-down", "terminated"]
    assert of(taken) == ["pending", "running", "warning: terminate", "shutting-down", "terminated"]


def _queue_depth(events) -> tuple[int, int]:
    """(visible, in flight) messages of the controller's queue."""
    attributes = events.sqs.get_queue_attributes(
        QueueUrl=events.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _wait(until):
    """Until `until()` is truthy (its value), for at most WAIT_S: waits on a state, not a time."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = until()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not reached within {WAIT_S}s: {until}")


def test_only_the_local_cloud_may_publish_ec2s_events_a_client_is_refused_as_on_aws(bus):
    """EventBridge reserves `aws.*` sources for AWS's services: a client's PutEvents entry with one fails
    alone (NotAuthorizedForSourceException), so nobody forges an interruption to the controller; the local
    cloud's publisher, which plays EC2, reaches moto past the strict proxy and still delivers."""
    built, runner = bus()
    client = boto3.client("events")  # through the strict proxy, as every client
    forged = {"Source": "aws.ec2", "DetailType": eventbus.SPOT_WARNING, "Detail": json.dumps({"instance-id": "i-1"})}
    own = {"Source": "com.example.app", "DetailType": "Order placed", "Detail": "{}"}
    answer = client.put_events(Entries=[forged, own, {**forged, "Source": "aws.events"}])
    refused = {"ErrorCode": "NotAuthorizedForSourceException", "ErrorMessage": "Not authorized for the source."}
    assert answer["FailedEntryCount"] == 2
    assert [answer["Entries"][0], answer["Entries"][2]] == [refused, refused]
    assert "EventId" in answer["Entries"][1] and "ErrorCode" not in answer["Entries"][1]
    assert client.put_events(Entries=[own])["FailedEntryCount"] == 0

    built.interruption_warning("i-0123456789abcdef0")  # the local cloud, as EC2
    assert built.snapshot()["published"] == 1 and built.snapshot()["refused"] == 0
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not records():
        runner.poll_once(1)
    assert [b["detail"] for b in bodies()] == [{"instance-id": "i-0123456789abcdef0", "instance-action": "terminate"}]
