"""The serverless controller against the moto server: its Lambda handler called in-process with SQS
batches of EC2's documented events (and the schedule's tick), as the queue would deliver them."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone

import boto3
import botocore.exceptions
import pytest

from orchestrator.aws.prices import FixedPrices
from orchestrator.controller import handler as controller
from orchestrator.jobs.caretaker import DEPLOY_HINT, caretaker, controller_tick
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.step import StepMemory
from tests.cloud import BUCKET, EXAMPLE, MARKET, ON_DEMAND, STORAGE, launched_id, settled_ec2
from tests.orchestrator.test_recovery import beat, instances, launch, live, record_of
from tests.unit.test_controller_events import TICK
from trainer.job import layout


def ec2_event(detail_type: str, instance_id: str, **detail) -> dict:
    return {
        "version": "0",
        "id": f"event-{instance_id}-{detail_type}",
        "detail-type": detail_type,
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2026-11-25T10:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, **detail},
    }


def terminated(instance_id: str) -> dict:
    return ec2_event("EC2 Instance State-change Notification", instance_id, state="terminated")


def notice(instance_id: str) -> dict:
    return ec2_event("EC2 Spot Instance Interruption Warning", instance_id, **{"instance-action": "terminate"})


def sqs(*bodies) -> dict:
    """An SQS batch as Lambda's event source mapping hands it over."""
    return {
        "Records": [
            {
                "messageId": f"m{n}",
                "receiptHandle": f"handle-{n}",
                "body": body if isinstance(body, str) else json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1"},
                "eventSource": "aws:sqs",
                "awsRegion": "us-east-1",
            }
            for n, body in enumerate(bodies)
        ]
    }


@pytest.fixture
def deployed(account, monkeypatch):
    """The controller's environment (as the stack sets it) and a fresh set of clients."""
    monkeypatch.setenv("SPOTCTL_STORAGE", STORAGE)
    monkeypatch.setattr(controller, "prices_for", lambda cloud: FixedPrices(MARKET, ON_DEMAND))
    monkeypatch.setattr(controller, "_clouds", {})
    return controller.handler


def refuse_on(region: str, operation: str, code: str, times: int = 1_000) -> list:
    """EC2 answering `operation` with error `code` the next `times` calls, on the controller's client."""
    refused = []
    client = controller.cloud_for(region).client("ec2", retries="once" if operation == "RunInstances" else "standard")

    def before(params, **_):
        if len(refused) < times:
            refused.append(params)
            raise botocore.exceptions.ClientError({"Error": {"Code": code, "Message": f"{code} (test)"}}, operation)

    client.meta.events.register(f"before-parameter-build.ec2.{operation}", before)
    return refused


def test_an_ec2_event_recovers_its_job_and_others_are_ignored(deployed, spotctl, account):
    job_id = launch(spotctl)
    first = live(job_id)[0]["InstanceId"]
    stranger = boto3.client("ec2").run_instances(ImageId=account, MinCount=1, MaxCount=1)["Instances"][0]
    settled_ec2()
    beat(job_id, 1, phase="interrupted", step=120, resumed_from_step=0)  # the trainer checkpointed on the notice
    batch = sqs(
        notice(first),
        notice(stranger["InstanceId"]),  # not spotctl's: ignored
        notice("i-0000000000000dead"),  # EC2 no longer knows it: ignored
        "not json",
        {"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "detail": {}},
    )
    assert deployed(batch, None) == {"batchItemFailures": []}
    assert [i["attempt"] for i in live(job_id)] == [1, 2]  # attempt 1's machine dies at the end of its notice
    assert record_of(job_id)["attempts"][0]["end_reason"] == "interrupted"

    # EC2 takes the machine two minutes later: its end is recorded, nothing more is started.
    account_aws = boto3.client("ec2")
    account_aws.terminate_instances(InstanceIds=[first])
    assert deployed(sqs(terminated(first)), None) == {"batchItemFailures": []}
    assert record_of(job_id)["attempts"][0]["ended_at"] is not None
    assert [i["attempt"] for i in instances(job_id)] == [1, 2]


def test_a_warning_is_looked_at_again_shortly_until_the_attempts_end_is_recorded(deployed, spotctl, aws):
    """No sleep in the handler: the warning goes back to its own queue, delayed, and the next look
    starts the next attempt as soon as the trainer reports its checkpoint, not at the next tick."""
    from orchestrator.controller import events

    queue = boto3.client("sqs")
    url = queue.create_queue(QueueName="spotctl-ControllerQueue-X")["QueueUrl"]
    arn = queue.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    job_id = launch(spotctl)
    first = live(job_id)[0]["InstanceId"]
    settled_ec2()
    batch = sqs(notice(first))
    batch["Records"][0]["eventSourceARN"] = arn

    assert deployed(batch, None) == {"batchItemFailures": []}  # the trainer has not checkpointed yet: nothing to do
    assert [i["attempt"] for i in live(job_id)] == [1]
    assert queue.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages") is None  # delayed
    attributes = queue.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "1"
    [again] = queue.receive_message(QueueUrl=url, WaitTimeSeconds=events.LOOK_AGAIN_S + 2)["Messages"]
    body = json.loads(again["Body"])
    assert body == {**notice(first), "spotctl-look": 1}  # EC2's document, and the count of looks

    beat(job_id, 1, phase="interrupted", step=120, resumed_from_step=0, last_checkpoint_step=120)
    batch = sqs(body)
    batch["Records"][0]["eventSourceARN"] = arn
    assert deployed(batch, None) == {"batchItemFailures": []}
    assert [i["attempt"] for i in live(job_id)] == [1, 2]  # the look found the checkpoint: attempt 2 started
    assert record_of(job_id)["attempts"][0]["end_reason"] == "interrupted"
    attributes = queue.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "0"  # its end is recorded: no more looks

    second = next(i["InstanceId"] for i in live(job_id) if i["attempt"] == 2)
    settled_ec2()
    last = sqs({**notice(second), "spotctl-look": events.MAX_LOOKS})  # the notice's time is over: EC2's events follow
    last["Records"][0]["eventSourceARN"] = arn
    assert deployed(last, None) == {"batchItemFailures": []}
    attributes = queue.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "0"


def test_the_tick_recovers_a_job_whose_events_were_lost_and_says_so(deployed, spotctl, aws):
    job_id = launch(spotctl)
    aws.interrupt(live(job_id)[0]["InstanceId"])  # and no event reaches the controller
    store = JobStore(STORAGE)
    assert caretaker(store, job_id).by == "nobody"

    assert deployed(sqs(TICK), None) == {"batchItemFailures": []}
    assert [i["attempt"] for i in live(job_id)] == [2]
    tick = controller_tick(store)
    assert tick.jobs_seen == [job_id] and tick.errors == [] and tick.version
    said = [note.message for note in tick.actions]
    assert said[0] == "attempt 1 on g4dn.xlarge us-east-1a ended: interrupted (Server.SpotInstanceTermination)"
    assert said[1].startswith("resuming from the latest checkpoint: attempt 2 on g4dn.xlarge us-east-1b")

    care = caretaker(store, job_id)
    assert care.by == "controller" and care.detail.startswith("the controller (last tick ")
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
    assert code == 0 and json.loads(out)["care"]["by"] == "controller"
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE)
    assert "looked after by: the controller (last tick " in out

    assert deployed(sqs(TICK), None) == {"batchItemFailures": []}  # nothing new: nothing done, nothing told
    assert controller_tick(store).actions == [] and [i["attempt"] for i in instances(job_id)] == [1, 2]


def test_a_transient_error_redelivers_its_message_and_nothing_fails_the_batch(deployed, spotctl, aws):
    job_id = launch(spotctl)
    first = live(job_id)[0]["InstanceId"]
    aws.interrupt(first)
    refused = refuse_on("us-east-1", "DescribeInstances", "RequestLimitExceeded", times=1)
    broken = launch(spotctl)
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"spotctl/jobs/{broken}/record.json", Body=b"{not json")

    result = deployed(sqs(terminated(first), TICK), None)
    assert len(refused) == 1 and result == {"batchItemFailures": [{"itemIdentifier": "m0"}]}  # SQS delivers it again
    assert [i["attempt"] for i in live(job_id)] == [2]  # the tick in the same batch recovered it meanwhile
    tick = controller_tick(JobStore(STORAGE))
    assert [note.job_id for note in tick.errors] == [broken] and "record.json" in tick.errors[0].message

    assert deployed(sqs(terminated(first)), None) == {"batchItemFailures": []}  # delivered again: nothing to do
    assert [i["attempt"] for i in instances(job_id)] == [1, 2]


def test_capacity_backoff_is_remembered_between_invocations(deployed, spotctl, aws, caplog):
    job_id = launch(spotctl)
    first = live(job_id)[0]["InstanceId"]
    aws.interrupt(first)
    refused = refuse_on("us-east-1", "RunInstances", "InsufficientInstanceCapacity")
    store = JobStore(STORAGE)
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        assert deployed(sqs(terminated(first)), None) == {"batchItemFailures": []}
    tried = len(refused)
    assert tried == 7  # every offer once
    assert any("trying again in 30s" in r.getMessage() for r in caplog.records)
    memory = StepMemory.parse(store.read_bytes(job_id, layout.CONTROLLER_MEMORY))
    assert memory.waiting_since is not None and memory.delay == 30 and memory.next_try > memory.waiting_since

    assert deployed(sqs(TICK), None) == {"batchItemFailures": []}  # too early: EC2 is not asked again
    assert len(refused) == tried

    memory.next_try -= 60  # as if the minute had passed
    store.write(job_id, layout.CONTROLLER_MEMORY, memory.to_json())
    assert deployed(sqs(TICK), None) == {"batchItemFailures": []}
    assert len(refused) == 2 * tried
    assert StepMemory.parse(store.read_bytes(job_id, layout.CONTROLLER_MEMORY)).delay == 60  # doubled
    assert record_of(job_id)["outcome"] is None  # until capacity_deadline_s


# ------------------------------------------------------------------------------ who looks after a job
def test_launch_and_ctrl_c_in_watch_say_whether_the_controller_looks_after_the_job(deployed, spotctl, monkeypatch):
    from orchestrator.cli.watch import interrupted_message

    code, out, err = spotctl("launch", str(EXAMPLE))
    job_id = launched_id(out)
    assert code == 0 and err.endswith(
        f"warning: no controller looks after {job_id}: nobody recovers an interruption until you run "
        f"`spotctl watch {job_id}` (`spotctl infra deploy` deploys the controller (the local cloud: `spotctl local up`))\n"
    )
    store = JobStore(STORAGE)
    assert interrupted_message([(store, [job_id])]).endswith(
        "nothing recovers an interruption until you run `spotctl watch` or `spotctl resume` again. `spotctl stop JOB` stops one."
    )

    deployed(sqs(TICK), None)
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0 and "warning" not in err
    assert re.search(
        r"^the controller \(last tick \d+s ago\) looks after it: interruptions are recovered with no watch running$",
        out,
        re.M,
    )
    assert re.search(
        r"running \([\w-]+\): the controller \(last tick \d+s ago\) recovers it\. ",
        interrupted_message([(store, [job_id])]),
    )


def test_a_watch_holds_a_lease_while_it_follows_and_gives_it_back(deployed, spotctl):
    from orchestrator.cli import context
    from orchestrator.jobs.caretaker import Lease
    from orchestrator.jobs.watch import Watcher, WatchOptions
    from trainer.job.settings import Settings

    job_id = launch(spotctl)
    store = JobStore(STORAGE)
    lease = Lease(poll_s=10, holder="laptop:42")
    watch = Watcher(
        store, [job_id], context.App(Settings.from_env()).clouds(None), context.aws_prices, WatchOptions(), lease=lease
    )
    watch.poll()
    care = caretaker(store, job_id)
    assert (care.by, care.detail, care.fix) == ("watch", "spotctl watch on laptop:42", None)
    assert caretaker(store, job_id, but="laptop:42").by == "nobody"  # the ending watch does not count itself
    code, out, _ = spotctl("status", "--storage", STORAGE)
    assert code == 0 and re.search(rf"{job_id}.*watch", out)

    later = datetime.now(timezone.utc) + timedelta(seconds=61)  # a watch killed without Ctrl-C: it lapses
    assert caretaker(store, job_id, now=later).by == "nobody"
    watch.release()
    care = caretaker(store, job_id)
    assert (care.by, care.fix) == ("nobody", f"`spotctl watch {job_id}`, or {DEPLOY_HINT}")
    code, out, _ = spotctl("status", "--storage", STORAGE)
    assert code == 0 and re.search(rf"{job_id}.*nobody", out)
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE)
    assert f"! looked after by: nobody\n  `spotctl watch {job_id}`, or {DEPLOY_HINT}" in out
