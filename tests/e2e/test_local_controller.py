"""Issue 18's two end-to-end tests on the local cloud: with the controller deployed (`spotctl local
up`'s default) a job launched without --watch, with no spotctl process of the user running, is
recovered from a spot interruption by the controller: by EC2's events, and with those lost, by the
schedule's tick. They need orchestrator.controller (the controller's branch)."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import yaml

from testbed import REPO
from tests.e2e.test_local_cloud import local_home, point_aws_tools_at_the_local_cloud, processes_mentioning

__all__ = ["local_home"]  # the fixture, used by name

CONTROLLER = importlib.util.find_spec("orchestrator.controller") is not None
RECOVERY_WAIT_S = 900.0  # the most these wait on the job's documents; never asserted on


@pytest.mark.slow
@pytest.mark.skipif(not CONTROLLER, reason="needs orchestrator.controller (the controller's branch)")
@pytest.mark.parametrize("events", [True, False], ids=["by-events", "by-tick-with-events-lost"])
def test_the_controller_recovers_a_job_nobody_watches(local_home, tmp_path, spotctl, monkeypatch, events):
    up = ["local", "up", "--seed", "3", "--interrupt-at-step", "4", "--notice", "5", "--tick", "3", "--json"]
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
        job = tmp_path / "quickstart.yaml"
        job.write_text(yaml.safe_dump(spec))

        code, out, err = spotctl("launch", str(job), "--local")  # no --watch: the controller has it
        assert code == 0, err + out
        job_id = out.split()[1].rstrip(":")
        assert processes_mentioning(" watch") == []  # no spotctl process of the user's runs from here on

        deadline, view = time.monotonic() + RECOVERY_WAIT_S, {}
        while time.monotonic() < deadline and view.get("state") not in ("succeeded", "failed", "cancelled"):
            time.sleep(2)
            code, out, _ = spotctl("status", job_id, "--local", "--json")
            view = json.loads(out) if code == 0 else {}
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
    finally:
        spotctl("local", "down")
