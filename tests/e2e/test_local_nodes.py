"""compute.nodes: 2 on the local cloud: two local machines (two process groups, each listening on a
loopback port of its own) meet through the bucket, run one torchrun each (gloo over 127.0.0.1), and
train one job to success; the record holds both nodes by rank, the rendezvous both registrations.
Node 1 is interrupted on the way: only it is replaced, node 0 keeps its machine (its instance id in
attempt 2 is attempt 1's) and joins attempt 2 as the same rank, and the job still succeeds, its final
checkpoint (model and optimizer) bitwise equal to an uninterrupted run of the same job file on the same
data: the real trainer under torchrun as 2 ranks of one machine (world size 2 as well)."""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from testbed import REPO
from testbed.trainer_runs import final_state, optimizer_digest, run_trainer, tensor_digest, trainer_env
from tests.e2e.test_local_cloud import local_home, point_aws_tools_at_the_local_cloud  # noqa: F401
from trainer.job import layout

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
        beat_key = f"spotctl/{layout.in_job(job_id, layout.HEARTBEAT)}"
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
                s3.get_object(Bucket=BUCKET, Key=f"spotctl/{layout.in_job(job_id, layout.node_join(1, r))}")[
                    "Body"
                ].read()
            )
            for r in (0, 1)
        ]
        assert [j["instance_id"] for j in joins] == [n["instance_id"] for n in attempt["nodes"]]
        assert {j["host"] for j in joins} == {"127.0.0.1"} and joins[0]["port"] != joins[1]["port"]

        # The uninterrupted reference: the job file as launched (its own storage) on the same data in the
        # bucket, under torchrun as 2 gloo ranks of one machine: world size 2 either way, the same global
        # ranks. Each node's trainer ran with torch's default CPU threads (torchrun sets
        # OMP_NUM_THREADS=1 only for 2+ processes per node): the reference uses the count the job
        # recorded, as a convolution's sums may differ in the last bits with another.
        trained = final_state(layout.job_prefix(f"s3://{BUCKET}/spotctl", job_id))
        launched = yaml.safe_load(
            s3.get_object(Bucket=BUCKET, Key=f"spotctl/{layout.in_job(job_id, layout.JOB_FILE)}")["Body"].read()
        )
        launched["storage"] = str(tmp_path / "reference")
        reference_job = tmp_path / "reference.yaml"
        reference_job.write_text(yaml.safe_dump(launched))
        aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        env = trainer_env(
            {**aws, "SPOTCTL_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": str(trained["threads"])}
        )
        log = tmp_path / "reference.log"
        assert run_trainer(str(reference_job), env, log=log, ranks=2) == 0, log.read_text()[-3000:]
        reference = final_state(layout.job_prefix(f"{tmp_path}/reference", launched["name"]))
        assert trained["position"] == reference["position"] and trained["threads"] == reference["threads"]
        assert tensor_digest(trained["model"]) == tensor_digest(reference["model"])
        assert optimizer_digest(trained["optimizer"]) == optimizer_digest(reference["optimizer"])
    finally:
        spotctl("local", "down")
