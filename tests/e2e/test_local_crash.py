"""A trainer SIGKILLed on the local cloud (what the OOM killer does): the bootstrap reports the crash,
the machine shuts itself down, and `spotctl watch` recovers the job from its last checkpoint on a
new machine; the job succeeds, with the first attempt's end recorded as `crashed` and how."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from testbed import REPO
from tests.e2e.test_local_cloud import _wait_for, local_home, point_aws_tools_at_the_local_cloud  # noqa: F401

BUCKET = "spotctl-local"


def heartbeat(job_id: str) -> dict | None:
    import boto3

    try:
        body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/status/heartbeat.json")
    except Exception:
        return None
    return json.loads(body["Body"].read())


@pytest.mark.slow
def test_a_sigkilled_trainer_is_recovered_from_its_last_checkpoint_and_the_job_succeeds(
    local_home,  # noqa: F811
    tmp_path,
    spotctl,
    monkeypatch,
):
    import boto3

    code, out, err = spotctl("local", "up", "--seed", "3", "--no-controller")  # the watch recovers it here
    assert code == 0, err
    try:
        point_aws_tools_at_the_local_cloud(spotctl, monkeypatch)
        from trainer.sample_data import render

        render(f"s3://{BUCKET}/datasets/shapes", per_split={"train": 8, "val": 2}, size=32)  # 5 steps an epoch
        spec = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
        spec["train"].update(epochs=12, batch_size=8, checkpoint={"every_steps": 3, "keep": 2})
        spec["train"]["data"].update(image_size=32, workers=0)
        spec["train"]["export"] = {"formats": ["state_dict"]}
        job = tmp_path / "crash.yaml"
        job.write_text(yaml.safe_dump(spec))
        code, out, err = spotctl("launch", str(job), "--local")
        assert code == 0, err
        job_id = out.split()[1].rstrip(":")

        # Killed once it has checkpointed and trains on: the heartbeat's step, not a time, says when.
        try:
            beat = _wait_for(
                lambda: (
                    (b := heartbeat(job_id))
                    and b.get("attempt") == 1
                    and (b.get("last_checkpoint_step") or 0) >= 3
                    and b.get("phase") == "training"
                    and b
                ),
                timeout_s=180,
            )
        except AssertionError:
            raise AssertionError(f"{heartbeat(job_id)}\n{spotctl('status', job_id, '--local')[1]}") from None
        assert beat["step"] < beat["total_steps"]
        assert beat["mem_rss_peak_gib"] > 0 and beat["host_mem_total_gib"] > beat["host_mem_used_peak_gib"] > 0
        code, out, err = spotctl("local", "crash", job_id)
        assert code == 0, err
        assert re.fullmatch(
            rf"SIGKILL sent to the trainer of i-\w+ \(job {job_id} attempt 1, pid {beat['pid']}\)\n", out
        ), out

        code, out, err = spotctl("watch", job_id, "--local", "--poll", "1")
        assert code == 0, err + out[-3000:]
        ended = re.search(
            r"attempt 1 on \S+ \S+ ended: crashed \(Client.InstanceInitiatedShutdown\) at step (\d+): "
            r"killed by SIGKILL \(exit 137\)",
            out,
        )
        assert ended, out
        assert "resuming from the latest checkpoint: attempt 2" in out

        code, out, err = spotctl("status", job_id, "--local", "--json")
        assert code == 0, err
        view = json.loads(out)
        first, second = view["attempts"]
        assert view["state"] == "succeeded" and view["final"]["outcome"] == "succeeded"
        assert (first["end_reason"], first["state_reason"]) == ("crashed", "Client.InstanceInitiatedShutdown")
        assert first["end_detail"].startswith("killed by SIGKILL (exit 137): ")
        assert "at the last heartbeat" in first["end_detail"]  # the memory figures it died with
        # From its last checkpoint (every 3 steps and each epoch's end): the one seen before the kill, or a later one.
        assert beat["last_checkpoint_step"] <= second["start_step"] <= first["end_step"] == int(ended.group(1))
        assert second["end_reason"] == "succeeded"
        report = json.loads(
            boto3.client("s3")
            .get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/status/crash-attempt-1.json")["Body"]
            .read()
        )
        assert (report["attempt"], report["exit_code"], report["signal"]) == (1, 137, "SIGKILL")
        code, out, _ = spotctl("status", job_id, "--local")
        # The attempts table's last column, however the terminal wraps it.
        assert "crashed (Client.InstanceInitiatedShutdown): killed by SIGKILL (exit 137)" in " ".join(out.split()), out
    finally:
        spotctl("local", "down")
