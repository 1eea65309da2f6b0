"""spotctl offers / launch / status / stop / logs against a moto server, checked the way an independent
client sees EC2 and S3 (plain boto3 calls, not the project's helpers)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest

from orchestrator.aws.prices import FixedPrices
from orchestrator.cli import context
from tests.cloud import BUCKET, EXAMPLE, MARKET, ON_DEMAND, STORAGE, hook_run_instances, launched_id, settled_ec2


def user_data_of(instance_id: str) -> str:
    attribute = settled_ec2().describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(attribute["UserData"]["Value"]).decode()


# ------------------------------------------------------------------------------------------- offers
def test_offers_are_ranked_by_spot_price_with_savings(account, spotctl):
    code, out, err = spotctl("offers", str(EXAMPLE), "--json")
    assert code == 0, err
    offers, dropped = json.loads(out)["offers"], json.loads(out)["dropped"]
    assert dropped == [
        {"instance_type": "g4dn.xlarge", "zone": "us-east-1c", "reason": "no spot price (no spot capacity offered)"},
        {
            "instance_type": "g6.xlarge",
            "zone": "us-east-1b",
            "reason": "spot $0.7200/h is above max_price_per_hour $0.6",
        },
    ]
    assert [(o["instance_type"], o["zone"]) for o in offers][:3] == [
        ("g4dn.xlarge", "us-east-1a"),
        ("g4dn.xlarge", "us-east-1b"),
        ("g6.xlarge", "us-east-1a"),
    ]
    assert ("g6.xlarge", "us-east-1b") not in [(o["instance_type"], o["zone"]) for o in offers]  # $0.72 > max 0.60
    assert offers[0]["gpus"] == 1 and offers[0]["gpu_model"] == "T4" and offers[0]["gpu_memory_gib"] == 16.0
    assert offers[0]["saving"] == pytest.approx(1 - 0.21 / 0.526)
    code, out, _ = spotctl("offers", str(EXAMPLE))
    lines = out.splitlines()
    assert lines[1].split() == [
        "type",
        "GPUs",
        "GPU",
        "GPU",
        "memory",
        "vCPUs",
        "memory",
        "zone",
        "spot",
        "$/h",
        "on-demand",
        "$/h",
        "saving",
    ]
    assert lines[3].split() == [
        "g4dn.xlarge", "1", "T4", "16", "GiB", "4", "16", "GiB", "us-east-1a", "$0.2100", "$0.5260", "60%"
    ]  # fmt: skip
    assert "2 pools dropped, e.g. g4dn.xlarge in us-east-1c: no spot price (no spot capacity offered)" in out


def test_offers_price_every_node(account, spotctl, tmp_path):
    """compute.nodes: 3 prices three instances: the per-instance price stays, the total is beside it."""
    path = tmp_path / "job.yaml"
    path.write_text(EXAMPLE.read_text().replace("  disk_gib: 120\n", "  disk_gib: 120\n  nodes: 3\n"))
    code, out, err = spotctl("offers", str(path), "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["nodes"] == 3
    first = found["offers"][0]
    assert (first["instance_type"], first["spot_price"], first["spot_price_all_nodes"]) == ("g4dn.xlarge", 0.21, 0.63)
    code, out, err = spotctl("offers", str(path))
    assert code == 0, err
    assert "prices are per instance-hour, the last column for all 3 nodes (compute.nodes)" in out
    assert "x 3 nodes" in out
    row = next(line for line in out.splitlines() if "us-east-1a" in line and "g4dn.xlarge" in line)
    assert row.split()[-1] == "$0.6300"


def job_file(tmp_path, instance_types: str | None = None, ami: str | None = None) -> str:
    """The example with other compute.instance_types (a YAML list, or a `gpu:` mapping) and AMI."""
    text = EXAMPLE.read_text()
    if instance_types:
        text = text.replace("instance_types: [g5.xlarge, g6.xlarge, g4dn.xlarge]", instance_types)
    if ami:
        text = text.replace("  disk_gib: 120\n", f"  disk_gib: 120\n  ami: {ami}\n")
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


def register_image(name: str, description: str) -> str:
    return boto3.client("ec2").register_image(
        Name=name,
        Description=description,
        Architecture="x86_64",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 60}}],
    )["ImageId"]


def test_types_the_default_ami_cannot_drive_are_never_offered_even_when_cheapest(
    account, spotctl, monkeypatch, tmp_path
):
    cheap = {
        ("p3dn.24xlarge", "us-east-1c"): 0.01,
        ("g6f.large", "us-east-1a"): 0.01,
        ("gr6f.4xlarge", "us-east-1a"): 0.01,
    }
    cheap[("hpc7a.12xlarge", "us-east-1a")] = 0.01
    monkeypatch.setattr(context, "aws_prices", lambda cloud: FixedPrices({**MARKET, **cheap}, ON_DEMAND))
    job = job_file(tmp_path, "instance_types: [p3dn.24xlarge, g6f.large, gr6f.4xlarge, hpc7a.12xlarge, g4dn.xlarge]")
    code, out, err = spotctl("offers", job, "--json")
    assert code == 0, err
    found = json.loads(out)
    assert {o["instance_type"] for o in found["offers"]} == {"g4dn.xlarge"}
    assert found["excluded"] == [
        {"instance_type": "p3dn.24xlarge", "reason": "the AMI does not support the p3dn family"},  # V100
        {"instance_type": "g6f.large", "reason": "1/8 of one L4 GPU: a fractional GPU needs NVIDIA's GRID driver"},
        {"instance_type": "gr6f.4xlarge", "reason": "1/2 of one L4 GPU: a fractional GPU needs NVIDIA's GRID driver"},
        {"instance_type": "hpc7a.12xlarge", "reason": "EC2 does not sell it as spot (SupportedUsageClasses)"},
    ]
    assert found["ami"] == {
        "id": account,
        "name": "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.12 (Ubuntu 24.04) 20260822",
        "families": ["g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"],
        "families_from": "its description",
        "pytorch": "2.12",
        "end_of_patch": "2027-05-13",
    }
    assert found["notes"] == [] and err == ""
    code, out, _ = spotctl("offers", job)
    assert (
        f"AMI {account} (Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.12 (Ubuntu 24.04) 20260822) supports "
        "g4dn, g5, g6, g6e, gr6, p4d, p4de, p5, p5e, p5en, p6-b200 (from its description)\n"
        "4 instance types not considered:\n"
        "  p3dn.24xlarge: the AMI does not support the p3dn family\n"
    ) in out


def test_a_gpu_requirement_offers_only_what_the_default_ami_drives(account, spotctl, monkeypatch, tmp_path):
    monkeypatch.setattr(
        context,
        "aws_prices",
        lambda cloud: FixedPrices({("p3dn.24xlarge", "us-east-1c"): 0.01, ("p4d.24xlarge", "us-east-1a"): 0.5}, {}),
    )
    code, out, err = spotctl("offers", job_file(tmp_path, "gpu: {count: 8}"), "--json")
    assert code == 0, err
    found = json.loads(out)
    assert [(o["instance_type"], o["zone"]) for o in found["offers"]] == [("p4d.24xlarge", "us-east-1a")]
    excluded = {e["instance_type"]: e["reason"] for e in found["excluded"]}
    assert excluded["p3dn.24xlarge"] == "the AMI does not support the p3dn family"
    assert excluded["p6-b300.48xlarge"] == "the AMI does not support the p6-b300 family"
    assert "p6-b200.48xlarge" not in excluded and "g6e.48xlarge" not in excluded


def test_a_custom_ami_is_not_filtered_by_family_and_offers_says_so(account, spotctl, monkeypatch, tmp_path):
    ami = register_image("my-training-image", "built by packer")
    monkeypatch.setattr(
        context, "aws_prices", lambda cloud: FixedPrices({**MARKET, ("p3dn.24xlarge", "us-east-1c"): 0.01}, ON_DEMAND)
    )
    code, out, err = spotctl("offers", job_file(tmp_path, "instance_types: [p3dn.24xlarge, g4dn.xlarge]", ami))
    assert code == 0, err
    assert out.splitlines()[3].split()[:2] == ["p3dn.24xlarge", "8"]  # named, so offered: the AMI is the user's
    assert f"AMI {ami} (my-training-image): supported instance types unknown" in out
    assert err.splitlines() == [
        f"warning: compute.ami {ami} (my-training-image) does not say which instance types it supports, so offers "
        "are not filtered by AMI; make sure its NVIDIA driver runs the GPUs offered"
    ]


def test_launch_warns_about_a_dlami_past_its_end_of_patch_and_goes_on(account, spotctl, tmp_path):
    ami = register_image(
        "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.9 (Ubuntu 24.04) 20260317",
        "Supported EC2 instances: G4dn, G5, G6, Gr6, G6e, P4, P4de, P5, P5e, P5en, P6-B200. PyTorch-2.9. Release notes: x",
    )
    code, out, err = spotctl("launch", job_file(tmp_path, ami=ami), "--dry-run")
    assert code == 0, err
    assert f"(AMI {ami})" in out
    assert err.splitlines() == [
        f"warning: compute.ami {ami} (Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.9 (Ubuntu 24.04) 20260317): "
        "AWS stopped patching the PyTorch 2.9 DLAMI on 2026-10-15 "
        "(https://docs.aws.amazon.com/dlami/latest/devguide/dlami-support-policy-table.html, as of 2026-12-01); "
        "a supported one: ssm:/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.12-ubuntu-24.04/latest/ami-id"
    ]


# ------------------------------------------------------------------------------------------- launch
def test_launch_starts_a_spot_instance_as_ec2_and_s3_see_it(account, spotctl):
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    job_id = launched_id(out)
    assert re.fullmatch(r"flowers-resnet50-\d{6}-[0-9a-f]{4}", job_id)
    assert f"launched {job_id}: g4dn.xlarge in us-east-1a at $0.2100/h spot, 60% below on-demand" in out
    assert out.splitlines()[1:] == [  # the launch remembered the root: no flags needed
        f"follow it:  spotctl watch {job_id}   (recovers interruptions)",
        f"            spotctl status {job_id}",
        f"            spotctl logs {job_id} --follow",
    ]

    ec2 = settled_ec2()
    [instance] = [
        i
        for r in ec2.describe_instances(Filters=[{"Name": "tag:spotctl:job", "Values": [job_id]}])["Reservations"]
        for i in r["Instances"]
    ]
    assert (
        instance["InstanceLifecycle"] == "spot"
        and instance["InstanceType"] == "g4dn.xlarge"
        and instance["ImageId"] == account
    )
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["IamInstanceProfile"]["Arn"].endswith("instance-profile/spotctl-trainer")
    assert ec2.describe_subnets(SubnetIds=[instance["SubnetId"]])["Subnets"][0]["AvailabilityZone"] == "us-east-1a"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags == {"spotctl:job": job_id, "spotctl:attempt": "1", "Name": f"spotctl {job_id} #1"}
    [interface] = instance["NetworkInterfaces"]
    [group] = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in interface["Groups"]])["SecurityGroups"]
    assert group["GroupName"] == "spotctl-no-inbound" and group["IpPermissions"] == []
    volumes = ec2.describe_volumes(Filters=[{"Name": "tag:spotctl:job", "Values": [job_id]}])["Volumes"]
    assert volumes and all(v["Encrypted"] for v in volumes)

    script = user_data_of(instance["InstanceId"])
    assert script.startswith("#!/bin/bash\n") and len(script.encode()) < 16 * 1024
    assert (
        f"JOB_URL={STORAGE}/jobs/{job_id}/job.yaml" in script and '"$PYTHON" -m trainer run --job "$JOB_URL"' in script
    )
    assert re.search(r'"\$\{INSTALL\[@\]\}" -c "\$WORK/constraints.txt" "\$WHEEL\[trainer\]"', script)
    assert "testing" not in script and not re.search(
        r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET", script
    )  # no credentials

    s3 = boto3.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="spotctl/")["Contents"]}
    wheel_key = re.search(r"WHEEL_URL=s3://my-spotctl-bucket/(\S+)", script).group(1)
    assert {f"spotctl/jobs/{job_id}/job.yaml", f"spotctl/jobs/{job_id}/record.json", wheel_key} <= keys
    assert re.fullmatch(r"spotctl/wheels/[0-9a-f]{64}/spotctl-[\d.]+-py3-none-any\.whl", wheel_key)
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/record.json")["Body"].read())
    assert (
        record["attempts"][0]["instance_id"] == instance["InstanceId"] and record["attempts"][0]["spot_price"] == 0.21
    )


def test_capacity_errors_move_on_to_the_next_offer(account, spotctl, monkeypatch):
    refused = []

    def refuse(params):
        if params["InstanceType"] == "g4dn.xlarge":
            refused.append(params["NetworkInterfaces"][0]["SubnetId"])
            return "InsufficientInstanceCapacity" if len(refused) == 1 else "SpotMaxPriceTooLow"
        return None

    hook_run_instances(monkeypatch, refuse)
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    assert len(refused) == 2 and "g6.xlarge in us-east-1a at $0.3300/h" in out


def test_auth_errors_stop_with_a_hint(account, spotctl, monkeypatch):
    hook_run_instances(monkeypatch, lambda params: "UnauthorizedOperation")
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 1
    assert err.splitlines() == [
        "error: AWS refused starting g4dn.xlarge in us-east-1a: UnauthorizedOperation: UnauthorizedOperation (test)",
        "hint: check the credentials and that they allow this call (infra/ has the policy spotctl needs); "
        "`aws sts decode-authorization-message --encoded-message MESSAGE` (the text after 'Encoded authorization "
        "failure message:') says which resource or condition was refused",
    ]


def test_no_offer_under_the_price_cap(account, spotctl, tmp_path):
    job = tmp_path / "cheap.yaml"
    job.write_text(EXAMPLE.read_text().replace("max_price_per_hour: 0.60", "max_price_per_hour: 0.10"))
    code, out, err = spotctl("launch", str(job))
    assert code == 1
    assert err.startswith(
        "error: no spot offer under max_price_per_hour $0.1 for this job (9 pools dropped; the cheapest is g4dn.xlarge in us-east-1a at $0.2100/h)\n"
    )
    assert "hint: raise compute.max_price_per_hour or allow more instance types or zones" in err
    assert boto3.client("ec2").describe_instances()["Reservations"] == []


def test_a_missing_ami_parameter_is_named(aws, spotctl, monkeypatch, wheel):
    monkeypatch.setenv("SPOTCTL_WHEEL", str(wheel))
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    monkeypatch.setattr(context, "aws_prices", lambda cloud: FixedPrices(MARKET, ON_DEMAND))
    code, _, err = spotctl("launch", str(EXAMPLE))
    assert code == 1
    assert err.splitlines() == [
        "error: compute.ami: the SSM parameter /aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.12-ubuntu-24.04/latest/ami-id does not exist in us-east-1",
        "hint: check the region, or set compute.ami to an AMI id (ami-...)",
    ]


def test_missing_credentials_are_one_message(aws, spotctl, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, _, err = spotctl("offers", str(EXAMPLE))
    assert code == 1
    assert err.splitlines()[0] == "error: no AWS credentials found while listing offers"


def test_local_data_cannot_be_launched(account, spotctl, tmp_path):
    job = tmp_path / "local-data.yaml"
    job.write_text(
        EXAMPLE.read_text().replace("s3://my-spotctl-bucket/spotctl/datasets/flowers/train", "./flowers/train")
    )
    code, _, err = spotctl("launch", str(job))
    assert code == 1 and err.startswith(
        f"error: train.data.train is a local path ({tmp_path}/flowers/train); the instance cannot read it"
    )


def test_dry_run_shows_the_plan_and_starts_nothing(account, spotctl):
    code, out, err = spotctl("launch", str(EXAMPLE), "--dry-run")
    assert code == 0, err
    assert re.search(
        r"would launch flowers-resnet50-\S+ on g4dn.xlarge in us-east-1a at \$0.2100/h \(AMI ami-\w+\)", out
    )
    assert '"$PYTHON" -m trainer run --job "$JOB_URL"' in out
    checks = out.split("permission check (DryRun): allowed\nthe account (spotctl doctor):\n")[1].splitlines()
    assert checks[0].startswith("ok       credentials: ") and checks[-1].startswith("ok       disk: 120 GiB")
    assert not [line for line in checks if line.startswith("PROBLEM")]
    assert boto3.client("ec2").describe_instances()["Reservations"] == []
    written = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert [k for k in written if not k.startswith("spotctl/datasets/")] == []  # nothing written besides the data


# ------------------------------------------------------------------------------- status, stop, logs
def test_status_stop_and_logs(account, spotctl):
    code, out, _ = spotctl("launch", str(EXAMPLE))
    job_id = launched_id(out)
    s3 = boto3.client("s3")
    prefix = f"spotctl/jobs/{job_id}"
    heartbeat = {
        "attempt": 1,
        "phase": "training",
        "epoch": 3,
        "epochs": 20,
        "step": 250,
        "total_steps": 2000,
        "steps_per_epoch": 100,
        "eta_s": 1750.0,
        "images_per_sec": 412.0,
        "data_wait_fraction": 0.04,
        "loss": 0.61,
        "acc1": 0.8,
        "lr": 0.009,
        "val_acc1": 0.875,
        "last_checkpoint_step": 200,
        "last_checkpoint_age_s": 30.0,
        "gpu_count": 1,
        "gpu_util_pct": 93.5,
        "gpu_mem_used_gib": 11.2,
        "gpu_mem_total_gib": 15.0,
        "gpu_power_w": 61.0,
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # the ETA is counted from it
    }
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/status/heartbeat.json", Body=json.dumps(heartbeat).encode())
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/logs/attempt-1.log", Body=b"epoch 1/20 done\n")

    code, out, err = spotctl("status", "--storage", STORAGE)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith(job_id))
    assert (
        row.split()
        == [
            job_id,
            "running",
            "1",
            "g4dn.xlarge",
            "us-east-1a",
            "$0.2100/h",
            "epoch",
            "3/20",
            "step",
            "250/2000,",
            "ETA",
            "29m",
            row.split()[12],  # 1750 s at the heartbeat, less the seconds since: 10s, 9s, ...
            "87.5%",
            *row.split()[-4:-1],  # the cost so far (a minute's minimum and seconds of volume) and the age: "0s ago"
            "nobody",  # no controller ticks and no watch runs: who looks after it
        ]
    )
    assert re.fullmatch(r"\d+s", row.split()[12]) and row.split()[-4].startswith("$") and row.split()[-2] == "ago"
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
    view = json.loads(out)
    assert view["state"] == "running" and view["attempts"][0]["instance_state"] == "running"
    assert (
        view["progress"]["step"] == 250
        and view["gpu"]["gpu_util_pct"] == 93.5
        and view["last_checkpoint"]["step"] == 200
    )
    cost = view["cost"]
    seconds = cost["attempts"][0]["seconds"]  # running since launch, a few seconds ago
    assert 0 < seconds < 60 and cost["instance_usd"] == pytest.approx(
        60 * 0.21 / 3600, abs=1e-6
    )  # the one-minute minimum
    recorded = view["attempts"][0]
    extras = recorded["disk_gib"] * 0.08 / 730 + (0.005 if recorded["public_ip"] else 0.0)  # volume, address per hour
    assert (recorded["disk_gib"], recorded["public_ip"]) == (120, True)  # the example's compute section
    # The volume and the address are held from the launch, a moment before EC2's `running`: as long or longer.
    # The volume and the address are held from the launch, a moment before EC2's `running`: as long or longer
    # (the document's amounts are rounded to a millionth of a dollar).
    besides = cost["ebs_usd"] + cost["public_ipv4_usd"]
    assert seconds * extras / 3600 - 2e-6 <= besides <= (seconds + 10) * extras / 3600 + 2e-6
    assert cost["total_usd"] == pytest.approx(60 * 0.21 / 3600 + besides, abs=2e-6)
    assert cost["on_demand_usd"] == pytest.approx(60 * 0.526 / 3600 + besides, abs=2e-6)
    assert cost["savings"] == pytest.approx(1 - cost["total_usd"] / cost["on_demand_usd"], abs=1e-3)
    assert cost["current_usd_per_hour"] == pytest.approx(0.21 + extras, abs=1e-6) and cost[
        "projected_total_usd"
    ] == pytest.approx(cost["total_usd"] + view["progress"]["eta_s"] / 3600 * (0.21 + extras), abs=1e-4)
    assert 1740 <= view["progress"]["eta_s"] <= 1750  # the heartbeat's ETA, as of now
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE)
    assert "GPU 94%, 11.2/15 GiB, 61 W" in out and "last checkpoint: step 200" in out

    code, out, err = spotctl("logs", job_id, "--storage", STORAGE)
    assert (code, out) == (0, "epoch 1/20 done\n")
    code, _, err = spotctl("logs", job_id, "--storage", STORAGE, "--attempt", "2")
    assert code == 1 and err == f"error: job {job_id} has no attempt 2 (it has 1)\n"

    code, out, err = spotctl("stop", job_id, "--storage", STORAGE, "--wait", "0")
    assert code == 0, err
    assert out.startswith(f"stopped {job_id}: no final checkpoint in time; the last committed one stays; terminated i-")
    control = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/control/stop")["Body"].read())
    assert control["reason"] == "stopped by spotctl stop"
    instance = boto3.client("ec2").describe_instances(Filters=[{"Name": "tag:spotctl:job", "Values": [job_id]}])[
        "Reservations"
    ][0]["Instances"][0]
    assert instance["State"]["Name"] in ("shutting-down", "terminated")
    code, out, _ = spotctl("status", job_id, "--storage", STORAGE, "--json")
    assert json.loads(out)["state"] == "cancelled"
    code, _, err = spotctl("stop", job_id, "--storage", STORAGE)
    assert code == 1 and err == f"error: job {job_id} is already cancelled; nothing to stop\n"
    code, out, _ = spotctl("logs", job_id, "--storage", STORAGE, "--follow", "--interval", "0.1")
    assert (code, out) == (0, "epoch 1/20 done\n")  # the job has ended: follow prints and returns


def test_an_unknown_job_gets_a_close_match(account, spotctl):
    code, out, _ = spotctl("launch", str(EXAMPLE))
    job_id = launched_id(out)
    code, _, err = spotctl("status", job_id[:-1] + "x", "--storage", STORAGE)
    assert code == 1 and err.startswith(f"error: no job '{job_id[:-1]}x' under {STORAGE}; did you mean '{job_id}'?")


def test_a_missing_bucket_is_one_message(aws, spotctl):
    code, _, err = spotctl("status", "--storage", "s3://no-such-bucket/spotctl")
    assert code == 1 and err.splitlines() == [
        "error: storage s3://no-such-bucket/spotctl: bucket no-such-bucket does not exist",
        "hint: create the bucket (or fix `storage` / --storage), e.g. `aws s3 mb s3://BUCKET`",
    ]


def test_status_needs_a_storage_root(spotctl, monkeypatch):
    """Bug 2 of issue 16: the message names every way to a context, the local cloud's too."""
    monkeypatch.delenv("SPOTCTL_STORAGE", raising=False)
    code, _, err = spotctl("status")
    assert code == 1 and err.splitlines() == [
        "error: no storage root given, none launched into from this machine or deployed, and no local cloud runs",
        "hint: pass --storage s3://bucket/prefix (the job file's `storage`) or set SPOTCTL_STORAGE; "
        "for the local cloud, --local (`spotctl local up` starts it)",
    ]


# --------------------------------------------------------------------------------------- user-data
@pytest.mark.slow
def test_the_user_data_runs_the_trainer_to_completion(account, aws, tmp_path, image_folder):
    """The rendered script, run as the instance would (install skipped: this environment is spotctl's),
    trains the job from S3 and ships its logs."""
    from orchestrator.jobs.launch import bootstrap_script
    from testbed.harness import FakeImds
    from testbed.trainer_runs import trainer_env, write_job
    from trainer.job.spec_file import load_spec

    data = image_folder(f"s3://{BUCKET}/datasets/shapes", per_class={"train": 6, "val": 2})
    job = write_job(
        tmp_path / "job.yaml", STORAGE, data.split("train"), data.split("val"), name="boot", train__epochs=1
    )
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="spotctl/jobs/boot-1/job.yaml", Body=job.read_bytes())
    script = tmp_path / "user-data.sh"
    script.write_text(bootstrap_script(load_spec(job), "boot-1", 1, f"{STORAGE}/wheels/{'0' * 64}/spotctl.whl"))
    imds = FakeImds()
    python_dir = str(Path(shutil.which("python", path=str(Path(__import__("sys").executable).parent))).parent)
    env = trainer_env(
        {
            **aws.environment(),
            "PATH": f"{python_dir}:/usr/bin:/bin",
            "SPOTCTL_SKIP_INSTALL": "1",
            "SPOTCTL_NO_SHUTDOWN": "1",
            "SPOTCTL_LOG_DIR": str(tmp_path / "logs"),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint,
            "SPOTCTL_CACHE_DIR": str(tmp_path / "cache"),
        }
    )
    try:
        result = subprocess.run(["bash", str(script)], env=env, timeout=300)
    finally:
        imds.stop()
    log = (tmp_path / "logs/attempt-1.log").read_text()
    assert result.returncode == 0, log[-3000:]
    final = json.loads(s3.get_object(Bucket=BUCKET, Key="spotctl/jobs/boot-1/status/final.json")["Body"].read())
    assert final["outcome"] == "succeeded"
    shipped = (
        s3.get_object(Bucket=BUCKET, Key="spotctl/jobs/boot-1/logs/attempt-1.bootstrap.log")["Body"].read().decode()
    )
    assert "spotctl: trainer exited with 0" in shipped
    assert s3.get_object(Bucket=BUCKET, Key="spotctl/jobs/boot-1/logs/attempt-1.log")[
        "Body"
    ].read()  # the trainer's own log


def test_when_every_offer_is_refused_the_job_is_no_capacity(account, spotctl, monkeypatch):
    hook_run_instances(monkeypatch, lambda params: "InsufficientInstanceCapacity")
    code, _, err = spotctl("launch", str(EXAMPLE))
    assert code == 1 and err.startswith(
        "error: no offer could be started; EC2 refused all 7 offers: g4dn.xlarge/us-east-1a: InsufficientInstanceCapacity"
    )
    code, out, _ = spotctl("status", "--storage", STORAGE, "--json")
    [job] = json.loads(out)["jobs"]
    assert job["state"] == "no_capacity" and job["attempts"] == []


def test_a_launch_without_an_instance_profile_is_refused(account, spotctl, tmp_path):
    job = tmp_path / "no-profile.yaml"
    job.write_text(re.sub(r"  instance_profile: .*\n", "", EXAMPLE.read_text()))
    code, _, err = spotctl("launch", str(job))
    assert code == 1 and err.startswith(
        "error: compute.instance_profile is not set: the instance would have no access to the job's storage"
    )


def test_a_gpu_requirement_picks_only_nvidia_x86_types(aws):
    from orchestrator.aws.clients import Cloud
    from orchestrator.aws.offers import instance_types
    from trainer.job.spec import ComputeSpec

    found, _ = instance_types(Cloud("us-east-1"), ComputeSpec(gpu={"count": 1}))
    names = {t.name for t in found}
    assert {"g4dn.xlarge", "g5.xlarge", "g6.xlarge"} <= names and "g5g.xlarge" not in names  # g5g: arm64
    assert all(t.gpu_model and t.nvidia and t.x86_64 and t.gpus == 1 for t in found)


@pytest.mark.parametrize(
    "final, instance, cancelled, expected",
    [
        (None, ("running", None), False, "running"),
        (None, ("pending", None), False, "launching"),
        (None, ("terminated", "Server.SpotInstanceTermination"), False, "interrupted"),
        (None, None, False, "interrupted"),  # gone from EC2's view entirely
        (
            None,
            ("terminated", "Client.InstanceInitiatedShutdown"),
            False,
            "interrupted",
        ),  # shut itself down, said nothing: a crash
        ({"outcome": "succeeded"}, ("terminated", "Client.InstanceInitiatedShutdown"), False, "succeeded"),
        ({"outcome": "failed"}, None, True, "failed"),  # failed before the stop took effect
        ({"outcome": "stopped"}, None, False, "cancelled"),
        (None, ("running", None), True, "cancelled"),
    ],
)
def test_the_state_is_derived_from_record_trainer_and_ec2(final, instance, cancelled, expected):
    from orchestrator.aws.instances import Instance
    from orchestrator.jobs.state import derive_state
    from trainer.job.documents import Attempt, Final, Heartbeat, JobRecord

    record = JobRecord(
        "j",
        "j",
        "us-east-1",
        "s3://b",
        "s3://b/j",
        "s3://b/w",
        "ami-1",
        attempts=[Attempt(1, "g5.xlarge", "us-east-1a", 0.4, 1.0, "t", "i-1")],
    )
    record.cancelled_at = "2026-11-24T10:00:00+00:00" if cancelled else None
    found = Instance("i-1", instance[0], instance[1], None, 1) if instance else None
    assert (
        derive_state(record, Final(**final) if final else None, Heartbeat(attempt=1, phase="training"), found)
        == expected
    )


def test_aws_prices_read_the_spot_history_and_fall_back_to_the_dated_table(aws):
    from datetime import datetime, timedelta, timezone

    from orchestrator.aws.clients import Cloud
    from orchestrator.aws.prices import AwsPrices, on_demand_table

    prices = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=None)
    spot = prices.spot_prices([("g5.xlarge", "us-east-1a"), ("g5.xlarge", "us-east-1b")])
    assert spot == {
        ("g5.xlarge", "us-east-1a"): 0.00001,
        ("g5.xlarge", "us-east-1b"): 0.00001,
    }  # moto's constant market
    now = datetime.now(timezone.utc)
    assert [p.usd_per_hour for p in prices.history(("g5.xlarge", "us-east-1a"), now - timedelta(hours=1), now)] == [
        0.00001
    ]
    on_demand = prices.on_demand("g5.xlarge")  # moto has no Pricing API
    assert on_demand.usd_per_hour == 1.006 and on_demand.source == f"table {on_demand_table('us-east-1')[0]}"


# ------------------------------------------------------------------------------ checks before a boot
def run_instances_calls(aws) -> int:
    return sum(n for call, n in aws.calls().items() if call.startswith("ec2:RunInstances:"))


def edited_example(tmp_path, *replacements: tuple[str, str]) -> str:
    text = EXAMPLE.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


DATA = "s3://my-spotctl-bucket/spotctl/datasets/flowers"


def test_a_mistyped_data_path_is_refused_before_any_instance_starts(account, aws, spotctl, tmp_path):
    job = edited_example(tmp_path, (f"{DATA}/train", f"{DATA}/trian"))
    code, out, err = spotctl("launch", job)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"error: not launched (nothing started): train.data.train {DATA}/trian: no such prefix (nothing is stored "
        f"under {DATA}/trian/); did you mean {DATA}/train?",
        f"hint: check the path; upload the ImageFolder with `aws s3 sync DIR {DATA}/trian/`",
    ]
    assert run_instances_calls(aws) == 0
    assert [
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="spotctl/jobs/").get("Contents", [])
    ] == []
    # The dry run lists it with the account's checks, and exits 1.
    code, out, _ = spotctl("launch", job, "--dry-run")
    assert code == 1
    assert f"PROBLEM  data: train.data.train {DATA}/trian: no such prefix" in out
    assert f"ok       data: train.data.val {DATA}/val: 2 class folders (daisy, rose), images in each" in out
    assert settled_ec2().describe_instances()["Reservations"] == []  # its RunInstances was a DryRun


def put(key: str) -> None:
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"spotctl/datasets/{key}", Body=b"x")


@pytest.mark.parametrize(
    "keys, train, problem",
    [
        (["pets/train/a.jpg", "pets/train/b.jpg"], "pets/train", "no class folders: its 2 files lie directly under it"),
        (
            ["pets/train/cat/1.jpg", "pets/train/dog/notes.txt"],
            "pets/train",
            "class folder 'dog' has no images (.jpg, ",
        ),
        (["pets/train/cat/1.jpg"], "pets/train", "only the class folder 'cat'"),
        ([], "pets/train.tar", "no such object"),
        (["pets/train.tar"], "pets/train.tar", None),
    ],
)
def test_data_that_is_no_image_folder_is_refused_naming_what_is_wrong(
    account, aws, spotctl, tmp_path, keys, train, problem
):
    for key in keys:
        put(key)
    job = edited_example(
        tmp_path, (f"{DATA}/train", f"s3://{BUCKET}/spotctl/datasets/{train}"), (f"    val: {DATA}/val\n", "")
    )
    code, _, err = spotctl("launch", job)
    if problem is None:
        assert code == 0, err
        assert run_instances_calls(aws) == 1
        return
    assert code == 1
    assert err.startswith(
        f"error: not launched (nothing started): train.data.train s3://{BUCKET}/spotctl/datasets/{train}: {problem}"
    )
    assert run_instances_calls(aws) == 0


def test_val_classes_that_differ_from_train_are_refused(account, aws, spotctl):
    put("flowers/val/tulip/1.jpg")
    code, _, err = spotctl("launch", str(EXAMPLE))
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: not launched (nothing started): train.data.val {DATA}/val: val classes differ from train's (only in val: tulip)"
    )
    assert run_instances_calls(aws) == 0


def test_data_the_operator_may_not_list_is_a_warning_not_a_refusal(account, aws, spotctl):
    aws.be_strict(denied_listings=[f"{BUCKET}/spotctl/datasets/"])
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    assert err.splitlines()[:2] == [
        f"warning: data: train.data.train {DATA}/train: cannot check: these credentials lack s3:ListBucket on "
        f"arn:aws:s3:::{BUCKET} for the prefix 'spotctl/datasets/flowers/train/'",
        f"warning: data: train.data.val {DATA}/val: cannot check: these credentials lack s3:ListBucket on "
        f"arn:aws:s3:::{BUCKET} for the prefix 'spotctl/datasets/flowers/val/'",
    ]
    assert run_instances_calls(aws) == 1


def test_missing_weights_at_a_url_are_refused(account, aws, spotctl, tmp_path):
    weights = f"s3://{BUCKET}/spotctl/weights/resnet50.pt"
    job = edited_example(tmp_path, ("    weights: IMAGENET1K_V2\n", f"    weights: {weights}\n"))
    code, _, err = spotctl("launch", job)
    assert code == 1
    assert (
        err.splitlines()[0] == f"error: not launched (nothing started): train.model.weights {weights}: no such object"
    )
    assert run_instances_calls(aws) == 0
    boto3.client("s3").put_object(Bucket=BUCKET, Key="spotctl/weights/resnet50.pt", Body=b"0" * 10)
    code, out, err = spotctl("launch", job, "--dry-run")
    assert code == 0, err
    assert f"ok       weights: train.model.weights {weights}: exists (10 bytes)" in out


def test_a_teacher_job_without_a_best_model_is_refused_before_the_boot(account, aws, spotctl, tmp_path):
    teacher = "flowers-resnet152-250101-ab12"
    job = edited_example(
        tmp_path, ("  epochs: 20\n", f"  epochs: 20\n  distill:\n    teacher:\n      job: {teacher}\n")
    )
    code, _, err = spotctl("launch", job)
    assert code == 1
    assert err.splitlines() == [
        f"error: not launched (nothing started): train.distill.teacher.job {teacher}: no best model under "
        f"s3://{BUCKET}/spotctl/jobs/{teacher}/best/",
        "hint: name a job that has trained an epoch (`spotctl status` lists them), or wait for it",
    ]
    assert run_instances_calls(aws) == 0
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"spotctl/jobs/{teacher}/best/LATEST.json", Body=b"{}")
    code, out, err = spotctl("launch", job, "--dry-run")
    assert code == 0, err
    assert f"ok       teacher: train.distill.teacher.job {teacher}: has a best model" in out


def test_a_budget_below_the_first_checkpoint_is_refused_with_the_smallest_that_would_do(
    account, aws, spotctl, tmp_path
):
    # g4dn.xlarge at $0.21/h spot, 120 GiB of gp3 ($0.08/GiB-month) and a public IPv4 address ($0.005/h):
    # 60 s + 300 s (every_seconds) at $0.21 + $0.013151 + $0.005 = $0.022815
    job = edited_example(tmp_path, ("  max_cost_usd: 15\n", "  max_cost_usd: 0.02\n"))
    code, _, err = spotctl("launch", job)
    assert code == 1
    assert err.splitlines() == [
        "error: not launched (nothing started): budget.max_cost_usd $0.02 does not cover one 60 s minimum charge plus "
        "one checkpoint interval (300 s) on g4dn.xlarge ($0.2100/h spot + $0.0182/h volume and address): $0.0228: "
        "the job would stop before its first checkpoint",
        "hint: set budget.max_cost_usd to 0.0229 or more, or checkpoint more often (train.checkpoint)",
    ]
    assert run_instances_calls(aws) == 0
    job = edited_example(tmp_path, ("  max_cost_usd: 15\n", "  max_cost_usd: 0.0229\n"))
    code, out, err = spotctl("launch", job, "--dry-run")
    assert code == 0, err
    assert "ok       budget: budget.max_cost_usd $0.0229 covers one 60 s minimum charge" in out


# ------------------------------------------------------------------------------------------- offers
def test_offers_say_which_gpu_requirement_dropped_which_types(account, spotctl, tmp_path):
    """EC2 reports the "24 GB" A10G and L4 at 22.4 GiB (22888 MiB): min_memory_gib 24 drops them, and says so."""
    gpu = "gpu:\n    count: 1\n    min_memory_gib: {}\n    models: [A10G, L4, L40S]"
    code, out, err = spotctl("offers", job_file(tmp_path, gpu.format(24)), "--json")
    assert code == 0, err
    found = json.loads(out)
    assert {o["instance_type"] for o in found["offers"]} == set()  # the fixed market prices no L40S
    unmatched = {u["instance_type"]: u["reason"] for u in found["unmatched"]}
    assert unmatched["g5.xlarge"] == "A10G has 22.4 GiB < min_memory_gib 24"
    assert unmatched["g6.xlarge"] == "L4 has 22.4 GiB < min_memory_gib 24"
    assert "g5.12xlarge" not in unmatched  # 4 GPUs as well: more than one requirement dropped it
    code, out, err = spotctl("offers", job_file(tmp_path, gpu.format(24)))
    assert "  g5.xlarge: A10G has 22.4 GiB < min_memory_gib 24" in out.splitlines()
    code, out, err = spotctl("launch", job_file(tmp_path, gpu.format(24)))
    assert code == 1 and "; compute.gpu dropped " in err and "A10G has 22.4 GiB < min_memory_gib 24: g5." in err
    code, out, err = spotctl("offers", job_file(tmp_path, gpu.format(22)), "--json")
    assert code == 0, err
    assert {o["instance_type"] for o in json.loads(out)["offers"]} == {"g5.xlarge", "g6.xlarge"}


def test_a_gpu_requirement_nothing_meets_says_what_dropped_what(account, spotctl, tmp_path):
    job = job_file(tmp_path, "gpu:\n    count: 1\n    min_memory_gib: 24\n    models: [A10G, L4]")
    code, _, err = spotctl("offers", job)
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith(
        "error: compute.gpu: no instance type in us-east-1 has 1 GPU(s) of >= 24 GiB, model A10G/L4 "
        "(A10G has 22.4 GiB < min_memory_gib 24: g5."
    )
    assert "L4 has 22.4 GiB < min_memory_gib 24: g6." in lines[0]
    assert lines[1].startswith("hint: EC2 reports") and "set compute.gpu.min_memory_gib to 22" in lines[1]


def test_offers_top_n_and_every_unknown_type_at_once(account, spotctl, tmp_path):
    code, out, err = spotctl("offers", str(EXAMPLE), "--top", "2")
    assert code == 0, err
    assert out.splitlines()[0].rstrip() == "7 offers in us-east-1, the 2 cheapest shown"
    assert [line.split()[0] for line in out.splitlines()[3:5]] == ["g4dn.xlarge", "g4dn.xlarge"]
    assert "g6.xlarge" not in out.split("AMI")[0]
    code, out, _ = spotctl("offers", str(EXAMPLE), "--top", "1", "--json")
    assert (len(json.loads(out)["offers"]), json.loads(out)["count"]) == (1, 7)
    code, _, err = spotctl("offers", job_file(tmp_path, "instance_types: [g5.xlarge, g5.xlarg, g9.huge, g4dn.xlarge]"))
    assert code == 1
    assert err.splitlines() == [
        "error: compute.instance_types: 2 of 4 are not instance types in us-east-1: 'g5.xlarg'; did you mean "
        "'g5.xlarge'?; 'g9.huge'",
        "hint: fix or remove them (`aws ec2 describe-instance-types` lists the region's)",
    ]
