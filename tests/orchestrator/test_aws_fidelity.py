"""What a real AWS account answers and moto does not, served by the strict local cloud
(orchestrator.local.strict), and spotctl handling each: refused pools, Spot quotas, throttling, the
Spot service-linked role, IAM propagation, accounts without a default VPC or subnet, EC2's eventual
consistency and instances EC2 could not start. Each test fails on a spotctl that trusted moto."""

from __future__ import annotations

import json
import time

import boto3
import pytest

from orchestrator.jobs.record import JobStore
from tests.cloud import BUCKET, EXAMPLE, STORAGE, launched_id, settled_ec2
from tests.orchestrator.test_recovery import job_file, live, record_of, watcher


def run_instances_calls(aws) -> dict[str, int]:
    return {k.split(":", 2)[2]: v for k, v in aws.calls().items() if k.startswith("ec2:RunInstances:")}


# --------------------------------------------------------------------------------- capacity, quotas
def test_a_refused_pool_costs_one_call_and_the_next_offer_is_tried_at_once(account, aws, spotctl):
    # EC2's InsufficientInstanceCapacity is HTTP 500, which botocore's standard mode would repeat 4 times.
    aws.be_strict(refused_pools=["g4dn.xlarge/us-east-1a", "g6.xlarge/us-east-1a", "g4dn.xlarge/us-east-1b"])
    started = time.monotonic()
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    assert "g6.xlarge in us-east-1c at $0.3500/h" in out
    assert run_instances_calls(aws) == {"InsufficientInstanceCapacity": 3, "sent": 1}
    assert time.monotonic() - started < 30  # no backoff between pools (generous: only the order matters)


def test_a_quota_refusal_skips_its_bucket_and_names_the_quota(account, aws, spotctl):
    aws.be_strict(spot_vcpu_quotas={"L-3819A6DF": 0})  # a new account: no G spot vCPUs
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 1
    assert err.splitlines() == [
        "error: the account's Spot vCPU quota refused every offer: 'All G and VT Spot Instance Requests' (L-3819A6DF): "
        "the smallest offer needs 4 vCPUs",
        "hint: request an increase (`spotctl doctor` shows each quota): aws service-quotas "
        "request-service-quota-increase --service-code ec2 --quota-code L-3819A6DF --desired-value 4",
    ]
    assert run_instances_calls(aws) == {"MaxSpotInstanceCountExceeded": 1}  # not one call per pool
    code, out, _ = spotctl("status", "--storage", STORAGE, "--json")
    [job] = json.loads(out)["jobs"]
    assert job["state"] == "failed" and job["attempts"] == []  # not "no capacity, try later"


def test_a_watcher_meeting_a_quota_gives_up_at_once_with_the_quota(account, aws, spotctl):
    job_id = launched_id(spotctl("launch", str(EXAMPLE))[1])
    aws.be_strict(spot_vcpu_quotas={"L-3819A6DF": 4})  # room for the one running now, not for a second
    events = []
    watch = watcher([job_id], events)
    aws.interrupt(live(job_id)[0]["InstanceId"])
    live_before = len(live(job_id))
    aws.be_strict(spot_vcpu_quotas={"L-3819A6DF": 0})
    watch.poll()
    record = record_of(job_id)
    assert live_before == 0 and record["outcome"] == "failed"
    assert "L-3819A6DF" in record["outcome_reason"] and "request-service-quota-increase" in record["outcome_reason"]


def test_throttled_run_instances_is_repeated_with_its_token_and_starts_one_instance(account, aws, spotctl):
    aws.be_strict(throttled_run_instances=2)  # the account's RunInstances bucket is empty for a moment
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    calls = run_instances_calls(aws)
    assert calls == {"RequestLimitExceeded": 2, "sent": 1}
    assert len(live(launched_id(out))) == 1


# ------------------------------------------------------------------------------------------ IAM
def test_without_the_spot_service_linked_role_the_launch_says_how_to_get_it(account, aws, spotctl):
    boto3.client("iam").delete_role(RoleName="AWSServiceRoleForEC2Spot")
    code, _, err = spotctl("launch", str(EXAMPLE))
    assert code == 1
    assert "no Spot service-linked role (AWSServiceRoleForEC2Spot)" in err
    assert "hint: run `spotctl infra deploy` once (it creates the role)" in err
    assert run_instances_calls(aws) == {"AuthFailure.ServiceLinkedRoleCreationNotPermitted": 1}


def test_a_new_instance_profile_is_waited_for_not_refused(account, aws, spotctl, tmp_path):
    boto3.client("iam").create_instance_profile(InstanceProfileName="fresh-profile")
    aws.be_strict(profile_propagation_s=6.0)  # longer than the checks before the boot take on a busy machine
    job = job_file(tmp_path, **{"instance_profile: spotctl-trainer": "instance_profile: fresh-profile"})
    code, out, err = spotctl("launch", job)
    assert code == 0, err
    calls = run_instances_calls(aws)
    assert calls.get("InvalidParameterValue", 0) >= 1 and calls["sent"] == 1


def test_a_profile_that_does_not_exist_is_a_clear_error(account, aws, spotctl, tmp_path, monkeypatch):
    monkeypatch.setattr("orchestrator.aws.ec2.PROFILE_PROPAGATION_S", 2.0)  # not two minutes of waiting here
    job = job_file(tmp_path, **{"instance_profile: spotctl-trainer": "instance_profile: no-such-profile"})
    code, _, err = spotctl("launch", job)
    assert code == 1
    assert "Value (no-such-profile) for parameter iamInstanceProfile.name is invalid" in err


# ------------------------------------------------------------------------------------- networks
def test_a_zone_without_a_default_subnet_is_skipped_and_no_claim_is_left(account, aws, spotctl):
    ec2 = boto3.client("ec2")
    remove_default_subnet(ec2, "us-east-1a")
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    assert "g4dn.xlarge in us-east-1b" in out  # the cheapest pool outside us-east-1a
    [attempt] = record_of(launched_id(out))["attempts"]
    assert attempt["zone"] == "us-east-1b" and attempt["instance_id"]


def test_an_account_without_a_default_vpc_launches_into_the_subnets_it_names(account, aws, spotctl, tmp_path):
    ec2 = boto3.client("ec2")
    remove_default_vpc(ec2)
    code, _, err = spotctl("launch", str(EXAMPLE))
    assert code == 1 and "has no default subnet" in err and "compute.subnets" in err
    code, out, _ = spotctl("status", "--storage", STORAGE, "--json")
    assert all(job["attempts"] == [] and job["state"] != "launching" for job in json.loads(out)["jobs"])

    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.1.0/24", AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
    job = job_file(
        tmp_path,
        **{
            "  availability_zones: [us-east-1a, us-east-1b, us-east-1c]\n": f"  subnets: {{us-east-1b: {subnet}}}\n",
            "public_ip: true": "public_ip: false",
        },
    )
    code, out, err = spotctl("launch", job)
    assert code == 0, err
    [instance] = live(launched_id(out))
    assert instance["SubnetId"] == subnet and instance["Placement"]["AvailabilityZone"] == "us-east-1b"


def remove_default_subnet(ec2, zone: str) -> None:
    """A default VPC without a subnet in `zone` (deleted, or the zone came later)."""
    [subnet] = ec2.describe_subnets(
        Filters=[{"Name": "availability-zone", "Values": [zone]}, {"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    ec2.delete_subnet(SubnetId=subnet["SubnetId"])


def remove_default_vpc(ec2) -> None:
    """An account whose default VPC was deleted (AWS Control Tower and landing zones do this)."""
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    for gateway in ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])[
        "InternetGateways"
    ]:
        ec2.detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=vpc["VpcId"])
        ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
    ec2.delete_vpc(VpcId=vpc["VpcId"])


# ------------------------------------------------------------------------- eventual consistency
def test_an_instance_stopped_right_after_its_launch_is_terminated_not_orphaned(account, aws, spotctl):
    aws.be_strict(consistency_s=3.0)
    job_id = launched_id(spotctl("launch", str(EXAMPLE))[1])
    code, out, err = spotctl("stop", job_id, "--storage", STORAGE, "--wait", "0")
    assert code == 0, err
    assert live(job_id) == []


def test_an_instance_retagged_right_after_its_launch_is_waited_for_not_failed(account, aws):
    # A multi-node attempt keeps its survivors and retags them; a survivor may be seconds old (a node lost
    # right after the launch) and still "InvalidInstanceID.NotFound" to CreateTags by id.
    from orchestrator.aws.clients import Cloud
    from orchestrator.aws.ec2 import retag_attempt
    from orchestrator.aws.instances import TAG_ATTEMPT

    aws.be_strict(consistency_s=2.0)
    ec2 = boto3.client("ec2")
    [instance] = ec2.run_instances(ImageId=account, InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1)["Instances"]
    retag_attempt(Cloud("us-east-1"), [instance["InstanceId"]], 2)
    assert aws.calls()["ec2:CreateTags:InvalidInstanceID.NotFound"] >= 1
    [shown] = settled_ec2().describe_instances(InstanceIds=[instance["InstanceId"]])["Reservations"][0]["Instances"]
    assert {t["Key"]: t["Value"] for t in shown["Tags"]}[TAG_ATTEMPT] == "2"


def test_a_repeated_client_token_returns_the_same_instance(account, aws):
    ec2 = boto3.client("ec2")
    request = dict(ImageId=account, InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1, ClientToken="same-token")
    first = ec2.run_instances(**request)["Instances"][0]["InstanceId"]
    again = ec2.run_instances(**request)["Instances"][0]["InstanceId"]
    assert first == again
    with pytest.raises(ec2.exceptions.ClientError, match="IdempotentParameterMismatch"):
        ec2.run_instances(**{**request, "InstanceType": "g5.xlarge"})
    reservations = settled_ec2().describe_instances()["Reservations"]
    assert [i["InstanceId"] for r in reservations for i in r["Instances"]] == [first]


# ------------------------------------------------------------------------------ launch failures
def test_a_launch_failure_of_the_request_fails_the_job_and_is_no_interruption(account, aws, spotctl):
    aws.be_strict(launch_failures={"g4dn.xlarge/us-east-1a": "Client.InternalError"})
    job_id = launched_id(spotctl("launch", str(EXAMPLE))[1])
    time.sleep(1.0)  # pending -> terminated
    watch = watcher([job_id])
    watch.poll()
    record = record_of(job_id)
    [attempt] = record["attempts"]
    assert (attempt["end_reason"], attempt["state_reason"]) == ("failed", "Client.InternalError")
    assert watch.rows[job_id].view.state == "failed" and live(job_id) == []


def test_a_launch_failure_on_ec2s_side_moves_to_another_pool_uncounted(account, aws, spotctl, tmp_path):
    aws.be_strict(launch_failures={"g4dn.xlarge/us-east-1a": "Server.InsufficientInstanceCapacity"})
    job = job_file(tmp_path, **{"max_interruptions: 10": "max_interruptions: 0"})
    job_id = launched_id(spotctl("launch", job)[1])
    time.sleep(1.0)
    watch = watcher([job_id])
    watch.poll()
    first, second = record_of(job_id)["attempts"]
    assert first["end_reason"] == "not_started" and (second["instance_type"], second["zone"]) != (
        "g4dn.xlarge",
        "us-east-1a",
    )
    assert [i["attempt"] for i in live(job_id)] == [2]  # max_interruptions 0: a machine that never ran is not one


def test_missing_keys_are_denied_like_s3_does(aws):
    aws.be_strict(missing_keys_denied=True)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.get_object(Bucket=BUCKET, Key="spotctl/none")
    with pytest.raises(s3.exceptions.ClientError, match="403"):
        s3.head_object(Bucket=BUCKET, Key="spotctl/none")
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.get_object(Bucket="no-such-bucket", Key="spotctl/none")
    assert JobStore(STORAGE).read_record("nothing-here") is None  # spotctl reads absence all the same


# ------------------------------------------------------------------------------------------ doctor
def test_doctor_names_each_problem_of_a_fresh_account_with_its_fix(account, aws, spotctl):
    iam, ec2 = boto3.client("iam"), boto3.client("ec2")
    iam.delete_role(RoleName="AWSServiceRoleForEC2Spot")
    iam.remove_role_from_instance_profile(InstanceProfileName="spotctl-trainer", RoleName="spotctl-trainer")
    aws.be_strict(spot_vcpu_quotas={"L-3819A6DF": 0})
    remove_default_subnet(ec2, "us-east-1a")
    code, out, err = spotctl("doctor", str(EXAMPLE))
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0].startswith("ok       credentials: arn:aws:") and lines[0].endswith(" in us-east-1")
    assert (
        "PROBLEM  spot role: AWSServiceRoleForEC2Spot does not exist: the first spot launch of the account would have to create it"
        in lines
    )
    assert (
        "PROBLEM  spot quota: 'All G and VT Spot Instance Requests' (L-3819A6DF): 0 vCPUs; g4dn.xlarge needs 4" in lines
    )
    assert (
        "           fix: aws service-quotas request-service-quota-increase --service-code ec2 --quota-code L-3819A6DF --desired-value 4"
        in lines
    )
    assert any(line.startswith("PROBLEM  network: us-east-1a: us-east-1a has no default subnet") for line in lines)
    assert "PROBLEM  instance role: instance profile spotctl-trainer has no role" in lines
    assert any(line.startswith("warning  s3 endpoint: vpc-") for line in lines)
    assert lines[-1] == "4 problems"

    iam.add_role_to_instance_profile(InstanceProfileName="spotctl-trainer", RoleName="spotctl-trainer")
    aws.be_strict(spot_vcpu_quotas={"L-3819A6DF": 64})
    code, out, _ = spotctl("doctor", str(EXAMPLE), "--json")
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    problems = [c["name"] for c in json.loads(out)["checks"] if c["verdict"] == "problem"]
    assert code == 1 and problems == ["spot role", "network"]
    assert checks["instance role"]["verdict"] == "ok" and checks["spot quota"]["detail"].endswith(
        "64 vCPUs; g4dn.xlarge needs 4"
    )


# ------------------------------------------------------------------------------------------- AMIs
@pytest.mark.parametrize(
    ("instance_type", "usable"), [("g4dn.xlarge", True), ("p3dn.24xlarge", False), ("m5.large", None)]
)
def test_a_local_machine_of_a_family_the_ami_does_not_support_has_no_usable_gpu(
    account, tmp_path, instance_type, usable
):
    import subprocess

    from orchestrator.local.runner import InstanceRunner

    runner = InstanceRunner(boto3.client("ec2"), "us-east-1", tmp_path, {})
    runner._install_driver(tmp_path / "bin", {"InstanceType": instance_type, "ImageId": account})
    smi = tmp_path / "bin" / "nvidia-smi"
    if usable is None:  # no GPU, no driver tools
        assert not smi.exists()
        return
    done = subprocess.run([str(smi), "-L"], capture_output=True, text=True)
    assert (done.returncode == 0) is usable
    assert ("GPU 0: NVIDIA" in done.stdout) is usable


def test_a_local_machine_shows_at_most_2_of_its_types_gpus_so_each_runs_as_a_gloo_rank(account, tmp_path):
    """g5.12xlarge has 4 A10G: its local machine lists 2, and its bootstrap runs 2 ranks under torchrun."""
    import subprocess

    from orchestrator.local.runner import LOCAL_GPUS_MAX, InstanceRunner

    runner = InstanceRunner(boto3.client("ec2"), "us-east-1", tmp_path, {})
    described = boto3.client("ec2").describe_instance_types(InstanceTypes=["g5.12xlarge"])["InstanceTypes"]
    assert sum(g["Count"] for g in described[0]["GpuInfo"]["Gpus"]) == 4
    runner._install_driver(tmp_path / "bin", {"InstanceType": "g5.12xlarge", "ImageId": account})
    done = subprocess.run([str(tmp_path / "bin" / "nvidia-smi"), "-L"], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [f"GPU {i}: NVIDIA A10G (local)" for i in range(LOCAL_GPUS_MAX)]
