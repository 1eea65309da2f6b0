"""One bad object never blinds the tool (issue 17, part 2): a storage root holding one corrupt job of
each kind, beside healthy ones. `status` lists every healthy job and names each bad object by its URL
and what is wrong with it; `status JOB`, `resume`, `stop` and `rm` say the same and the fix; `watch`
gives up on a job it cannot follow after a few polls (exit 4) while the others are followed to their
end; an unreadable job in one context hides nothing of another. Local-folder storage roots, EC2 on the
moto server (the healthy jobs' attempts are looked up there); exact output and exit codes."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import FixedPrices
from orchestrator.errors import ExitCode
from orchestrator.jobs.contexts import remember
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.watch import Watcher, WatchOptions
from tests.cloud import MARKET, ON_DEMAND
from tests.unit.jobs import attempt, record
from trainer.job import layout
from trainer.job.documents import Final, Heartbeat, now_iso

JOB_FILE = """
name: table
storage: s3://bucket/spotctl
compute: {instance_types: [g5.xlarge], instance_profile: spotctl-trainer}
train:
  model: {name: resnet18, weights: null}
  data: {train: s3://bucket/data/train}
"""

# (job id, object, its bytes, the problem `status` names): one corrupt job of each kind
RECORD_FAULTS = [
    ("rec-garbage", layout.RECORD, b"\x00\x01garbage", "not JSON (garbage at byte 0)"),
    ("rec-not-utf8", layout.RECORD, b'{"job_id": "\xff"}', "not UTF-8 text (byte 0xff at byte 12)"),
    ("rec-list", layout.RECORD, b'[{"job_id": "rec-list"}]', "a JSON list, not an object"),
    ("rec-empty", layout.RECORD, b"", "empty (0 bytes)"),
    ("rec-truncated", layout.RECORD, None, "not JSON (cut short: it ends at byte 120)"),
    ("rec-bad-date", layout.RECORD, None, 'attempts[0].launched_at: "yesterday" is not a date-time'),
    (
        "rec-nested",
        layout.RECORD,
        None,
        'missing job_id, name, region, storage, job_url, wheel_url, ami (it holds "record")',
    ),
]
SECONDARY_FAULTS = [
    ("beat-list", layout.HEARTBEAT, b"[1, 2]", "a JSON list, not an object"),
    (
        "beat-bad-time",
        layout.HEARTBEAT,
        b'{"attempt": 1, "updated_at": "yesterday"}',
        'updated_at: "yesterday" is not a date-time',
    ),
    ("final-garbage", layout.FINAL, b"\x89PNG\r\n", "not UTF-8 text (byte 0x89 at byte 0)"),
]
HEALTHY = ["ok-pending", "ok-running", "ok-succeeded"]


def fresh_attempt():
    """Attempt 1, launched just now: EC2 not listing it yet, the job reads as launching."""
    return replace(attempt(), launched_at=now_iso(), requested_at=now_iso())


def healthy_record(job_id: str, root: str, *attempts):
    return replace(
        record(*attempts),
        job_id=job_id,
        storage=root,
        job_url=f"{root}/jobs/{job_id}/{layout.JOB_FILE}",
        created_at=now_iso(),
    )


def body_of(job_id: str, given: bytes | None, root: str) -> bytes:
    """The corrupt record for the cases built from a healthy one."""
    if given is not None:
        return given
    good = json.loads(healthy_record(job_id, root, attempt()).to_json())
    if job_id == "rec-truncated":
        return json.dumps(good).encode()[:120]
    if job_id == "rec-bad-date":
        good["attempts"][0]["launched_at"] = "yesterday"
        return json.dumps(good).encode()
    return json.dumps({"record": good}).encode()  # rec-nested: the record one level too deep


def seed(root: Path) -> JobStore:
    """Healthy jobs and one corrupt job of each kind under `root`."""
    store = JobStore(str(root))
    url = store.root
    for job_id in HEALTHY:
        attempts = {
            "ok-pending": (),
            "ok-running": (fresh_attempt(),),
            "ok-succeeded": (replace(fresh_attempt(), ended_at=now_iso(), end_reason="succeeded"),),
        }[job_id]
        store.write_record(healthy_record(job_id, url, *attempts), create=True)
        store.write(job_id, layout.JOB_FILE, JOB_FILE.encode())
    store.write(
        "ok-running",
        layout.HEARTBEAT,
        Heartbeat.dump({"attempt": 1, "phase": "training", "step": 7, "updated_at": now_iso()}),
    )
    store.write(
        "ok-succeeded", layout.FINAL, Final.dump({"outcome": "succeeded", "attempt": 1, "finished_at": now_iso()})
    )
    for job_id, relative, body, _ in RECORD_FAULTS:
        store.write(job_id, relative, body_of(job_id, body, url))
    for job_id, relative, body, _ in SECONDARY_FAULTS:
        store.write_record(healthy_record(job_id, url), create=True)
        store.write(job_id, relative, body)
    (root / "jobs" / "rec-folder" / layout.RECORD).mkdir(parents=True)  # a folder where the file should be
    return store


ALL_RECORD_FAULTS = [*RECORD_FAULTS, ("rec-folder", layout.RECORD, None, "a folder, not a file")]


@pytest.fixture
def root(aws, tmp_path) -> Path:
    seed(tmp_path / "root")
    return tmp_path / "root"


def test_status_lists_every_healthy_job_beside_one_corrupt_job_of_each_kind(root, spotctl):
    code, out, err = spotctl("status", "--storage", str(root), "--json")
    assert (code, err) == (0, "")
    jobs = {job["job_id"]: job for job in json.loads(out)["jobs"]}
    assert {j: jobs[j]["state"] for j in HEALTHY} == {
        "ok-pending": "pending",
        "ok-running": "launching",
        "ok-succeeded": "succeeded",
    }
    assert all(jobs[j]["unreadable"] == [] for j in HEALTHY)
    assert jobs["ok-running"]["progress"]["step"] == 7
    for job_id, relative, _, problem in ALL_RECORD_FAULTS:
        assert jobs[job_id]["state"] == "unreadable"
        assert jobs[job_id]["unreadable"] == [{"url": f"{root}/jobs/{job_id}/{relative}", "problem": problem}]
    for job_id, relative, _, problem in SECONDARY_FAULTS:
        url = f"{root}/jobs/{job_id}/{relative}"
        assert jobs[job_id]["state"] == "pending"  # listed normally, that part unknown
        assert jobs[job_id]["unreadable"] == [{"url": url, "problem": problem}]
        assert [(f["name"], f["message"]) for f in jobs[job_id]["health"]] == [("unreadable", f"{url}: {problem}")]

    code, out, err = spotctl("status", "--storage", str(root))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    for job_id in HEALTHY:
        assert any(line.startswith(job_id + " ") for line in lines)
    problems = sorted(line for line in lines if line.startswith("! "))
    expected = [f"! {root}/jobs/{j}/{r}: {p}" for j, r, _, p in [*ALL_RECORD_FAULTS, *SECONDARY_FAULTS]]
    assert problems == sorted(expected)
    assert [line.split()[:3] for line in lines if line.startswith("beat-")] == [
        ["beat-bad-time", "pending,", "unreadable"],
        ["beat-list", "pending,", "unreadable"],
    ]


def test_status_state_unreadable_lists_only_the_unreadable_jobs(root, spotctl):
    code, out, _ = spotctl("status", "--storage", str(root), "--state", "unreadable", "--json")
    assert code == 0
    assert sorted(job["job_id"] for job in json.loads(out)["jobs"]) == sorted(j for j, *_ in ALL_RECORD_FAULTS)


def test_status_of_an_unreadable_job_names_the_object_and_the_fix(root, spotctl):
    code, out, err = spotctl("status", "rec-bad-date", "--storage", str(root))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "rec-bad-date  unreadable",
        f'! {root}/jobs/rec-bad-date/record.json: attempts[0].launched_at: "yesterday" is not a date-time',
        "  restore the object (an earlier version, if the bucket keeps them), or delete the job with "
        "`spotctl rm rec-bad-date --force`",
    ]
    code, out, _ = spotctl("status", "beat-list", "--storage", str(root))
    assert code == 0
    assert f"! {root}/jobs/beat-list/status/heartbeat.json: a JSON list, not an object (what it says" in out


@pytest.mark.parametrize("command", ["resume", "stop"])
@pytest.mark.parametrize("job_id", ["rec-garbage", "rec-folder", "rec-bad-date"])
def test_resume_and_stop_refuse_an_unreadable_job_with_its_url_and_the_fix(root, spotctl, command, job_id):
    problem = {j: p for j, _, _, p in ALL_RECORD_FAULTS}[job_id]
    code, out, err = spotctl(command, job_id, "--storage", str(root))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"error: job {job_id}: cannot {command} it, its record cannot be read: {root}/jobs/{job_id}/record.json: {problem}",
        "hint: restore the object (an earlier version, if the bucket keeps them), or delete the job with "
        f"`spotctl rm {job_id} --force`",
    ]


def test_rm_removes_an_unreadable_job_only_with_force(root, spotctl):
    code, _, err = spotctl("rm", "rec-list", "--storage", str(root))
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: job rec-list: not removed, its record cannot be read ({root}/jobs/rec-list/record.json: "
        "a JSON list, not an object), so whether it runs cannot be told"
    )
    code, _, err = spotctl("rm", "rec-list", "--storage", str(root), "--force")
    assert code == 0, err
    assert not (root / "jobs" / "rec-list").exists()


def test_an_unreadable_job_in_one_context_hides_nothing_of_another(aws, tmp_path, spotctl, monkeypatch):
    seed(tmp_path / "corrupt")
    other = JobStore(str(tmp_path / "other"))
    other.write_record(healthy_record("elsewhere", other.root), create=True)
    monkeypatch.setenv("SPOTCTL_STORAGE", str(tmp_path / "corrupt"))
    assert remember(str(tmp_path / "other"))
    code, out, err = spotctl("status", "--json")
    assert (code, err) == (0, "")
    listing = json.loads(out)
    assert listing["unreachable"] == []
    states = {(job["context"], job["job_id"]): job["state"] for job in listing["jobs"]}
    assert states[(other.root, "elsewhere")] == "pending"
    assert states[(str(tmp_path / "corrupt"), "ok-pending")] == "pending"
    assert states[(str(tmp_path / "corrupt"), "rec-garbage")] == "unreadable"


# ------------------------------------------------------------------------------------------------- watch
def watcher(store: JobStore, job_ids: list[str], events: list) -> Watcher:
    return Watcher(
        store,
        job_ids,
        lambda region: Cloud(region),
        lambda cloud: FixedPrices(MARKET, ON_DEMAND),
        WatchOptions(poll_s=0, settle_grace_s=0),
        on_event=lambda e: events.append((e.job_id, e.level, e.message)),
    )


def test_watch_gives_up_on_jobs_it_cannot_follow_while_another_completes(root):
    store = JobStore(str(root))
    store.delete("ok-running", layout.JOB_FILE)  # bug: watch printed the same error every poll, forever
    store.write_record(healthy_record("finishing", store.root, fresh_attempt()), create=True)
    store.write("finishing", layout.JOB_FILE, JOB_FILE.encode())
    events: list = []
    watch = watcher(store, ["finishing", "ok-running", "rec-garbage"], events)
    polls = []

    def sleep(_):
        polls.append(1)
        if len(polls) == 4:  # the trainer finishes after the others were given up
            store.write(
                "finishing", layout.FINAL, Final.dump({"outcome": "succeeded", "attempt": 1, "finished_at": now_iso()})
            )

    assert watch.run(sleep=sleep) == ExitCode.GAVE_UP == 4
    assert watch.rows["finishing"].view.state == "succeeded"
    garbage = f"{root}/jobs/rec-garbage/record.json: not JSON (garbage at byte 0)"
    spec = f"{root}/jobs/ok-running/job.yaml: missing: the job file spotctl launch wrote is gone"
    hint = "restore the object (an earlier version, if the bucket keeps them), or delete the job with `spotctl rm {} --force`"
    said = [(j, m) for j, level, m in events if level == logging.ERROR]
    assert said == [
        ("ok-running", f"cannot follow it: {spec}; giving up after 3 polls"),
        ("rec-garbage", f"cannot follow it: {garbage}; giving up after 3 polls"),
        ("ok-running", f"gave up: {spec} ({hint.format('ok-running')})"),
        ("rec-garbage", f"gave up: {garbage} ({hint.format('rec-garbage')})"),
    ]
    assert watch.given_up == {"ok-running": spec, "rec-garbage": garbage}
    assert ("finishing", logging.INFO, "launching -> succeeded") in events


def test_a_job_repaired_before_the_limit_is_followed_on(root):
    store = JobStore(str(root))
    events: list = []
    watch = watcher(store, ["rec-list"], events)
    watch.poll()
    store.write("rec-list", layout.RECORD, healthy_record("rec-list", store.root).to_json())
    store.write("rec-list", layout.JOB_FILE, JOB_FILE.encode())
    watch.poll()
    watch.poll()
    assert watch.given_up == {} and watch.rows["rec-list"].view.state != "unreadable"


def test_spotctl_watch_exits_4_naming_what_it_gave_up_on(root, spotctl):
    code, out, err = spotctl("watch", "ok-succeeded", "rec-bad-date", "--storage", str(root), "--poll", "0.1")
    assert code == 4, err
    url = f"{root}/jobs/rec-bad-date/record.json"
    problem = 'attempts[0].launched_at: "yesterday" is not a date-time'
    assert f"rec-bad-date: x cannot follow it: {url}: {problem}; giving up after 3 polls" in out
    assert f"x rec-bad-date: not followed to its end: {url}: {problem}" in out
    assert "ok-succeeded  succeeded" in out
    code, out, _ = spotctl("watch", "rec-bad-date", "--storage", str(root), "--poll", "0.1", "--json")
    assert code == 4
    assert json.loads(out[out.index('{\n  "jobs"') :])["given_up"] == [
        {"job_id": "rec-bad-date", "reason": f"{url}: {problem}"}
    ]


def test_watch_without_jobs_names_the_unreadable_ones_it_does_not_follow(aws, tmp_path, spotctl):
    store = JobStore(str(tmp_path / "root"))
    for job_id in ("b-list", "a-garbage"):
        store.write(job_id, layout.RECORD, b"[]" if job_id == "b-list" else b"garbage")
    code, out, err = spotctl("watch", "--storage", store.root, "--poll", "0.1")
    assert code == 0
    assert err == "not following 2 unreadable jobs (a-garbage, b-list); `spotctl status` says what is wrong with each\n"
    assert out == f"no running job under {store.root}\n"
