"""Notifications through real `spotctl watch` runs on the moto server: each event reaches a local webhook
receiver once (also with two watchers racing), a receiver that is down neither delays nor breaks the
recovery and is tried again at the next poll, SNS topics get them too; and the webhook URLs stay out
of everything the trainer can read (user-data, the stored job.yaml, record.json) and out of what
spotctl prints."""

from __future__ import annotations

import base64
import json
import os
import re
import threading

import boto3
import botocore.exceptions
import pytest

from orchestrator.aws import infra
from orchestrator.aws.policy_check import Request, allows, role_policies
from orchestrator.jobs import notify
from testbed import REPO
from testbed.webhook import WebhookReceiver
from tests.cloud import BUCKET, EXAMPLE, STORAGE
from tests.orchestrator.test_recovery import beat, finish, instances, live, record_of, watcher

TOKEN = "T000/B000/very-secret-token"  # in every webhook URL: must appear nowhere the trainer reads


def notify_job(tmp_path, receiver: WebhookReceiver, extra: str = "") -> str:
    text = EXAMPLE.read_text() + (
        "notify:\n"
        "  targets:\n"
        f"    - webhook: {receiver.url('/hook/' + TOKEN)}\n"
        f"    - slack: {receiver.url('/slack/' + TOKEN)}\n"
        f"    - discord: {receiver.url('/discord/' + TOKEN)}\n"
        f"{extra}"
    )
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


def keys(receiver: WebhookReceiver) -> list[str]:
    return [body["key"] for body in receiver.bodies("/hook/" + TOKEN)]


def s3_text(key: str) -> str:
    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def run_three_attempts(job_id: str, polls) -> None:
    """Attempt 1 taken by EC2 mid-epoch (40 steps past its checkpoint), attempt 2 checkpointing on the
    notice, attempt 3 succeeding; `polls()` runs the watch's poll(s) after each step."""
    polls()
    beat(job_id, 1, step=340, resumed_from_step=0, last_checkpoint_step=300)
    boto_interrupt(job_id)
    polls()  # notice:1, attempt:2
    beat(job_id, 2, step=400, resumed_from_step=300)
    polls()  # lost:1 (steps 300..340 again)
    beat(job_id, 2, phase="interrupted", step=700, resumed_from_step=300, last_checkpoint_step=700)
    polls()  # notice:2, checkpoint:2, attempt:3
    boto_interrupt(job_id, attempt=2)  # EC2 takes the machine that checkpointed on the notice
    finish(  # the trainer's final word, as it writes it (trainer.run)
        job_id,
        3,
        step=2000,
        metrics={"epoch": 8, "val_acc1": 0.9312, "val_loss": 0.241},
        best={"metric": "val_acc1", "value": 0.9312, "epoch": 8},
    )
    polls()  # end (succeeded), once its machine is gone


def boto_interrupt(job_id: str, attempt: int | None = None) -> None:
    from orchestrator.local.aws import spot_interrupt

    [instance] = [i for i in live(job_id) if attempt is None or i["attempt"] == attempt][:1]
    spot_interrupt(instance["InstanceId"], "us-east-1")


EXPECTED = ["notice:1", "attempt:2", "lost:1", "notice:2", "checkpoint:2", "attempt:3", "end"]


def test_a_watched_job_notifies_each_event_once_with_cost_and_savings_at_the_end(account, aws, spotctl, tmp_path):
    with WebhookReceiver() as receiver:
        code, out, err = spotctl("launch", notify_job(tmp_path, receiver))
        assert code == 0, err
        job_id = out.split("launched ", 1)[1].split(":", 1)[0]
        events = []
        watch = watcher([job_id], events)
        run_three_attempts(job_id, watch.poll)
        watch.poll()  # nothing new: nothing sent again
        assert keys(receiver) == EXPECTED
        assert watch.done() and watch.exit_code() == 0

        assert keys(receiver) == EXPECTED
        assert [b["text"] for b in receiver.bodies("/slack/" + TOKEN)][0].endswith("spotctl starts the next attempt.")
        assert len(receiver.bodies("/slack/" + TOKEN)) == len(receiver.bodies("/discord/" + TOKEN)) == len(EXPECTED)
        by_key = {b["key"]: b for b in receiver.bodies("/hook/" + TOKEN)}
        assert by_key["lost:1"]["fields"]["steps lost"] == "40"
        assert by_key["checkpoint:2"]["fields"] == {"attempt": "2", "steps saved": "700"}
        assert by_key["attempt:2"]["fields"]["pool"] == "g4dn.xlarge us-east-1b"
        end = by_key["end"]
        assert end["event"] == "succeeded" and end["fields"]["val_acc1"] == "0.9312"
        code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
        cost = json.loads(out)["cost"]
        # The figures status shows (a second's rounding of a machine's end apart: both read EC2's clock).
        assert abs(float(end["fields"]["total cost"].removeprefix("$")) - cost["total_usd"]) < 1e-4
        percent, on_demand = re.fullmatch(r"(\d+)% vs on-demand \$([\d.]+)", end["fields"]["savings"]).groups()
        assert abs(int(percent) - 100 * cost["savings"]) <= 1 and abs(float(on_demand) - cost["on_demand_usd"]) < 1e-3
        assert any(e.message == "notified slack http://127.0.0.1/*** of succeeded" for e in events)

        record = record_of(job_id)
        assert {k: v["state"] for k, v in record["notified"].items()} == {
            f"{key}@{i}": "sent" for key in EXPECTED for i in range(3)
        }
        # The URLs live only in the secrets object: not in the trainer's job.yaml, the record, user-data, output.
        assert TOKEN in s3_text(f"spotctl/secrets/{job_id}/notify.json")
        assert TOKEN not in s3_text(f"spotctl/jobs/{job_id}/job.yaml") and "notify" not in s3_text(
            f"spotctl/jobs/{job_id}/job.yaml"
        )
        assert TOKEN not in json.dumps(record)
        ec2 = boto3.client("ec2")
        for instance in instances(job_id):
            data = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
            assert TOKEN not in base64.b64decode(data["UserData"]["Value"]).decode()
        assert not any(TOKEN in e.message for e in events)
        assert TOKEN not in spotctl("status", job_id, "--storage", STORAGE, "--json")[1]

        code, _, err = spotctl("rm", job_id, "--storage", STORAGE)
        assert code == 0, err
        with pytest.raises(botocore.exceptions.ClientError):  # gone (the strict proxy answers AccessDenied)
            s3_text(f"spotctl/secrets/{job_id}/notify.json")


def test_two_racing_watchers_send_each_event_once(account, aws, spotctl, tmp_path):
    with WebhookReceiver() as receiver:
        code, out, err = spotctl("launch", notify_job(tmp_path, receiver))
        assert code == 0, err
        job_id = out.split("launched ", 1)[1].split(":", 1)[0]
        watchers = [watcher([job_id]), watcher([job_id])]
        errors = []

        def both():
            barrier = threading.Barrier(2)

            def poll(w):
                barrier.wait()
                try:
                    w.poll()
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=poll, args=(w,)) for w in watchers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

        run_three_attempts(job_id, both)
        both()
        assert not errors
        assert keys(receiver) == EXPECTED  # each once, though two drivers saw each
        assert [i["attempt"] for i in instances(job_id)] == [1, 2, 3]


def test_a_receiver_that_is_down_neither_stops_recovery_nor_is_forgotten(account, aws, spotctl, tmp_path, monkeypatch):
    monkeypatch.setattr(notify, "MAX_TRIES", 3)
    with WebhookReceiver(status=500) as receiver:
        code, out, err = spotctl("launch", notify_job(tmp_path, receiver))
        assert code == 0, err
        job_id = out.split("launched ", 1)[1].split(":", 1)[0]
        events = []
        watch = watcher([job_id], events)
        watch.poll()
        boto_interrupt(job_id)
        watch.poll()
        assert [i["attempt"] for i in live(job_id)] == [2]  # recovered all the same
        # One refused try and its retry per target; the target's other message was not tried in that poll.
        assert receiver.refused == 3 * notify.SEND_TRIES
        marks = record_of(job_id)["notified"]
        assert (marks["notice:1@0"]["state"], marks["notice:1@0"]["tries"]) == ("failed", 1)
        assert marks["notice:1@0"]["error"] == "webhook http://127.0.0.1/***: HTTP 500"
        assert (marks["attempt:2@0"]["state"], marks["attempt:2@0"]["tries"]) == ("failed", 0)
        assert any(
            "notification notice:1@0 failed (webhook http://127.0.0.1/***: HTTP 500)" in e.message for e in events
        )

        receiver.status = 200  # back up: the next poll sends what failed, once
        watch.poll()
        assert keys(receiver) == ["notice:1", "attempt:2"]
        watch.poll()
        assert keys(receiver) == ["notice:1", "attempt:2"]

        receiver.status = 500  # down for good: given up after MAX_TRIES polls, with the reason said
        finish(job_id, 2, "failed", error="CUDA error: out of memory")
        for _ in range(notify.MAX_TRIES):
            watch.poll()
        marks = record_of(job_id)["notified"]
        assert (marks["end@0"]["state"], marks["end@0"]["tries"]) == ("gave_up", 3)
        assert any(
            e.message == "notification end@0: webhook http://127.0.0.1/***: HTTP 500; gave up after 3 tries"
            for e in events
        )


def test_failure_notices_carry_the_reason_and_the_trainers_log_tail(account, aws, spotctl, tmp_path):
    with WebhookReceiver() as receiver:
        code, out, err = spotctl("launch", notify_job(tmp_path, receiver, "  events: [failed]\n"))
        assert code == 0, err
        job_id = out.split("launched ", 1)[1].split(":", 1)[0]
        log = "".join(f"line {n}\n" for n in range(30)) + "RuntimeError: CUDA error: out of memory\n"
        boto3.client("s3").put_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/logs/attempt-1.log", Body=log)
        watch = watcher([job_id])
        watch.poll()
        finish(job_id, 1, "failed", error="RuntimeError: CUDA error: out of memory")
        watch.poll()
        [body] = receiver.bodies("/hook/" + TOKEN)
        assert (body["event"], body["title"]) == ("failed", f"{job_id}: failed")
        assert body["text"] == "The job ended failed: RuntimeError: CUDA error: out of memory"
        assert body["detail"] == "\n".join(
            [*(f"line {n}" for n in range(11, 30)), "RuntimeError: CUDA error: out of memory"]
        )
        [discord] = receiver.bodies("/discord/" + TOKEN)
        assert discord["embeds"][0]["description"].endswith("RuntimeError: CUDA error: out of memory\n```")


def test_sns_topics_get_the_notifications(account, aws, spotctl, tmp_path):
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "false"})
    path = tmp_path / "job.yaml"
    path.write_text(EXAMPLE.read_text() + f"notify:\n  targets:\n    - sns: {topic}\n  events: [attempt_started]\n")
    code, out, err = spotctl("launch", str(path))
    assert code == 0, err
    job_id = out.split("launched ", 1)[1].split(":", 1)[0]
    watch = watcher([job_id])
    watch.poll()
    boto_interrupt(job_id)
    watch.poll()
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    [published] = [json.loads(m["Body"]) for m in messages]
    assert published["Subject"] == f"{job_id}: attempt 2 started"
    assert published["Message"].startswith("Attempt 2 started on g4dn.xlarge us-east-1b at $0.2400/h (i-")
    assert record_of(job_id)["notified"]["attempt:2@0"]["state"] == "sent"


# ------------------------------------------------------------------------------ who may read the targets
def _template_trainer_policy() -> list[dict]:
    from cfnlint.decode import decode_str

    template, _ = decode_str((REPO / "infra" / "spotctl.yaml").read_text())
    [policy] = template["Resources"]["TrainerRole"]["Properties"]["Policies"]
    text = json.dumps(policy["PolicyDocument"])
    for name, value in (("${Bucket.Arn}", f"arn:aws:s3:::{BUCKET}"), ("${Prefix}", "spotctl")):
        text = text.replace(name, value)
    document = json.loads(text)
    for statement in document["Statement"]:  # the template's !Sub / !GetAtt, as CloudFormation resolves them
        for key in ("Resource",):
            value = statement[key]
            items = value if isinstance(value, list) else [value]
            resolved = [
                item.get("Fn::Sub", f"arn:aws:s3:::{BUCKET}") if isinstance(item, dict) else item for item in items
            ]
            statement[key] = resolved
    return [document]


@pytest.mark.parametrize("source", ["template", "local cloud"])
def test_the_trainer_role_may_not_read_the_notify_targets(source, aws):
    if source == "template":
        documents = _template_trainer_policy()
    else:
        from orchestrator.local.daemon import INSTANCE_PROFILE, seed_trainer_role

        iam = boto3.client("iam")
        seed_trainer_role(iam)
        documents = role_policies(iam, INSTANCE_PROFILE)
        documents = [json.loads(json.dumps(d).replace("spotctl-local", BUCKET)) for d in documents]
    bucket = f"arn:aws:s3:::{BUCKET}"
    secret = f"{bucket}/spotctl/secrets/flowers-1/notify.json"
    assert allows(documents, Request("s3:GetObject", f"{bucket}/spotctl/jobs/flowers-1/job.yaml"))
    assert not allows(documents, Request("s3:GetObject", secret))
    assert not allows(documents, Request("s3:PutObject", secret))
    assert infra.trainer_denied_arns(bucket, "spotctl") == [f"{bucket}/spotctl/secrets/*"]


# ------------------------------------------------------------------------------ the stack profile's default
def test_the_profiles_notify_default_fills_in_job_files_without_one_and_is_shown_masked(aws, spotctl, tmp_path):
    with WebhookReceiver() as receiver:
        url = receiver.url("/slack/" + TOKEN)
        targets = infra.notify_targets((f"slack={url}",))
        assert targets == [{"slack": url}]
        infra._write_profile(
            infra.Deployed(
                "spotctl",
                "us-east-1",
                BUCKET,
                STORAGE,
                "spotctl-trainer",
                "sg-0123456789abcdef0",
                "arn",
                "now",
                notify=targets,
            )
        )
        assert oct(os.stat(infra.profile_path()).st_mode & 0o777) == "0o600"
        path = tmp_path / "job.yaml"
        path.write_text(EXAMPLE.read_text())
        code, out, err = spotctl("validate", str(path), "--json")
        assert code == 0, out + err
        found = json.loads(out)
        assert found["spec"]["notify"]["targets"][0]["slack"] == "http://127.0.0.1/***"
        assert found["filled_in"]["notify.targets"] == "the deployed stack spotctl"
        assert TOKEN not in out
        code, out, _ = spotctl("validate", str(path))
        assert code == 0 and TOKEN not in out
        assert "│   ├── targets  (from the deployed stack spotctl)\n" in out and "slack: http://127.0.0.1/***\n" in out
        with pytest.raises(Exception, match=r"--notify slack=\.\.\.: 'ftp://x/\*\*\*' is not a webhook URL"):
            infra.notify_targets((f"slack=ftp://x/{TOKEN}",))
        with pytest.raises(Exception, match="'teams' is no kind of target"):
            infra.notify_targets((f"teams={url}",))
        assert TOKEN not in json.dumps(infra.read_profile().shown())
