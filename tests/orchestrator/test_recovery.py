"""Recovery against the moto server: `spotctl watch` and `spotctl resume` after spot interruptions,
trainer failures, no capacity and the budget; two watchers at once. EC2's side is checked with plain
boto3 calls; the trainer's side (heartbeat, final.json) is written the way the trainer writes it."""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from orchestrator.aws.prices import FixedPrices
from orchestrator.cli import context
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.watch import Watcher, WatchOptions
from tests.cloud import BUCKET, EXAMPLE, MARKET, ON_DEMAND, STORAGE, hook_run_instances, launched_id, settled_ec2
from trainer.job.settings import Settings


def launch(spotctl, job=EXAMPLE) -> str:
    code, out, err = spotctl("launch", str(job))
    assert code == 0, err
    return launched_id(out)


def instances(job_id: str) -> list[dict]:
    """The job's instances as EC2 lists them, oldest attempt first."""
    found = [
        i
        for r in settled_ec2().describe_instances(Filters=[{"Name": "tag:spotctl:job", "Values": [job_id]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]
    for instance in found:
        instance["attempt"] = int({t["Key"]: t["Value"] for t in instance["Tags"]}["spotctl:attempt"])
        instance["pool"] = (instance["InstanceType"], instance["Placement"]["AvailabilityZone"])
    return sorted(found, key=lambda i: i["attempt"])


def live(job_id: str) -> list[dict]:
    return [i for i in instances(job_id) if i["State"]["Name"] in ("pending", "running")]


def record_of(job_id: str) -> dict:
    return json.loads(
        boto3.client("s3").get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/record.json")["Body"].read()
    )


def put(job_id: str, name: str, value: dict) -> None:
    """Write one of the trainer's objects (status/heartbeat.json, status/final.json)."""
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/{name}", Body=json.dumps(value).encode())


def finish(job_id: str, attempt: int, outcome: str = "succeeded", **fields) -> None:
    """The trainer's final word, then the bootstrap shuts its machine down (as on EC2)."""
    from orchestrator.local.aws import SELF_SHUTDOWN, end_instance

    put(job_id, "status/final.json", {"outcome": outcome, "attempt": attempt, **fields})
    for instance in live(job_id):
        if instance["attempt"] == attempt:
            end_instance(instance["InstanceId"], "us-east-1", SELF_SHUTDOWN, service=False)


def beat(job_id: str, attempt: int, phase: str = "training", **fields) -> None:
    put(
        job_id,
        "status/heartbeat.json",
        {
            "attempt": attempt,
            "phase": phase,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **fields,
        },
    )


def watcher(job_ids: list[str], events: list | None = None, **settings) -> Watcher:
    sink = events.append if events is not None else (lambda event: None)
    return Watcher(
        JobStore(STORAGE),
        job_ids,
        context.App(Settings.from_env()).clouds(None),
        context.aws_prices,
        WatchOptions(**settings),
        on_event=sink,
    )


def job_file(tmp_path, **replacements) -> str:
    text = EXAMPLE.read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------ interruptions
def test_watch_resumes_each_interruption_on_another_pool_within_one_poll(account, aws, spotctl):
    job_id = launch(spotctl)
    events = []
    watch = watcher([job_id], events)
    watch.poll()
    assert watch.rows[job_id].view.state == "running"

    beat(job_id, 1, step=340, resumed_from_step=0)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    watch.poll()  # the poll that sees the interruption starts the next attempt
    assert [i["pool"] for i in live(job_id)] == [("g4dn.xlarge", "us-east-1b")]  # not the pool just interrupted

    beat(job_id, 2, step=700, resumed_from_step=300)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    watch.poll()
    assert [i["pool"] for i in instances(job_id)] == [
        ("g4dn.xlarge", "us-east-1a"),
        ("g4dn.xlarge", "us-east-1b"),
        ("g6.xlarge", "us-east-1a"),
    ]
    assert [i["attempt"] for i in live(job_id)] == [3]

    record = record_of(job_id)
    assert [(a["number"], a["end_reason"], a["state_reason"]) for a in record["attempts"]] == [
        (1, "interrupted", "Server.SpotInstanceTermination"),
        (2, "interrupted", "Server.SpotInstanceTermination"),
        (3, None, None),
    ]
    assert [(a["start_step"], a["end_step"]) for a in record["attempts"][:2]] == [(0, 340), (300, 700)]
    assert all(a["ended_at"] for a in record["attempts"][:2])
    messages = [e.message for e in events]
    assert (
        "attempt 1 on g4dn.xlarge us-east-1a ended: interrupted (Server.SpotInstanceTermination) at step 340"
        in messages
    )
    assert any(
        m.startswith("resuming from the latest checkpoint: attempt 2 on g4dn.xlarge us-east-1b at $0.2400/h (i-")
        for m in messages
    )

    finish(job_id, 3, step=2000)
    watch.poll()
    assert watch.done() and watch.exit_code() == 0

    code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
    view = json.loads(out)
    assert code == 0 and view["state"] == "succeeded"
    assert [a["end_reason"] for a in view["attempts"][:2]] == ["interrupted", "interrupted"]
    assert view["cost"]["lost_steps"] == (340 - 300)  # attempt 1's steps past its last checkpoint
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE)
    assert "interrupted (Server.SpotInstanceTermination)" in out


def test_the_trainers_interrupted_marker_starts_the_next_attempt_before_ec2_terminates(account, aws, spotctl):
    job_id = launch(spotctl)
    watch = watcher([job_id])
    first = live(job_id)[0]["InstanceId"]
    beat(job_id, 1, phase="interrupted", step=120, resumed_from_step=0)  # checkpointed on the notice
    watch.poll()
    assert {i["InstanceId"]: i["attempt"] for i in live(job_id)} == {
        first: 1,
        live(job_id)[1]["InstanceId"]: 2,
    }  # the old one still dies
    attempt = record_of(job_id)["attempts"][0]
    assert attempt["end_reason"] == "interrupted" and attempt["ended_at"] is None and attempt["end_step"] == 120

    aws.interrupt(first)  # EC2 takes it two minutes later: now billing ends and its reason is known
    watch.poll()
    attempt = record_of(job_id)["attempts"][0]
    assert attempt["state_reason"] == "Server.SpotInstanceTermination" and attempt["ended_at"] is not None
    assert len(instances(job_id)) == 2


def test_two_concurrent_watchers_and_the_controller_start_exactly_one_instance_per_attempt(
    account, aws, spotctl, monkeypatch
):
    from orchestrator.controller import handler as controller
    from tests.orchestrator.test_controller import sqs, terminated

    monkeypatch.setenv("SPOTCTL_STORAGE", STORAGE)
    monkeypatch.setattr(controller, "prices_for", lambda cloud: FixedPrices(MARKET, ON_DEMAND))
    monkeypatch.setattr(controller, "_clouds", {})
    job_id = launch(spotctl)
    watchers = [watcher([job_id]), watcher([job_id])]
    for number in range(1, 4):
        interrupted = live(job_id)[0]["InstanceId"]
        aws.interrupt(interrupted)
        racers = [w.poll for w in watchers] + [lambda gone=interrupted: controller.handler(sqs(terminated(gone)), None)]
        barrier = threading.Barrier(len(racers))
        errors, answers = [], []

        def race(act, barrier=barrier, errors=errors, answers=answers):
            barrier.wait()
            try:
                answers.append(act())
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(act,)) for act in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert {"batchItemFailures": []} in answers  # the controller's batch went through
        assert [i["attempt"] for i in instances(job_id)] == list(
            range(1, number + 2)
        )  # one instance per attempt, never two
    assert [a["number"] for a in record_of(job_id)["attempts"]] == [1, 2, 3, 4]
    runs = {call: n for call, n in aws.calls().items() if call.startswith("ec2:RunInstances")}
    assert runs == {"ec2:RunInstances:sent": 4}  # launch's, then only the racer whose claim won sends one


def test_max_interruptions_gives_the_job_up(account, aws, spotctl, tmp_path):
    job_id = launch(spotctl, job_file(tmp_path, **{"max_interruptions: 10": "max_interruptions: 1"}))
    events = []
    watch = watcher([job_id], events)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    watch.poll()
    aws.interrupt(live(job_id)[0]["InstanceId"])
    watch.poll()
    assert live(job_id) == [] and watch.done() and watch.exit_code() == 1
    record = record_of(job_id)
    assert (
        record["outcome"] == "failed"
        and record["outcome_reason"] == "interrupted 2 times; recovery.max_interruptions is 1"
    )
    assert "failed: interrupted 2 times; recovery.max_interruptions is 1" in [e.message for e in events]


# ------------------------------------------------------------------------------ trainer errors
def test_a_trainer_error_is_retried_only_as_often_as_allowed(account, aws, spotctl, tmp_path):
    job_id = launch(
        spotctl, job_file(tmp_path, **{"max_interruptions: 10": "max_interruptions: 10\n  retries_on_error: 1"})
    )
    watch = watcher([job_id])
    put(
        job_id,
        "status/final.json",
        {"outcome": "failed", "attempt": 1, "error": "CUDA error: an illegal memory access"},
    )
    settled_ec2().terminate_instances(InstanceIds=[live(job_id)[0]["InstanceId"]])
    watch.poll()
    assert [i["attempt"] for i in live(job_id)] == [2]
    s3 = boto3.client("s3")
    assert (
        json.loads(
            s3.get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/status/final-attempt-1.json")["Body"].read()
        )["outcome"]
        == "failed"
    )
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"spotctl/jobs/{job_id}/status/final.json")

    finish(job_id, 2, "failed", error="CUDA error: an illegal memory access")
    watch.poll()
    assert len(instances(job_id)) == 2 and watch.done() and watch.exit_code() == 1
    assert [a["end_reason"] for a in record_of(job_id)["attempts"]] == ["failed", "failed"]


# ------------------------------------------------------------------------------ capacity
def test_no_capacity_anywhere_backs_off_then_gives_up_at_the_deadline(account, aws, spotctl, monkeypatch):
    job_id = launch(spotctl)
    refusing = {"on": True}
    hook = lambda params: "InsufficientInstanceCapacity" if refusing["on"] else None  # noqa: E731
    hook_run_instances(monkeypatch, hook)
    now = [0.0]
    events = []
    watch = Watcher(
        JobStore(STORAGE),
        [job_id],
        context.App(Settings.from_env()).clouds(None),
        context.aws_prices,
        WatchOptions(capacity_deadline_s=100, capacity_retry_s=10, capacity_retry_max_s=40),
        clock=lambda: now[0],
        on_event=events.append,
    )
    _use_hooked_cloud(watch)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    watch.poll()
    assert "trying again in 10s" in events[-1].message and events[-1].level == logging.WARNING
    assert record_of(job_id)["attempts"][-1]["number"] == 1  # the refused claim was withdrawn
    now[0] = 5
    watch.poll()  # too early: EC2 is not asked again
    assert len([e for e in events if "trying again" in e.message]) == 1
    now[0] = 10
    watch.poll()
    assert "trying again in 20s" in events[-1].message
    now[0] = 101
    watch.poll()
    assert watch.done() and record_of(job_id)["outcome"] == "no_capacity"
    assert record_of(job_id)["outcome_reason"].startswith(
        "EC2 refused all 7 offers: g4dn.xlarge/us-east-1b: InsufficientInstanceCapacity"
    )


def _use_hooked_cloud(watch: Watcher) -> None:
    """The watcher's clouds through context.aws_cloud, where hook_run_instances injects EC2's refusals."""
    built = {}
    watch.clouds = lambda region: built.setdefault(region, context.aws_cloud(region, None))


# ------------------------------------------------------------------------------ budget
def test_the_budget_stops_the_job_gracefully_and_resume_budget_continues_it(
    account, aws, spotctl, monkeypatch, tmp_path
):
    market = {pool: price * 100 for pool, price in MARKET.items()}  # $21/h: a $15 budget lasts minutes
    monkeypatch.setattr(context, "aws_prices", lambda cloud: FixedPrices(market, ON_DEMAND))
    job_id = launch(spotctl, job_file(tmp_path, **{"max_price_per_hour: 0.60": "max_price_per_hour: 100"}))
    _backdate_launch(job_id, minutes=30)  # $10.50 spent so far
    beat(job_id, 1, step=500, last_checkpoint_step=500, last_checkpoint_age_s=10)  # next checkpoint in ~290 s: +$1.69
    events = []
    watch = watcher([job_id], events)
    watch.poll()
    assert watch.rows[job_id].view.state == "running"  # $10.50 + $1.69 < $15

    _backdate_launch(job_id, minutes=40)  # $14.00 + $1.69 would pass it
    watch.poll()
    stop = json.loads(
        boto3.client("s3").get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/control/stop")["Body"].read()
    )
    assert re.match(
        r"budget: cost \$14\.0\d \+ \$1\.\d\d to the next checkpoint would pass the budget \$15\.00", stop["reason"]
    ), stop["reason"]
    assert watch.rows[job_id].view.state == "stopping" and live(job_id)
    put(job_id, "status/final.json", {"outcome": "stopped", "attempt": 1, "step": 512, "reason": stop["reason"]})
    watch.poll()  # the trainer checkpointed and exited: its machine goes
    assert live(job_id) == [] and watch.done() and watch.exit_code() == 1
    assert record_of(job_id)["outcome"] == "budget_exceeded"

    code, _, err = spotctl("resume", job_id, "--storage", STORAGE)
    assert code == 1 and err.startswith(f"error: job {job_id}: not resumed, it has spent $14.")
    assert "hint: `spotctl resume JOB --budget NEW` with NEW above $14." in err
    code, out, err = spotctl("resume", job_id, "--storage", STORAGE, "--budget", "40")
    assert code == 0, err
    assert out.startswith(
        f"resumed {job_id}: attempt 2 on g4dn.xlarge in us-east-1a"
    )  # a stop is no interruption: same pool
    s3 = boto3.client("s3")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"spotctl/jobs/{job_id}/control/stop")
    record = record_of(job_id)
    assert record["budget_usd"] == 40 and record["outcome"] is None and record["stop_requested_at"] is None
    assert [a["end_reason"] for a in record["attempts"]] == ["stopped", None]


def _backdate_launch(job_id: str, minutes: float) -> None:
    store = JobStore(STORAGE)

    def backdate(record):  # launched and running (EC2 bills from running) that long ago
        record.attempts[0].launched_at = record.attempts[0].running_at = (
            datetime.now(timezone.utc) - timedelta(minutes=minutes)
        ).isoformat(timespec="seconds")

    store.update_record(job_id, backdate)


# ------------------------------------------------------------------------------ resume
def test_resume_refuses_what_it_must_and_continues_what_it_can(account, aws, spotctl):
    job_id = launch(spotctl)
    code, _, err = spotctl("resume", job_id, "--storage", STORAGE)
    instance = live(job_id)[0]["InstanceId"]
    assert code == 1 and err.splitlines() == [
        f"error: job {job_id}: not resumed, it is running (attempt 1 on {instance})",
        "hint: `spotctl status JOB` shows it; `spotctl stop JOB` stops it",
    ]
    aws.interrupt(instance)
    code, out, err = spotctl("resume", job_id, "--storage", STORAGE, "--json")
    assert code == 0, err
    attempt = json.loads(out)["attempt"]
    assert (attempt["number"], attempt["instance_type"], attempt["zone"]) == (2, "g4dn.xlarge", "us-east-1b")
    assert record_of(job_id)["attempts"][0]["end_reason"] == "interrupted"

    code, out, err = spotctl("stop", job_id, "--storage", STORAGE, "--wait", "0")
    assert code == 0, err
    code, _, err = spotctl("resume", job_id, "--storage", STORAGE)
    assert code == 1 and err.splitlines() == [
        f"error: job {job_id}: not resumed, it was cancelled (spotctl stop)",
        "hint: `spotctl resume JOB --force` continues it from its last checkpoint",
    ]
    code, out, err = spotctl("resume", job_id, "--storage", STORAGE, "--force")
    assert code == 0, err and out.startswith(f"resumed {job_id}: attempt 3 ")
    assert record_of(job_id)["cancelled_at"] is None

    put(job_id, "status/final.json", {"outcome": "succeeded", "attempt": 3})
    code, _, err = spotctl("resume", job_id, "--storage", STORAGE)
    assert code == 1 and err.startswith(f"error: job {job_id}: not resumed, it has already succeeded\n")


@pytest.mark.parametrize(
    "reason, expected",
    [
        ("Client.UserInitiatedShutdown", "terminated"),
        ("Client.InstanceInitiatedShutdown", "crashed"),  # no final word, no crash report: the bootstrap died
    ],
)
def test_end_reasons_come_from_ec2s_state_reason(account, aws, spotctl, reason, expected):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    job_id = launch(spotctl)
    instance = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_instance(live(job_id)[0]["InstanceId"])
    instance.terminate()
    instance.state_reason = StateReason(f"{reason}: test", reason)
    watcher([job_id]).poll()
    assert record_of(job_id)["attempts"][0]["end_reason"] == expected
    assert record_of(job_id)["attempts"][0]["state_reason"] == reason


def test_a_crashed_trainer_is_recovered_with_how_it_died_on_its_attempt(account, aws, spotctl):
    from orchestrator.local.aws import SELF_SHUTDOWN, end_instance

    job_id = launch(spotctl)
    events = []
    watch = watcher([job_id], events)
    watch.poll()
    beat(job_id, 1, step=40, resumed_from_step=0, host_mem_used_peak_gib=15.2, host_mem_total_gib=15.5)
    report = {"attempt": 1, "process": "trainer", "exit_code": 137, "signal": "SIGKILL", "oom_killed": None}
    put(job_id, "status/crash-attempt-1.json", report)  # the bootstrap's, then it shuts the machine down
    end_instance(live(job_id)[0]["InstanceId"], "us-east-1", SELF_SHUTDOWN, service=False)
    watch.poll()  # the poll that sees it starts the next attempt
    detail = "killed by SIGKILL (exit 137): probably out of memory (host memory 15.2 of 15.5 GiB at the last heartbeat)"
    first, second = record_of(job_id)["attempts"]
    assert (first["end_reason"], first["end_detail"], first["end_step"]) == ("crashed", detail, 40)
    assert second["instance_id"] and [i["attempt"] for i in live(job_id)] == [2]
    assert (first["instance_type"], first["zone"]) != (second["instance_type"], second["zone"])  # another machine
    messages = [e.message for e in events]
    assert (
        f"attempt 1 on {first['instance_type']} {first['zone']} ended: crashed (Client.InstanceInitiatedShutdown) at step 40: {detail}"
        in messages
    )
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
    assert code == 0 and json.loads(out)["attempts"][0]["end_detail"] == detail


def test_a_job_that_crashes_past_max_crashes_fails_with_the_fix(account, aws, spotctl, tmp_path):
    from orchestrator.local.aws import SELF_SHUTDOWN, end_instance

    job_id = launch(spotctl, job_file(tmp_path, **{"max_interruptions: 10": "max_interruptions: 10\n  max_crashes: 1"}))
    watch = watcher([job_id])
    watch.poll()
    for number in (1, 2):  # each attempt SIGKILLed, said nothing, its machine shut itself down
        put(
            job_id,
            f"status/crash-attempt-{number}.json",
            {"attempt": number, "exit_code": 137, "signal": "SIGKILL", "oom_killed": True},
        )
        end_instance(live(job_id)[0]["InstanceId"], "us-east-1", SELF_SHUTDOWN, service=False)
        watch.poll()
    record = record_of(job_id)
    assert [a["end_reason"] for a in record["attempts"]] == ["crashed", "crashed"] and live(job_id) == []
    assert record["outcome"] == "failed" and record["outcome_reason"] == (
        "the trainer crashed 2 times (last: killed by SIGKILL (exit 137): out of memory, the kernel's OOM killer says); "
        "recovery.max_crashes is 1: it ran out of memory: a smaller train.batch_size (or fewer train.data.workers), "
        "or instance types with more memory in compute.instance_types"
    )


def test_watch_cli_follows_a_job_to_the_end(account, aws, spotctl):
    job_id = launch(spotctl)

    def trainer_side():  # an interruption, then the resumed attempt finishes
        aws.interrupt(live(job_id)[0]["InstanceId"])
        for _ in range(200):
            if len(instances(job_id)) == 2:
                break
            threading.Event().wait(0.05)
        finish(job_id, 2, step=2000)

    thread = threading.Thread(target=trainer_side)
    thread.start()
    code, out, err = spotctl("watch", job_id, "--storage", STORAGE, "--poll", "0.2")
    thread.join()
    assert code == 0, err
    lines = out.splitlines()
    assert any(
        line.endswith(
            f"{job_id}: attempt 1 on g4dn.xlarge us-east-1a ended: interrupted (Server.SpotInstanceTermination)"
        )
        for line in lines
    )
    assert any(
        f"{job_id}: resuming from the latest checkpoint: attempt 2 on g4dn.xlarge us-east-1b" in line for line in lines
    )
    assert any(line.endswith(f"{job_id}: succeeded") or "-> succeeded" in line for line in lines)


# ------------------------------------------------------------------------------ cost
class SeriesPrices(FixedPrices):
    """A market whose history has price changes (moto's is one constant)."""

    def __init__(self, spot, on_demand, changes):
        super().__init__(spot, on_demand)
        self.changes = changes  # pool -> [PricePoint]

    def history(self, pool, start, end):
        return self.changes.get(pool) or super().history(pool, start, end)


def test_status_cost_matches_hand_computed_figures_across_three_attempts(account, aws, spotctl, monkeypatch):
    from orchestrator.aws.prices import PricePoint

    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=4)
    at = lambda minutes: t0 + timedelta(minutes=minutes)  # noqa: E731
    changes = {("g4dn.xlarge", "us-east-1b"): [PricePoint(at(0), 0.24), PricePoint(at(71), 0.30)]}
    monkeypatch.setattr(context, "aws_prices", lambda cloud: SeriesPrices(MARKET, ON_DEMAND, changes))
    job_id = launch(spotctl)
    watch = watcher([job_id])
    for _ in (1, 2):  # two spot interruptions, each resumed by watch
        aws.interrupt(live(job_id)[0]["InstanceId"])
        watch.poll()
    times = {
        1: (0, 40, 0, 400),
        2: (41, 131, 350, 1500),
        3: (132, 180, 1400, 2000),
    }  # minutes from t0; start and end steps

    def set_times(record):
        for attempt in record.attempts:
            start, end, first, last = times[attempt.number]
            attempt.launched_at, attempt.ended_at = at(start).isoformat(), at(end).isoformat()
            attempt.running_at = at(start).isoformat()  # running at once: billed from the launch
            attempt.start_step, attempt.end_step = first, last
        record.attempts[2].end_reason = "succeeded"

    JobStore(STORAGE).update_record(job_id, set_times)
    put(job_id, "status/final.json", {"outcome": "succeeded", "attempt": 3, "step": 2000})
    code, out, err = spotctl("status", job_id, "--storage", STORAGE, "--json")
    assert code == 0, err
    cost = json.loads(out)["cost"]
    # 1: g4dn/1a, 40 min, interrupted by EC2 within its first hour: free.
    # 2: g4dn/1b, 90 min, interrupted after its first hour: 30 min at $0.24 + 60 min at $0.30 = $0.42.
    # 3: g6/1a, 48 min at $0.33 = $0.264.
    assert [(a["number"], a["seconds"], a["free_by_first_hour_rule"]) for a in cost["attempts"]] == [
        (1, 2400.0, True),
        (2, 5400.0, False),
        (3, 2880.0, False),
    ]
    assert [a["instance_usd"] for a in cost["attempts"]] == [0.0, pytest.approx(0.42), pytest.approx(0.264)]
    # Each attempt's 120 GiB root volume ($0.08/GiB-month) and public IPv4 address ($0.005/h), first hour or not.
    besides = 120 * 0.08 / 730 + 0.005
    assert [a["usd"] for a in cost["attempts"]] == [
        pytest.approx(40 / 60 * besides, abs=1e-6),
        pytest.approx(0.42 + 90 / 60 * besides, abs=1e-6),
        pytest.approx(0.264 + 48 / 60 * besides, abs=1e-6),
    ]
    assert cost["instance_usd"] == pytest.approx(0.684)
    assert cost["ebs_usd"] == pytest.approx(178 / 60 * 120 * 0.08 / 730, abs=1e-6)  # $0.039013
    assert cost["public_ipv4_usd"] == pytest.approx(178 / 60 * 0.005, abs=1e-6)  # $0.014833
    total = 0.684 + 178 / 60 * besides
    assert cost["total_usd"] == pytest.approx(total, abs=1e-6)
    on_demand = 40 / 60 * 0.526 + 90 / 60 * 0.526 + 48 / 60 * 0.8048 + 178 / 60 * besides
    assert cost["on_demand_usd"] == pytest.approx(on_demand, abs=1e-6) and cost["savings"] == pytest.approx(
        1 - total / on_demand, abs=1e-4
    )
    # Lost work: 400 -> resumed at 350 (attempt 1's volume and address only), 1500 -> resumed at 1400 (100 of
    # attempt 2's 1150 steps).
    lost = 40 / 60 * besides * 50 / 400 + (0.42 + 90 / 60 * besides) * 100 / 1150
    assert cost["lost_steps"] == 150 and cost["lost_usd"] == pytest.approx(lost, abs=1e-6)
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE)
    assert "cost: $0.738 so far" in out and "work lost to interruptions: 150 steps redone, $0.0404" in out
    assert "  instance $0.684, root volume $0.039, public IPv4 $0.0148" in out


def test_launch_watch_json_reports_events_and_the_final_state(account, aws, spotctl):
    def trainer_side():  # attempt 1 succeeds as soon as its instance exists
        for _ in range(400):
            ids = JobStore(STORAGE).job_ids()
            if ids and live(ids[0]):
                threading.Event().wait(0.3)  # let the launch record it
                finish(ids[0], 1, step=2000)
                return
            threading.Event().wait(0.05)

    thread = threading.Thread(target=trainer_side)
    thread.start()
    code, out, err = spotctl("launch", str(EXAMPLE), "--watch", "--poll", "0.2", "--json")
    thread.join()
    assert code == 0, err
    lines = out.splitlines()
    events = [json.loads(line) for line in lines if line.startswith('{"at"')]
    assert events[-1]["message"] == "running -> succeeded" or events[-1]["message"] == "succeeded"
    final = json.loads("\n".join(lines[len(events) :]))
    assert [job["state"] for job in final["jobs"]] == ["succeeded"] and final["jobs"][0]["cost"]["total_usd"] > 0


# ------------------------------------------------------------------------------ GPU health
def test_status_and_watch_flag_a_data_bound_gpu(account, aws, spotctl):
    job_id = launch(spotctl)
    beat(
        job_id,
        1,
        step=900,
        total_steps=2000,
        gpu_util_pct=15.0,
        gpu_mem_used_gib=10.0,
        gpu_mem_total_gib=16.0,
        health_window_s=300.0,
        gpu_util_window_pct=12.4,
        gpu_mem_window_fraction=0.62,
        data_wait_window=0.64,
        data_workers=8,
        batch_size=64,
    )
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
    view = json.loads(out)
    assert code == 0 and view["health"] == [
        {
            "name": "low_gpu_util",
            "message": "GPU at 12% over the last 5 min; data-bound: the loop waits for batches 64% of the time",
            "hint": "raise train.data.workers (now 8)",
        }
    ]
    assert view["stalled"] is False and view["gpu"]["gpu_util_window_pct"] == 12.4
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE)
    assert (
        "! GPU at 12% over the last 5 min; data-bound: the loop waits for batches 64% of the time (raise train.data.workers (now 8))"
        in out
    )
    events = []
    watch = watcher([job_id], events)
    watch.poll()
    watch.poll()  # said once, not at every poll
    assert [e.message for e in events if e.level == logging.WARNING] == [
        "low_gpu_util: GPU at 12% over the last 5 min; data-bound: the loop waits for batches 64% of the time (raise train.data.workers (now 8))"
    ]


# ------------------------------------------------------------------------------ the record
@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_record_updates_lose_nothing(where, tmp_path, s3_bucket):
    from trainer.job.documents import JobRecord
    from trainer.job.storage import Conflict

    store = JobStore(str(tmp_path / "jobs-root") if where == "local" else f"s3://{s3_bucket}/root")
    store.write_record(JobRecord("j1", "n", "us-east-1", store.root, "u", "w", "ami-1", budget_usd=0.0), create=True)

    def add_one(record):
        record.budget_usd += 1

    def worker():
        for _ in range(8):
            store.update_record("j1", add_one)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.read_record("j1").budget_usd == 24  # every read-modify-write landed, none overwrote another
    body, version = store.storage.read_versioned("jobs/j1/record.json")
    store.storage.write_if("jobs/j1/record.json", body + b"\n", version)
    with pytest.raises(Conflict):
        store.storage.write_if("jobs/j1/record.json", body, version)  # that version is gone now
    with pytest.raises(Conflict):
        store.storage.write_if("jobs/j1/record.json", body, None)  # create-only: it exists


# ------------------------------------------------------------------------------ races and leftovers
def test_an_abandoned_claim_is_taken_over_by_adopting_the_instance_it_started(account, aws, spotctl):
    from trainer.job.documents import Attempt

    job_id = launch(spotctl)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    store = JobStore(STORAGE)
    watcher([job_id]).poll()  # settles attempt 1 and starts attempt 2...
    orphan = live(job_id)[0]["InstanceId"]

    def forget(record):  # ...as if that orchestrator died after run_instances, before recording it
        last = record.attempts[-1]
        record.attempts[-1] = Attempt(
            2,
            last.instance_type,
            last.zone,
            last.spot_price,
            last.on_demand_price,
            last.client_token,
            requested_at=(datetime.now(timezone.utc) - timedelta(minutes=6)).isoformat(timespec="seconds"),
            claimed_by="gone/1/x",
        )

    store.update_record(job_id, forget)
    watch = watcher([job_id])
    watch.poll()
    assert [i["InstanceId"] for i in live(job_id)] == [orphan]  # adopted, not doubled
    last = record_of(job_id)["attempts"][-1]
    assert (last["number"], last["instance_id"]) == (2, orphan) and watch.rows[job_id].view.state == "running"


def test_a_stop_requested_meanwhile_starts_nothing(account, aws, spotctl):
    from orchestrator.jobs.recover import job_spec, start_next
    from orchestrator.jobs.stop import request_stop
    from orchestrator.jobs.views import read_views

    job_id = launch(spotctl)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    store, cloud = JobStore(STORAGE), context.App(Settings.from_env()).clouds(None)("us-east-1")
    view = read_views(store, [job_id], context.App(Settings.from_env()).clouds(None))[
        0
    ]  # a watcher's view from just before the stop
    request_stop(store, job_id, "stopped by spotctl stop")
    assert start_next(view, job_spec(store, job_id), store, cloud, context.aws_prices(cloud)) is None
    assert live(job_id) == [] and len(record_of(job_id)["attempts"]) == 1


def test_no_offer_under_the_cap_during_recovery_waits_then_ends_as_no_capacity(account, aws, spotctl, monkeypatch):
    job_id = launch(spotctl)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    monkeypatch.setattr(
        context, "aws_prices", lambda cloud: FixedPrices({pool: 5.0 for pool in MARKET}, ON_DEMAND)
    )  # all above $0.60 now
    now, events = [0.0], []
    watch = Watcher(
        JobStore(STORAGE),
        [job_id],
        context.App(Settings.from_env()).clouds(None),
        context.aws_prices,
        WatchOptions(capacity_deadline_s=60, capacity_retry_s=10),
        clock=lambda: now[0],
        on_event=events.append,
    )
    watch.poll()
    assert events[-1].message.startswith(
        "no capacity (no spot offer matches the job's compute section now (9 pools dropped"
    )
    now[0] = 61
    watch.poll()
    assert (
        watch.done() and watch.exit_code() == 1 and record_of(job_id)["outcome"] == "no_capacity" and live(job_id) == []
    )


def test_stop_after_an_unwatched_interruption_keeps_the_interruption(account, aws, spotctl):
    job_id = launch(spotctl)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    code, out, err = spotctl("stop", job_id, "--storage", STORAGE, "--wait", "0")
    assert code == 0, err
    attempt = record_of(job_id)["attempts"][0]
    assert (attempt["end_reason"], attempt["state_reason"]) == ("interrupted", "Server.SpotInstanceTermination")
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
    view = json.loads(out)
    assert view["state"] == "cancelled" and view["cost"]["attempts"][0]["free_by_first_hour_rule"] is True


def test_watch_without_jobs_follows_running_ones_and_names_idle_ones(account, aws, spotctl):
    idle = launch(spotctl)
    aws.interrupt(live(idle)[0]["InstanceId"])
    code, out, err = spotctl("watch", "--storage", STORAGE, "--poll", "0.1")
    assert (code, out) == (0, f"no running job under {STORAGE}\n")
    assert err == f"not recovering 1 idle job ({idle}); name them, or pass --all\n"
    assert live(idle) == []  # nothing was relaunched behind the user's back
