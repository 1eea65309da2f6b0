"""compute.nodes: 2 on the local cloud: two local machines (two process groups, each listening on a
loopback port of its own) meet through the bucket, run one torchrun each (gloo over 127.0.0.1), and
train one job to success; the record holds both nodes by rank, the rendezvous both registrations.
Node 1 is interrupted on the way: only it is replaced, node 0 keeps its machine (its instance id in
attempt 2 is attempt 1's) and joins attempt 2 as the same rank, and the job still succeeds."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from testbed import REPO
from tests.e2e.test_local_cloud import local_home, point_aws_tools_at_the_local_cloud  # noqa: F401

BUCKET = "spotctl-local"


@pytest.mark.slow
def test_two_local_nodes_train_one_job_to_success(local_home, tmp_path, spotctl, monkeypatch):  # noqa: F811
    import boto3
    import botocore.exceptions

    code, out, err = spotctl("local", "up", "--seed", "3")
    assert code == 0, err
    try:
        point_aws_tools_at_the_local_cloud(spotctl, monkeypatch)
        from trainer.sample_data import render

        render(f"s3://{BUCKET}/datasets/shapes", per_split={"train": 8, "val": 2}, size=32)
        spec = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
        spec["compute"]["nodes"] = 2
        spec["train"].update(epochs=2, batch_size=8, checkpoint={"every_steps": 2, "keep": 2})
        spec["train"]["data"].update(image_size=32, workers=0)
        spec["train"]["export"] = {"formats": ["state_dict"]}
        job = tmp_path / "nodes.yaml"
        job.write_text(yaml.safe_dump(spec))
        code, out, err = spotctl("launch", str(job), "--local")
        assert code == 0, err
        job_id = out.split()[1].rstrip(":")
        assert " 2 x " in out

        s3 = boto3.client("s3")
        beat_key = f"spotctl/jobs/{job_id}/status/heartbeat.json"
        deadline = time.monotonic() + 600
        while True:  # node 1 goes once the job has trained a checkpointed step
            try:
                beat = json.loads(s3.get_object(Bucket=BUCKET, Key=beat_key)["Body"].read())
            except botocore.exceptions.ClientError:  # not written yet (the strict local cloud answers 403)
                beat = {}
            if (beat.get("step") or 0) >= 2:
                break
            assert time.monotonic() < deadline, "the two nodes never trained two steps"
            time.sleep(1)
        code, out, err = spotctl("status", job_id, "--local", "--json")
        first = json.loads(out)["attempts"][0]["nodes"]
        code, out, err = spotctl("local", "interrupt", first[1]["instance_id"], "--notice", "2")
        assert code == 0, err

        code, out, err = spotctl("watch", job_id, "--local", "--poll", "1")
        assert code == 0, err + out[-3000:]
        code, out, err = spotctl("status", job_id, "--local", "--json")
        document = json.loads(out)
        assert document["state"] == "succeeded", out
        attempt, second = document["attempts"]
        assert [n["rank"] for n in attempt["nodes"]] == [0, 1]
        assert [(n["lost"], n["kept"]) for n in attempt["nodes"]] == [(False, False), (True, False)]
        assert [(n["rank"], n["kept"]) for n in second["nodes"]] == [(0, True), (1, False)]
        assert second["nodes"][0]["instance_id"] == attempt["nodes"][0]["instance_id"]  # the survivor's machine
        assert second["nodes"][1]["instance_id"] != attempt["nodes"][1]["instance_id"]
        joins = [
            json.loads(
                s3.get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/rendezvous/attempt-1/node-{r}.json")[
                    "Body"
                ].read()
            )
            for r in (0, 1)
        ]
        assert [j["instance_id"] for j in joins] == [n["instance_id"] for n in attempt["nodes"]]
        assert {j["host"] for j in joins} == {"127.0.0.1"} and joins[0]["port"] != joins[1]["port"]
    finally:
        spotctl("local", "down")
