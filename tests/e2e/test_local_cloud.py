"""The local cloud end to end: the quickstart path of `make demo` (smaller), through the same CLI,
orchestrator and trainer code as on AWS: launch, a spot interruption part-way, recovery on another
pool from the notice's checkpoint, success, cost from the simulated market; the README's transcript
has the shapes of what the commands print; `local down --keep` and `up` keep the job; `local down`
leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from orchestrator.jobs.cost import attempt_cost
from orchestrator.local.market import SimulatedMarket
from testbed import REPO, transcript
from testbed.harness import AWS_VARIABLES_TO_CLEAR


@pytest.fixture
def local_home(tmp_path, monkeypatch, wheel):
    """A SPOTCTL_HOME of its own, no AWS settings from the machine, and the session's wheel."""
    for name in (
        *AWS_VARIABLES_TO_CLEAR,
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "SPOTCTL_STORAGE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPOTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPOTCTL_WHEEL", str(wheel))
    return tmp_path / "home"


def point_aws_tools_at_the_local_cloud(spotctl, monkeypatch) -> None:
    """What `eval "$(spotctl local env)"` does in a shell."""
    import s3fs

    code, env_lines, _ = spotctl("local", "env")
    assert code == 0
    for line in env_lines.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # one cached for an earlier endpoint must not be reused


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) != 0


def listening_addresses(pid: int) -> set[str]:
    """The addresses a process listens on (Linux /proc: its socket inodes, matched in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                host = fields[1].split(":")[0]
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1]) if len(host) == 8 else host)
    return found


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command:
                found.append(f"{proc.name}: {command}")
    return found


@pytest.mark.slow
def test_the_quickstart_recovers_from_a_spot_interruption_on_the_local_cloud(
    local_home, tmp_path, spotctl, monkeypatch
):
    code, out, err = spotctl("local", "up", "--seed", "3", "--interrupt-at-step", "8", "--notice", "10", "--json")
    assert code == 0, err
    cloud = json.loads(out)
    assert cloud["started"] and cloud["endpoint"].startswith("http://127.0.0.1:")
    contents = cloud["contents"]  # nothing but the controller's first tick
    assert (contents["jobs"], contents["wheels"], contents["data"]) == ([], 0, {}) and contents["objects"] <= 1
    code, out, _ = spotctl("local", "up")
    assert (code, out.splitlines()[0]) == (
        0,
        f"local cloud already running: {cloud['endpoint']} (pid {cloud['pid']}, market seed 3)",
    )
    code, out, _ = spotctl("local", "up", "--seed", "5", "--notice", "10", "--interrupt-at-step", "8")
    assert code == 0 and out.splitlines()[1] == (  # the same interruptions: nothing changed, no "changed:" line
        "not changed while it runs: --seed 5 (it keeps market seed 3, which priced its jobs); "
        "`spotctl local down --keep`, then `spotctl local up` with them, starts a new one with its jobs and data"
    )
    code, out, _ = spotctl("local", "status")
    assert out.splitlines()[1:3] == [
        "interruptions: each job's first attempt at step 8 (--interrupt-at-step); "
        "at random 0 per instance-hour (--interrupt-rate); notice 10s (--notice)",
        "strictness: AWS's answers, the strict proxy's defaults",
    ]
    assert listening_addresses(cloud["pid"]) == {"127.0.0.1"}  # moto, the control API, every IMDS: loopback only
    try:
        point_aws_tools_at_the_local_cloud(spotctl, monkeypatch)
        code, out, err = spotctl("local", "data", "shapes", "--per-class", "40")
        assert (code, out.splitlines()[0]) == (
            0,
            "uploaded 250 images of 5 classes (coloured shapes, one class per shape) to "
            "s3://spotctl-local/datasets/shapes: train/ 200, val/ 50",
        ), err
        spec = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
        spec["train"]["epochs"] = 8
        spec["train"]["checkpoint"] = {"every_steps": 5, "keep": 2}
        job = tmp_path / "quickstart.yaml"
        job.write_text(yaml.safe_dump(spec))

        # As the demo does: no --watch, nothing of the user's running; the controller `local up`
        # deployed recovers the interruption; then `status JOB` shows the job.
        code, launched, err = spotctl("launch", str(job), "--local")
        assert code == 0 and "warning" not in err, err + launched
        job_id = launched.split()[1].rstrip(":")
        deadline, view = time.monotonic() + 900, {}

        def over(view: dict) -> bool:  # as the demo waits: the end, and every machine's end known
            ended = view.get("state") in ("succeeded", "failed", "cancelled")
            return ended and all(a["ended_at"] or not a["instance_id"] for a in view["attempts"])

        while time.monotonic() < deadline and not over(view):
            time.sleep(2)
            code, out, _ = spotctl("status", job_id, "--local", "--json")
            view = json.loads(out) if code == 0 else {}
        code, shown, err = spotctl("status", job_id, "--local")
        assert code == 0, err
        # The README shows the demo's run of these commands: the same lines, whatever the numbers
        # (`make demo`, then `make readme-demo`, rewrites it after a change of format).
        readme = transcript.shapes(transcript.readme_block((REPO / "README.md").read_text()))
        printed = transcript.shapes(launched + shown)
        assert (sorted(printed - readme), sorted(readme - printed)) == ([], []), "printed now / only in the README"

        code, out, err = spotctl("status", job_id, "--local", "--json")
        assert code == 0, err
        view = json.loads(out)
        first, second = view["attempts"]
        assert second["claimed_by"].split("/")[1] == str(cloud["pid"])  # started by the controller, in the cloud
        assert view["state"] == "succeeded" and view["final"]["outcome"] == "succeeded"
        assert (first["end_reason"], first["state_reason"]) == ("interrupted", "Server.SpotInstanceTermination")
        assert (first["instance_type"], first["zone"]) != (second["instance_type"], second["zone"])  # another pool
        assert (
            first["end_step"] >= 8 and second["start_step"] == first["end_step"]
        )  # resumed at the notice's checkpoint: no step lost
        assert second["end_reason"] == "succeeded" and view["progress"]["step"] == view["progress"]["total_steps"]

        cost = view["cost"]
        assert cost["total_usd"] > 0 and 0 < cost["savings"] < 1 and cost["lost_steps"] == 0
        assert cost["attempts"][0]["free_by_first_hour_rule"] is True  # EC2 interrupted it within its first hour
        market = SimulatedMarket(3)  # the same seed: the figures follow from the simulated prices alone
        # Billed from when watch first saw it running (EC2 bills from `running`), else from its launch.
        start, end = (datetime.fromisoformat(second[k]) for k in ("running_at", "ended_at"))
        assert second["launched_at"] <= second["running_at"] <= second["ended_at"]
        expected = attempt_cost(
            2,
            market.history((second["instance_type"], second["zone"]), start, end),
            start,
            end,
            False,
            second["on_demand_price"],
        )
        assert cost["attempts"][1]["instance_usd"] == pytest.approx(expected.instance_usd, abs=1e-6)
        assert cost["instance_usd"] == cost["attempts"][1]["instance_usd"]  # the first was free
        assert cost["ebs_usd"] > 0 and cost["total_usd"] == pytest.approx(
            sum(a["usd"] for a in cost["attempts"]), abs=1e-5
        )  # the volumes are paid for either way
        assert second["spot_price"] == market.price_at(
            (second["instance_type"], second["zone"]), datetime.fromisoformat(second["requested_at"])
        )

        artifacts = view["artifacts"]  # the quickstart's formats, each validated on the instance
        assert {name: entry["status"] for name, entry in artifacts["formats"].items()} == {
            "state_dict": "ok",
            "onnx": "ok",
            "int8": "ok",
        }
        assert (
            artifacts["source"].startswith("best/ (epoch ")
            and 0 < artifacts["checkpoint_step"] <= view["progress"]["total_steps"]
        )
        code, out, _ = spotctl("status", job_id, "--local")
        assert "interrupted (Server.SpotInstanceTermination)" in out and "below on-demand" in out
        assert re.search(
            r"artifacts: state_dict, onnx, int8 \(\d\.\dx smaller, (\d+\.\dx faster|\d+\.\dx slower|as fast as fp32|speed not measured reliably), top-1 \d+%\)",
            out,
        ), out
        code, out, err = spotctl("artifacts", job_id, "--local", "--download", str(tmp_path / "model"))
        assert code == 0, err
        assert (
            sorted(p.name for p in (tmp_path / "model").iterdir())
            == sorted(artifacts["files"])
            == ["model.int8.pt", "model.json", "model.onnx", "model.safetensors"]
        )
        assert len(out.splitlines()) == 4 and all(line.endswith("... verified") for line in out.splitlines())

        # Kept across a restart: the job reads the same, priced by the same market (the kept seed).
        code, out, _ = spotctl("local", "down", "--keep")
        assert code == 0 and re.fullmatch(
            rf"local cloud stopped; kept 1 job, 1 wheel and 250 objects of data \(datasets/shapes\); \d+ objects, "
            rf"[\d.]+ MiB in all in {re.escape(str(local_home / 'local' / 'kept'))}: the next `spotctl local up` puts them back\n",
            out,
        ), out
        assert refused(cloud["endpoint"])
        code, out, err = spotctl("local", "up")
        assert code == 0 and out.splitlines()[0].endswith(", market seed 3)"), err  # the kept cloud's seed
        assert out.splitlines()[1].startswith(
            "restored from `spotctl local down --keep`: 1 job, 1 wheel and 250 objects of data (datasets/shapes); "
        )
        cloud = json.loads((local_home / "local" / "local.json").read_text())  # endpoint, control
        code, out, _ = spotctl("status", job_id, "--local", "--json")
        kept = json.loads(out)

        def recorded(attempts):  # without EC2's live view of the last instance: a new EC2 no longer lists it
            return [{k: v for k, v in a.items() if k != "instance_state"} for a in attempts]

        assert (kept["state"], recorded(kept["attempts"]), kept["cost"]["total_usd"]) == (
            "succeeded",
            recorded(view["attempts"]),
            cost["total_usd"],
        )
    finally:
        code, out, _ = spotctl("local", "down")
    assert code == 0 and re.fullmatch(
        r"local cloud stopped; deleted 1 job, 1 wheel and 250 objects of data \(datasets/shapes\); \d+ objects, "
        r"[\d.]+ MiB in all \(`spotctl local down --keep` keeps them for the next `up`\)\n",
        out,
    ), out
    assert refused(cloud["endpoint"]) and refused(cloud["control"])
    assert processes_mentioning(str(local_home)) == []
    assert not os.path.exists(local_home / "local" / "local.json")
    code, out, _ = spotctl("local", "status")
    assert code == 1 and out.startswith("no local cloud running") and len(out.splitlines()) == 1  # nothing kept


def test_the_market_is_reproducible_from_its_seed_and_priced_like_spot():
    from datetime import timedelta, timezone

    from orchestrator.local.market import DISCOUNT, STEP_S, WOBBLE

    at = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    pools = [(t, z) for t in ("g4dn.xlarge", "g5.xlarge", "g6.xlarge") for z in ("us-east-1a", "us-east-1b")]
    seven, again, other = SimulatedMarket(7), SimulatedMarket(7), SimulatedMarket(8)
    assert [seven.price_at(p, at) for p in pools] == [again.price_at(p, at) for p in pools]
    assert [seven.price_at(p, at) for p in pools] != [other.price_at(p, at) for p in pools]
    for pool in pools:
        on_demand = seven.on_demand(pool[0]).usd_per_hour
        assert (
            DISCOUNT[0] - WOBBLE / 2 <= seven.price_at(pool, at) / on_demand <= DISCOUNT[1] + WOBBLE / 2
        )  # 50-75 % below on-demand
    history = seven.history(pools[0], at + timedelta(seconds=10), at + timedelta(seconds=3 * STEP_S))
    assert [p.at for p in history] == [
        at + timedelta(seconds=k * STEP_S) for k in range(3)
    ]  # the price in force at the start, then each change
    assert (
        len({p.usd_per_hour for p in history}) > 1
        and seven.history(("p9.unknown", "us-east-1a"), at, at + timedelta(hours=1)) == []
    )


@pytest.mark.slow
def test_a_machine_terminated_through_ec2_takes_its_process_with_it(local_home, tmp_path, spotctl, monkeypatch):
    code, out, err = spotctl("local", "up")
    assert code == 0, err
    assert out.splitlines()[1] == (
        "the local cloud is new: bucket spotctl-local holds no data; `spotctl local data shapes` uploads the quickstart's"
    )
    cloud = json.loads((local_home / "local" / "local.json").read_text())  # endpoint, control
    try:
        point_aws_tools_at_the_local_cloud(spotctl, monkeypatch)
        from trainer.sample_data import render

        render("s3://spotctl-local/datasets/shapes", per_split={"train": 24, "val": 6})
        spec = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
        spec["train"]["epochs"] = 200  # still training when it is stopped
        job = tmp_path / "long.yaml"
        job.write_text(yaml.safe_dump(spec))
        code, out, err = spotctl("launch", str(job), "--local")
        assert code == 0, err
        job_id = out.split()[1].rstrip(":")
        machines = _wait_for(lambda: json.loads(spotctl("local", "status", "--json")[1])["machines"])
        pid = machines[0]["pid"]
        code, out, err = spotctl("stop", job_id, "--local", "--wait", "1")
        assert code == 0, err
        _wait_for(lambda: not json.loads(spotctl("local", "status", "--json")[1])["machines"])
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        code, out, _ = spotctl("status", job_id, "--local", "--json")
        assert json.loads(out)["state"] == "cancelled"

        # The market's own interruptions: at this rate the next machine is taken back within a poll.
        code, out, _ = spotctl("local", "up", "--interrupt-rate", "1000000", "--refuse-pool", "p3.2xlarge/*")
        assert code == 0 and out.splitlines()[1] == (
            "changed: --interrupt-rate 0 -> 1000000; --refuse-pool none -> p3.2xlarge/*"
        )
        lines = spotctl("local", "status")[1].splitlines()
        assert "at random 1000000 per instance-hour" in lines[1]
        assert lines[2] == "strictness: AWS's answers, changed from the defaults: refused_pools p3.2xlarge/*"
        code, out, err = spotctl("launch", str(job), "--local")
        assert code == 0, err
        taken = out.split()[1].rstrip(":")
        view = _wait_for(
            lambda: (v := json.loads(spotctl("status", taken, "--local", "--json")[1]))["state"] == "interrupted" and v
        )
        assert view["attempts"][0]["state_reason"] == "Server.SpotInstanceTermination"
    finally:
        spotctl("local", "down")
    assert refused(cloud["endpoint"])


def _wait_for(condition, timeout_s: float = 60.0):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out waiting")
