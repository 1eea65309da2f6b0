"""Where spotctl looks for jobs (orchestrator.jobs.contexts): after a launch, the follow-up commands
need no flags; a running local cloud is found without --local; every context is listed, each job
with its context; ids by unique prefix; jobs the trainer ran alone; `spotctl rm`; `status --all` and
`--state`; watch's Ctrl-C. Against the moto server (the local cloud played by it, its runner off) and
local folders; exact output and exit codes."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from orchestrator.cli import context
from orchestrator.jobs.contexts import remember
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.watch import Watcher, WatchOptions
from orchestrator.local import client
from orchestrator.local.client import LocalCloud
from tests.cloud import BUCKET, EXAMPLE, STORAGE, launched_id, settled_ec2
from trainer.job.settings import Settings

LOCAL_STORAGE = "s3://spotctl-local/spotctl"


class MotoAsLocalCloud(LocalCloud):
    """The test's moto server standing in for `spotctl local up`'s (no instance runner: instances
    stay as EC2 lists them)."""

    keys: tuple[str, str] = ("", "")

    @property
    def credentials(self) -> tuple[str, str]:
        return self.keys


@pytest.fixture
def local_cloud(account, aws, monkeypatch):
    """A running local cloud, as client.find() finds one (without starting it)."""
    boto3.client("s3").create_bucket(Bucket="spotctl-local")
    cloud = MotoAsLocalCloud(os.getpid(), aws.endpoint, "http://127.0.0.1:9", 0, "us-east-1", "spotctl-local", "now")
    cloud.keys = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setattr(client, "find", lambda: cloud)
    return cloud


def local_job(tmp_path) -> Path:
    """The example as a job for the local cloud: its storage left out (the local cloud's fills it in)."""
    path = tmp_path / "local.yaml"
    path.write_text(
        EXAMPLE.read_text()
        .replace("storage: s3://my-spotctl-bucket/spotctl", "")
        .replace("name: flowers-resnet50", "name: quick")
    )
    return path


def no_credentials(monkeypatch) -> None:
    """A shell with no AWS credentials at all (what bug 1's user ran the printed commands in)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


# ----------------------------------------------------------------------------- bugs 1, 1b and 2
def test_a_local_launch_prints_follow_ups_without_flags_and_they_work_without_credentials(
    local_cloud, spotctl, tmp_path, monkeypatch
):
    code, out, err = spotctl("launch", str(local_job(tmp_path)), "--local")
    assert code == 0, err
    job_id = launched_id(out)
    assert out.splitlines()[1:] == [  # bug 1: they said --storage s3://spotctl-local/spotctl
        f"follow it:  spotctl watch {job_id}   (recovers interruptions)",
        f"            spotctl status {job_id}",
        f"            spotctl logs {job_id} --follow",
    ]
    no_credentials(monkeypatch)
    code, out, err = spotctl("status", job_id, "--json")  # as printed: no flags, no credentials
    assert code == 0, err
    found = json.loads(out)
    assert (found["job_id"], found["context"], found["state"]) == (job_id, "local", "running")
    code, out, err = spotctl("status")  # bug 2: "no storage root given", no word of the local cloud
    assert code == 0, err
    assert out.splitlines()[0].strip() == f"1 job under {LOCAL_STORAGE} (local cloud)"
    assert job_id in out and err == ""


def test_a_watch_meeting_missing_credentials_ends_at_once_with_the_hint(account, aws, spotctl, monkeypatch):
    """Bug 1b: credentials missing are never retried; the watcher backed off and tried again."""
    code, out, _ = spotctl("launch", str(EXAMPLE))
    job_id = launched_id(out)
    real = context.aws_cloud

    def without_credentials(region, profile):
        made = real(region, profile)

        def refuse(**_):
            raise botocore.exceptions.NoCredentialsError()

        made.client("ec2", retries="once").meta.events.register("before-parameter-build.ec2.RunInstances", refuse)
        return made

    monkeypatch.setattr(context, "aws_cloud", without_credentials)
    events = []
    watch = Watcher(
        JobStore(STORAGE),
        [job_id],
        context.App(Settings.from_env()).clouds(None),
        context.aws_prices,
        WatchOptions(),
        on_event=events.append,
    )
    [instance] = [i for r in settled_ec2().describe_instances()["Reservations"] for i in r["Instances"]]
    aws.interrupt(instance["InstanceId"])
    with pytest.raises(Exception) as raised:
        watch.poll()
    assert str(raised.value) == "no AWS credentials found while starting the next attempt"
    assert not [e for e in events if "trying again" in e.message]


def test_storage_never_retries_credentials_whatever_wraps_them():
    import errno

    from orchestrator.aws.clients import ErrorKind, classify
    from trainer.job.storage import Storage, is_transient

    try:
        try:
            raise botocore.exceptions.NoCredentialsError()
        except botocore.exceptions.NoCredentialsError as exc:
            raise OSError(errno.ETIMEDOUT, "timed out") from exc  # how a wrapper may hand it on
    except OSError as wrapped:
        assert not is_transient(wrapped)
    assert classify(botocore.exceptions.CredentialRetrievalError(provider="sso", error_msg="expired")) is ErrorKind.AUTH
    calls = []

    def read():
        calls.append(1)
        raise botocore.exceptions.NoCredentialsError()

    with pytest.raises(botocore.exceptions.NoCredentialsError):
        Storage("/tmp", sleep=calls.append)._retry("read", read)
    assert calls == [1]


# ------------------------------------------------------------------------------ several contexts
def test_status_lists_every_context_and_names_each_jobs_and_what_it_could_not_read(
    local_cloud, spotctl, tmp_path, monkeypatch
):
    code, out, err = spotctl("launch", str(EXAMPLE))
    aws_job = launched_id(out)
    code, out, err = spotctl("launch", str(local_job(tmp_path)), "--local")
    local_job_id = launched_id(out)
    remember("s3://gone-bucket/spotctl")
    code, out, err = spotctl("status", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert {(j["job_id"], j["context"]) for j in listed["jobs"]} == {(aws_job, STORAGE), (local_job_id, "local")}
    assert listed["storage"] is None and listed["hidden"] == 0
    assert listed["unreachable"] == [
        {
            "context": "s3://gone-bucket/spotctl",
            "error": "storage s3://gone-bucket/spotctl: bucket gone-bucket does not exist",
        }
    ]
    code, out, err = spotctl("status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].strip() == "2 jobs in 2 contexts"
    assert (
        lines[-1] == "! s3://gone-bucket/spotctl: storage s3://gone-bucket/spotctl: bucket gone-bucket does not exist"
    )
    assert [line.split()[:2] for line in lines if aws_job in line] == [[aws_job, STORAGE]]
    assert [line.split()[:2] for line in lines if local_job_id in line] == [[local_job_id, "local"]]
    # One job: found in whichever context holds it, by any unique prefix.
    code, out, err = spotctl("status", local_job_id[:8], "--json")
    assert (code, json.loads(out)["job_id"], json.loads(out)["context"]) == (0, local_job_id, "local"), err
    code, out, err = spotctl("logs", aws_job)
    assert (code, err) == (1, "no log of attempt 1 yet (the instance ships it every minute)\n")
    # --storage: that context only.
    code, out, _ = spotctl("status", "--storage", STORAGE, "--json")
    assert [j["job_id"] for j in json.loads(out)["jobs"]] == [aws_job] and json.loads(out)["storage"] == STORAGE


def test_an_ambiguous_prefix_lists_the_candidates(account, spotctl):
    first = launched_id(spotctl("launch", str(EXAMPLE))[1])
    second = launched_id(spotctl("launch", str(EXAMPLE))[1])
    code, out, err = spotctl("status", "flowers")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"error: 'flowers' names 2 jobs: {', '.join(sorted([first, second]))}",
        "hint: give more of the id",
    ]
    code, out, err = spotctl("status", "nosuch")
    assert code == 1 and err.splitlines()[0] == f"error: no job 'nosuch' under {STORAGE}"


# -------------------------------------------------------------------- jobs the trainer ran alone
def trainer_only_job(root: Path, job_id: str, outcome: str | None = "succeeded", ended_ago_s: float = 60) -> None:
    """What `python -m trainer run` leaves under local storage: the trainer's documents, no record.json."""
    at = (datetime.now(timezone.utc) - timedelta(seconds=ended_ago_s)).isoformat(timespec="seconds")
    status = root / "jobs" / job_id / "status"
    status.mkdir(parents=True)
    (status / "heartbeat.json").write_text(
        json.dumps({"attempt": 1, "phase": "done" if outcome else "training", "step": 96, "updated_at": at})
    )
    if outcome:
        (status / "final.json").write_text(
            json.dumps({"outcome": outcome, "attempt": 1, "step": 96, "finished_at": at})
        )


def test_a_job_the_trainer_ran_alone_is_listed_with_its_outcome_and_found_by_id(spotctl, tmp_path, monkeypatch):
    """Bug 7: listed as `unknown`, and `status quickstart` said "no job 'quickstart'; did you mean 'quickstart'?"."""
    monkeypatch.chdir(tmp_path)
    trainer_only_job(tmp_path / "runs", "quickstart")
    code, out, err = spotctl("status", "--storage", "./runs", "--json")
    assert code == 0, err
    assert [(j["job_id"], j["state"]) for j in json.loads(out)["jobs"]] == [("quickstart", "succeeded")]
    code, out, err = spotctl("status", "--storage", "./runs")
    assert code == 0 and out.splitlines()[-1].split()[:3] == ["quickstart", "succeeded", "1"]  # its one attempt
    code, out, err = spotctl("status", "quickstart", "--storage", "./runs", "--json")
    assert code == 0, err
    assert (json.loads(out)["state"], json.loads(out)["final"]["outcome"]) == ("succeeded", "succeeded")
    code, _, err = spotctl("stop", "quick", "--storage", "./runs")
    assert (code, err) == (1, "error: job quickstart is already succeeded; nothing to stop\n")


def test_artifacts_of_no_such_job_says_no_job(spotctl, tmp_path, monkeypatch):
    """Bug 8: it said "has no exported artifacts yet"."""
    monkeypatch.chdir(tmp_path)
    trainer_only_job(tmp_path / "runs", "quickstart")
    code, out, err = spotctl("artifacts", "nosuch", "--storage", "./runs")
    assert (code, out) == (1, "")
    assert err.splitlines() == ["error: no job 'nosuch' under ./runs", "hint: `spotctl status` lists the jobs there"]


def test_status_hides_jobs_that_ended_a_day_ago_unless_all_and_filters_by_state(spotctl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer_only_job(tmp_path / "runs", "recent", "failed", ended_ago_s=3600)
    trainer_only_job(tmp_path / "runs", "old", "succeeded", ended_ago_s=3 * 86400)
    trainer_only_job(tmp_path / "runs", "going", None, ended_ago_s=5)
    code, out, err = spotctl("status", "--storage", "runs")
    assert code == 0, err
    assert out.splitlines()[-1] == "1 job that ended more than 24 h ago is hidden; `spotctl status --all` shows it"
    assert "recent" in out and "going" in out and "old" not in out
    code, out, _ = spotctl("status", "--storage", "runs", "--all", "--json")
    assert sorted(j["job_id"] for j in json.loads(out)["jobs"]) == ["going", "old", "recent"]
    code, out, _ = spotctl("status", "--storage", "runs", "--all", "--state", "succeeded,failed", "--json")
    assert sorted(j["job_id"] for j in json.loads(out)["jobs"]) == ["old", "recent"]
    code, out, err = spotctl("status", "--storage", "runs", "--state", "runnin")
    assert (code, out) == (2, "")
    assert (
        "Invalid value for '--state': 'runnin' is not a state; did you mean 'running'? (states: unknown, pending, "
        "launching, running, interrupted, stopping, exporting, succeeded, failed, cancelled, budget_exceeded, "
        "no_capacity, unreadable)"
    ) in err


# ------------------------------------------------------------------------------------- spotctl rm
def test_rm_removes_every_object_of_a_finished_job(spotctl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer_only_job(tmp_path / "runs", "quickstart")
    (tmp_path / "runs/jobs/quickstart/checkpoints/step-96").mkdir(parents=True)
    (tmp_path / "runs/jobs/quickstart/checkpoints/step-96/state.pt").write_bytes(b"x" * 10)
    code, out, err = spotctl("rm", "quick", "--storage", "runs")
    assert (code, err) == (0, "")
    assert out == "removed quickstart: 3 objects under runs/jobs/quickstart/ (checkpoints, status 2)\n"
    assert not (tmp_path / "runs/jobs/quickstart").exists()
    code, _, err = spotctl("rm", "quickstart", "--storage", "runs")
    assert code == 1 and err.startswith("error: no job 'quickstart' under runs")


def test_rm_refuses_a_live_job_and_force_stops_it_first(account, spotctl):
    job_id = launched_id(spotctl("launch", str(EXAMPLE))[1])
    [instance] = [i for r in settled_ec2().describe_instances()["Reservations"] for i in r["Instances"]]
    code, out, err = spotctl("rm", job_id)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"error: job {job_id} is live: it is running on {instance['InstanceId']}; not removed",
        f"hint: `spotctl stop {job_id}` first, or `spotctl rm {job_id} --force` (stops it, terminates its instance, removes it)",
    ]
    code, out, err = spotctl("rm", job_id, "--force", "--json")
    assert code == 0, err
    [removed] = json.loads(out)["removed"]
    assert (removed["job_id"], removed["context"], removed["stopped"], removed["terminated"]) == (
        job_id,
        STORAGE,
        True,
        [instance["InstanceId"]],
    )
    assert {"job.yaml", "record.json", "control/stop"} <= set(removed["objects"])
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"spotctl/jobs/{job_id}/")
    state = settled_ec2().describe_instances(InstanceIds=[instance["InstanceId"]])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] in ("shutting-down", "terminated")
    assert json.loads(spotctl("status", "--json")[1])["jobs"] == []


# ------------------------------------------------------------------------------------ watch's Ctrl-C
def test_ctrl_c_in_watch_says_the_jobs_keep_running_and_nobody_recovers_them(spotctl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer_only_job(tmp_path / "runs", "quickstart", None, ended_ago_s=5)

    def interrupted(self, **_):
        raise KeyboardInterrupt

    monkeypatch.setattr(Watcher, "run", interrupted)
    code, out, err = spotctl("watch", "quick", "--storage", "runs")
    assert (code, out) == (130, "")
    assert err == (
        "stopped watching; the job keeps running (quickstart): nothing recovers an interruption until you run "
        "`spotctl watch` or `spotctl resume` again. `spotctl stop JOB` stops one.\n"
    )
