"""Issue 18's two end-to-end tests on the local cloud: with the controller deployed (`spotctl local
up`'s default) a job launched without --watch, with no spotctl process of the user running, is
recovered from a spot interruption by the controller: by EC2's events, and with those lost, by the
schedule's tick. The controller also sends the job's notifications to a webhook receiver, each once,
with cost and savings on the last, and the webhook's URL shows up nowhere else (status, logs,
user-data, the local cloud's files). They need orchestrator.controller (the controller's branch)."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import time

import boto3
import pytest
import yaml

from testbed import REPO
from testbed.webhook import WebhookReceiver
from tests.e2e.test_local_cloud import local_home, point_aws_tools_at_the_local_cloud, processes_mentioning
from trainer.job.units import rate

__all__ = ["local_home"]  # the fixture, used by name

CONTROLLER = importlib.util.find_spec("orchestrator.controller") is not None
RECOVERY_WAIT_S = 900.0  # the most these wait on the job's documents; never asserted on
TOKEN = "T000/B000/controller-secret"  # in the webhook's URL: must appear nowhere but where it is sent
# Each event once: the notice, the checkpoint the trainer saved on it, the attempt the controller
# started, the end (no step lost: attempt 2 resumes from the notice's checkpoint). The checkpoint's may
# come before or after the next attempt's: whichever the controller saw first (the trainer's word, or
# EC2 taking the machine).
# The notice gives 15 s (AWS: 120 s): room for the save on a loaded 2-core machine.
EXPECTED = ["notice:1", "checkpoint:1", "attempt:2", "end"]


@pytest.mark.slow
@pytest.mark.skipif(not CONTROLLER, reason="needs orchestrator.controller (the controller's branch)")
@pytest.mark.parametrize("events", [True, False], ids=["by-events", "by-tick-with-events-lost"])
def test_the_controller_recovers_a_job_nobody_watches(local_home, tmp_path, spotctl, monkeypatch, events):
    with WebhookReceiver() as receiver:
        _recovered_and_notified(local_home, tmp_path, spotctl, monkeypatch, events, receiver)


def _recovered_and_notified(local_home, tmp_path, spotctl, monkeypatch, events, receiver):
    up = ["local", "up", "--seed", "3", "--interrupt-at-step", "4", "--notice", "15", "--tick", "3", "--json"]
    code, out, err = spotctl(*up, *([] if events else ["--no-events"]))
    assert code == 0, err
    cloud = json.loads(out)
    try:
        point_aws_tools_at_the_local_cloud(spotctl, monkeypatch)
        code, _, err = spotctl("local", "data", "shapes", "--per-class", "16", "--size", "32")
        assert code == 0, err
        spec = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
        spec["train"]["epochs"] = 3
        spec["train"]["checkpoint"] = {"every_steps": 2, "keep": 2}
        spec["notify"] = {"targets": [{"webhook": receiver.url("/hook/" + TOKEN)}]}
        job = tmp_path / "quickstart.yaml"
        job.write_text(yaml.safe_dump(spec))

        code, out, err = spotctl("launch", str(job), "--local")  # no --watch: the controller has it
        assert code == 0, err + out
        job_id = out.split()[1].rstrip(":")
        assert re.search(
            r"^the controller \(last tick \d+s ago\) looks after it: interruptions are recovered", out, re.M
        )
        printed = out + err
        assert processes_mentioning(" watch") == []  # no spotctl process of the user's runs from here on

        deadline, view = time.monotonic() + RECOVERY_WAIT_S, {}
        while time.monotonic() < deadline and view.get("state") not in ("succeeded", "failed", "cancelled"):
            time.sleep(2)
            code, out, _ = spotctl("status", job_id, "--local", "--json")
            view = json.loads(out) if code == 0 else {}
            printed += out
            if view.get("state") not in (None, "succeeded", "failed", "cancelled"):
                assert view["care"]["by"] == "controller", view["care"]  # status says who looks after it
        assert view["state"] == "succeeded", view
        first, second = view["attempts"]
        assert (first["end_reason"], first["state_reason"]) == ("interrupted", "Server.SpotInstanceTermination")
        # The next attempt was claimed by the handler, which runs in the local cloud's process.
        assert second["claimed_by"].split("/")[1] == str(cloud["pid"]), second

        code, out, _ = spotctl("local", "status", "--json")
        controller = json.loads(out)["controller"]
        assert controller["deployed"] and controller["handler_errors"] == 0 and controller["dead_letters"] == 0
        if events:
            assert controller["published"] >= 3 and controller["suppressed"] == 0  # warning, shutting-down, terminated
        else:
            assert controller["published"] == 0 and controller["suppressed"] >= 3 and controller["ticks"] >= 1

        # The notifications, sent by the controller: each event once (the end once its machine is gone).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "end" not in [b["key"] for b in receiver.bodies("/hook/" + TOKEN)]:
            time.sleep(1)
        time.sleep(2 * 3)  # two more ticks: nothing is sent again
        bodies = {b["key"]: b for b in receiver.bodies("/hook/" + TOKEN)}
        sent = [b["key"] for b in receiver.bodies("/hook/" + TOKEN)]
        assert (sent[0], sorted(sent), sent[-1]) == ("notice:1", sorted(EXPECTED), "end"), sent
        assert bodies["checkpoint:1"]["fields"] == {"attempt": "1", "steps saved": str(second["start_step"])}
        started = bodies["attempt:2"]["fields"]
        assert started["pool"] == f"{second['instance_type']} {second['zone']}"
        assert started["spot price"] == rate(second["spot_price"])
        end = bodies["end"]
        assert end["event"] == "succeeded" and set(end["fields"]) >= {
            "val_acc1",
            "best",
            "total cost",
            "savings",
            "artifacts",
        }
        assert re.fullmatch(r"val_acc1 [\d.]+ \(epoch \d\)", end["fields"]["best"]), end["fields"]
        code, out, _ = spotctl("status", job_id, "--local", "--json")
        cost = json.loads(out)["cost"]
        assert abs(float(end["fields"]["total cost"].removeprefix("$")) - cost["total_usd"]) < 1e-4
        percent, on_demand = re.fullmatch(r"(\d+)% vs on-demand \$([\d.]+)", end["fields"]["savings"]).groups()
        assert abs(int(percent) - 100 * cost["savings"]) <= 1 and abs(float(on_demand) - cost["on_demand_usd"]) < 1e-3
        assert re.fullmatch(r"\d+ files \(int8, onnx, state_dict\), [\d.]+ MB", end["fields"]["artifacts"])
        record = json.loads(_s3_text(f"spotctl/jobs/{job_id}/record.json"))
        assert {slot: mark["state"] for slot, mark in record["notified"].items()} == {
            f"{k}@0": "sent" for k in EXPECTED
        }
        assert all(mark["by"].split("/")[1] == str(cloud["pid"]) for mark in record["notified"].values())

        # The URL is where the controller reads it, and nowhere else.
        assert TOKEN in _s3_text(f"spotctl/secrets/{job_id}/notify.json")
        for what in ("status", job_id, "--local"), ("status", job_id, "--local", "--json"), ("status", "--local"):
            printed += "".join(spotctl(*what)[1:])
        s3 = boto3.client("s3")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="spotctl-local", Prefix=f"spotctl/jobs/{job_id}/")
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        documents = [k for k in keys if not re.search(r"/(checkpoints|best|artifacts)/", k)]  # not the tensors
        assert {f"spotctl/jobs/{job_id}/logs/attempt-1.log", f"spotctl/jobs/{job_id}/job.yaml"} <= set(documents)
        printed += "".join(_s3_text(key) for key in documents)  # record, job.yaml, logs, heartbeat, metrics
        ec2 = boto3.client("ec2")
        for instance_id in (first["instance_id"], second["instance_id"]):
            data = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
            user_data = base64.b64decode(data["UserData"]["Value"]).decode()
            assert user_data.startswith("#!"), user_data[:200]
            printed += user_data
        files = [p for p in local_home.rglob("*") if p.is_file()]  # the daemon's and controller's logs, instances
        assert any(p.name == "controller.log" for p in files)
        leaked = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
        assert TOKEN not in printed and leaked == []
    finally:
        spotctl("local", "down")


def _s3_text(key: str) -> str:
    return boto3.client("s3").get_object(Bucket="spotctl-local", Key=key)["Body"].read().decode(errors="replace")
