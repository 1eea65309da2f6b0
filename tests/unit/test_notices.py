"""The notify section and the messages: which events a view shows, each event's text, each target's
exact payload, and webhook URLs masked wherever a spec is shown."""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.jobs.cost import JobCost
from orchestrator.jobs.notices import due, message, payload, tail
from orchestrator.jobs.state import JobView
from trainer.job.documents import Attempt, Final, Heartbeat, JobRecord
from trainer.job.secret import REVEAL, Secret, masked
from trainer.job.spec import NotifySpec
from trainer.job.spec_file import SpecError, dump_spec, parse_spec

HOOK = "https://hooks.slack.com/services/T000/B000/SECRET"
JOB = """\
name: flowers
storage: s3://my-bucket/spotctl
train:
  model: {name: resnet18}
  data: {train: s3://my-bucket/data}
"""


def view(*attempts: Attempt, beat: Heartbeat | None = None, final: Final | None = None, **record) -> JobView:
    found = JobRecord(
        "flowers-1", "flowers", "us-east-1", "s3://b/p", "s3://b/p/jobs/flowers-1/job.yaml", "w", "ami-1", **record
    )
    found.attempts = list(attempts)
    return JobView("flowers-1", found, beat, final, None)


def attempt(number: int, **fields) -> Attempt:
    pools = {1: ("g5.xlarge", "us-east-1a", 0.45), 2: ("g4dn.xlarge", "us-east-1b", 0.24)}
    itype, zone, price = pools.get(number, ("g6.xlarge", "us-east-1a", 0.33))
    return Attempt(number, itype, zone, price, 1.006, f"token-{number}", instance_id=f"i-{number}", **fields)


ENDED = "2026-01-01T00:00:00+00:00"


# ------------------------------------------------------------------------------------------- events
def test_events_are_read_off_the_record_and_the_trainers_documents():
    interrupted = attempt(1, end_reason="interrupted", start_step=0, end_step=340, ended_at=ENDED)
    assert due(view(interrupted, attempt(2), beat=Heartbeat(attempt=2, step=400, resumed_from_step=300))) == [
        ("notice:1", "notice"),
        ("lost:1", "work_lost"),
        ("attempt:2", "attempt_started"),
    ]
    noticed = Heartbeat(attempt=1, phase="interrupted", step=340, last_checkpoint_step=340)
    assert due(view(attempt(1), beat=noticed)) == [("notice:1", "notice"), ("checkpoint:1", "checkpoint")]
    assert due(view(attempt(1), beat=Heartbeat(attempt=1, phase="training", step=5))) == []
    # Resumed from where it stopped: nothing lost, and the record shows the notice's checkpoint even
    # once attempt 2's heartbeat has replaced attempt 1's (no driver stepped the job in between).
    resumed = view(interrupted, attempt(2, start_step=340, end_step=900))
    assert due(resumed) == [("notice:1", "notice"), ("checkpoint:1", "checkpoint"), ("attempt:2", "attempt_started")]
    assert dict(message("checkpoint:1", "checkpoint", resumed, None).fields)["steps saved"] == "340"
    assert due(view(attempt(1), outcome="budget_exceeded", stop_requested_at=ENDED)) == [("budget", "budget_stop")]


def test_the_end_is_told_once_the_last_machine_is_gone():
    final = Final(outcome="succeeded", attempt=1, step=2000, finished_at="2099-01-01T00:00:00+00:00")
    assert due(view(attempt(1), final=final)) == []  # its machine still shuts down: its cost is not final
    assert due(view(attempt(1, ended_at=ENDED, end_reason="succeeded"), final=final)) == [("end", "succeeded")]
    failed = Final(outcome="failed", attempt=1, error="boom")
    assert due(view(attempt(1), final=failed)) == [("end", "failed")]


# ----------------------------------------------------------------------------------------- messages
def test_each_target_gets_the_attempt_started_message_in_its_own_format():
    shown = view(attempt(1, end_reason="interrupted", ended_at=ENDED), attempt(2))
    note = message("attempt:2", "attempt_started", shown, None)
    text = "Attempt 2 started on g4dn.xlarge us-east-1b at $0.2400/h (i-2)."
    fields = {
        "attempt": "2",
        "pool": "g4dn.xlarge us-east-1b",
        "spot price": "$0.2400/h",
        "on-demand price": "$1.0060/h",
    }
    at = __import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").timezone.utc)
    assert payload("webhook", note, at) == {
        "event": "attempt_started",
        "key": "attempt:2",
        "job_id": "flowers-1",
        "level": "info",
        "title": "flowers-1: attempt 2 started",
        "text": text,
        "fields": fields,
        "detail": None,
        "at": "2026-01-01T00:00:00+00:00",
    }
    assert payload("slack", note) == {
        "text": f"flowers-1: attempt 2 started: {text}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "flowers-1: attempt 2 started"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields.items()]},
        ],
    }
    assert payload("discord", note) == {
        "content": "flowers-1: attempt 2 started",
        "embeds": [
            {
                "title": "flowers-1: attempt 2 started",
                "description": text,
                "color": 0x2EB67D,
                "fields": [{"name": k, "value": v, "inline": True} for k, v in fields.items()],
            }
        ],
        "allowed_mentions": {"parse": []},
    }
    assert payload("sns", note) == {
        "Subject": "flowers-1: attempt 2 started",
        "Message": "\n".join([text, *(f"{k}: {v}" for k, v in fields.items())]),
    }


def test_the_success_message_has_metrics_cost_savings_and_artifacts():
    from trainer.job.documents import Manifest

    final = Final(  # as the trainer writes it: the last epoch's metrics, the best epoch's metric
        outcome="succeeded",
        attempt=2,
        step=2000,
        metrics={"epoch": 8, "val_acc1": 0.93124, "val_loss": 0.25},
        best={"metric": "val_acc1", "value": 0.95, "epoch": 7},
    )
    shown = view(attempt(1, end_reason="interrupted", ended_at=ENDED), attempt(2, ended_at=ENDED), final=final)
    cost = JobCost([], 1.2345, 4.0, 0.6914, 0, 0.0)
    manifest = Manifest.model_validate(
        {
            "files": {
                "a/model.pt": {"format": "state_dict", "sha256": "0" * 64, "size": 45_000_000},
                "a/model.onnx": {"format": "onnx", "sha256": "1" * 64, "size": 46_000_000},
            }
        }
    )
    note = message(
        "end", "succeeded", shown, cost, manifest=manifest, artifacts_url="s3://b/p/jobs/flowers-1/artifacts"
    )
    assert (note.title, note.text, note.level) == (
        "flowers-1: succeeded",
        "The job succeeded at step 2000 after 2 attempts. Artifacts: s3://b/p/jobs/flowers-1/artifacts",
        "info",
    )
    assert dict(note.fields) == {
        "val_acc1": "0.9312",
        "val_loss": "0.25",
        "best": "val_acc1 0.95 (epoch 7)",
        "attempts": "2",
        "total cost": "$1.23",
        "savings": "69% vs on-demand $4.00",
        "artifacts": "2 files (onnx, state_dict), 91.0 MB",
    }


def test_a_failure_carries_its_log_tail_escaped_for_each_format():
    log = "".join(f"step {n}\n" for n in range(40)) + "<!channel> @everyone ``` done\n"
    shown = view(attempt(1), final=Final(outcome="failed", attempt=1, error="RuntimeError: CUDA out of memory"))
    note = message("end", "failed", shown, None, log_tail=log)
    assert note.text == "The job ended failed: RuntimeError: CUDA out of memory" and note.level == "error"
    assert note.detail == "\n".join([*(f"step {n}" for n in range(21, 40)), "<!channel> @everyone ``` done"])
    slack = payload("slack", note)["blocks"][-1]["text"]["text"]
    assert slack.endswith("&lt;!channel&gt; @everyone ``` done```")  # no channel ping; Slack shows the fence as text
    discord = payload("discord", note)
    assert discord["embeds"][0]["description"].endswith("\n```\n" + note.detail.replace("```", "'''") + "\n```")
    assert discord["allowed_mentions"] == {"parse": []}
    assert tail("x" * 5000) == "..." + "x" * 1497


def test_work_lost_counts_steps_and_their_share_of_the_attempts_cost():
    from orchestrator.jobs.cost import AttemptCost

    first = attempt(1, end_reason="interrupted", start_step=0, end_step=400, ended_at=ENDED)
    shown = view(first, attempt(2, start_step=300))
    cost = JobCost(
        [AttemptCost(1, 600, 0.8, None, False, 0.8, None, 0.0), AttemptCost(2, 60, 0.1, None, False, 0.1, None, 0.0)],
        0.9,
        None,
        None,
        100,
        0.2,
    )
    note = message("lost:1", "work_lost", shown, cost)
    assert (
        note.text
        == "Attempt 1 trained to step 400; attempt 2 resumed from step 300: 100 steps trained again, about $0.20."
    )
    assert dict(note.fields) == {"attempt": "1", "steps lost": "100", "cost lost": "$0.20"}


# ------------------------------------------------------------------------------------------- secrets
def test_webhook_urls_are_masked_wherever_a_spec_is_shown():
    spec = parse_spec(
        JOB + f"notify:\n  targets:\n    - slack: {HOOK}\n    - sns: arn:aws:sns:us-east-1:123456789012:alerts\n"
    )
    [slack, sns] = spec.notify.targets
    assert (slack.kind, slack.address, slack.shown) == ("slack", HOOK, "slack https://hooks.slack.com/***")
    assert (sns.kind, sns.address) == ("sns", "arn:aws:sns:us-east-1:123456789012:alerts")
    assert "SECRET" not in json.dumps(spec.model_dump(mode="json")) + repr(spec) + str(spec) + f"{slack.slack}"
    assert spec.notify.model_dump(mode="json", context={REVEAL: True})["targets"][0]["slack"] == HOOK
    stored = dump_spec(spec)  # the job.yaml the trainer reads: no notify section at all
    assert "notify" not in yaml.safe_load(stored) and "SECRET" not in stored
    assert masked("not a url") == "***" and Secret(HOOK) == Secret(HOOK)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            "  targets:\n    - webhook: ftp://files.example.com/SECRET\n",
            "job.yaml:8: notify.targets[0].webhook: 'ftp://files.example.com/***' is not a webhook URL; "
            "write it like https://hooks.example.com/...",
        ),
        (
            f"  targets:\n    - slack: {HOOK}\n      discord: {HOOK}\n",
            "job.yaml:8: notify.targets[0]: a notify target is exactly one of webhook, slack, discord, sns; "
            "this one sets slack and discord",
        ),
        (
            "  targets:\n    - sns: arn:aws:sqs:us-east-1:1:q\n",
            "job.yaml:8: notify.targets[0].sns: 'arn:aws:sqs:us-east-1:1:q' is not an SNS topic ARN; "
            "write it like arn:aws:sns:us-east-1:123456789012:alerts",
        ),
        (
            "  events: [failed, succeded]\n",
            "job.yaml:7: notify.events[1]: 'succeded' is not one of notice, checkpoint, attempt_started, work_lost, "
            "budget_stop, failed, succeeded; did you mean 'succeeded'?",
        ),
    ],
)
def test_notify_problems_are_line_numbered_and_never_show_a_url(section, problem):
    with pytest.raises(SpecError) as caught:
        parse_spec(JOB + "notify:\n" + section)
    told = "\n".join(str(p) for p in caught.value.problems)
    assert told == problem and "SECRET" not in told


def test_the_events_filter_defaults_to_all():
    assert NotifySpec().wants("notice") and not NotifySpec(events=["failed"]).wants("notice")
