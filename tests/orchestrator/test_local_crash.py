"""The local cloud's crash injection (`spotctl local crash`): the runner boots a real instance of moto's
EC2 as a process group, and `InstanceRunner.crash` sends a signal to the trainer its heartbeat names,
only if that process is on the machine; the bootstrap then sees its trainer die, and the machine
shuts itself down (Client.InstanceInitiatedShutdown)."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time

import boto3
import pytest

from orchestrator.local.runner import InstanceRunner
from tests.cloud import BUCKET, settled_ec2
from trainer.job import layout

JOB = "crash-1"
PREFIX = f"spotctl/jobs/{JOB}"
# A stand-in bootstrap: its "trainer" (the exec'd subshell, as the real one runs it) reports its pid in a
# heartbeat and sleeps; the bootstrap records how it ended, as the real one does before reporting.
USER_DATA = textwrap.dedent(f"""\
    #!/bin/bash
    JOB_PREFIX=s3://{BUCKET}/{PREFIX}
    ( exec python3 -c '
    import json, os, time, boto3
    beat = {{"attempt": 1, "phase": "training", "step": 3, "pid": os.getpid()}}
    boto3.client("s3").put_object(Bucket="{BUCKET}", Key="{PREFIX}/{layout.HEARTBEAT}", Body=json.dumps(beat).encode())
    time.sleep(120)' )
    echo "$?" >trainer-exit
    """)


@pytest.fixture
def machine(account, tmp_path, aws):
    """A booted local machine, its runner, and its instance id."""
    reply = boto3.client("ec2").run_instances(
        ImageId=account,
        InstanceType="g5.xlarge",
        MinCount=1,
        MaxCount=1,
        UserData=USER_DATA,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "spotctl:job", "Value": JOB}, {"Key": "spotctl:attempt", "Value": "1"}],
            }
        ],
    )
    instance_id = reply["Instances"][0]["InstanceId"]
    settled_ec2()  # listed once EC2's consistency window is over
    runner = InstanceRunner(boto3.client("ec2"), "us-east-1", tmp_path, aws.environment(), s3=boto3.client("s3"))
    runner.poll()
    assert instance_id in runner.machines
    yield runner, instance_id
    runner.stop()


def wait_for(condition, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def heartbeat_pid() -> int | None:
    try:
        body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"{PREFIX}/{layout.HEARTBEAT}")["Body"].read()
    except Exception:
        return None
    return json.loads(body)["pid"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, 137), (signal.SIGSEGV, 139)])
def test_the_signal_reaches_the_trainer_alone_and_the_machine_shuts_itself_down(machine, sig, code):
    runner, instance_id = machine
    pid = wait_for(heartbeat_pid)
    bootstrap = runner.machines[instance_id].process
    assert runner.crash(instance_id, sig)[1] == pid
    assert bootstrap.wait(30) == 0  # the bootstrap lives on to see its trainer die
    assert (runner.machines[instance_id].folder / "trainer-exit").read_text().strip() == str(code)
    runner.poll()
    [described] = [
        i
        for r in boto3.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
        for i in r["Instances"]
    ]
    assert (described["State"]["Name"], described["StateReason"]["Code"]) == (
        "terminated",
        "Client.InstanceInitiatedShutdown",
    )


def test_a_pid_that_is_not_on_the_machine_is_never_signalled(machine):
    runner, instance_id = machine
    wait_for(heartbeat_pid)
    boto3.client("s3").put_object(
        Bucket=BUCKET,
        Key=f"{PREFIX}/{layout.HEARTBEAT}",
        Body=json.dumps({"attempt": 1, "pid": os.getpid()}).encode(),  # this test's own process
    )
    with pytest.raises(LookupError, match=f"process {os.getpid()} .* is not on {instance_id}"):
        runner.crash(instance_id, signal.SIGKILL)
    assert runner.machines[instance_id].process.poll() is None  # nothing on the machine was touched either


def test_no_heartbeat_of_this_attempt_no_pid_no_signal(machine):
    runner, instance_id = machine
    wait_for(heartbeat_pid)
    boto3.client("s3").put_object(
        Bucket=BUCKET, Key=f"{PREFIX}/{layout.HEARTBEAT}", Body=json.dumps({"attempt": 0, "pid": 1}).encode()
    )
    with pytest.raises(LookupError, match="has not reported its pid yet"):
        runner.crash(instance_id, signal.SIGKILL)
    with pytest.raises(KeyError):
        runner.crash("i-0000000000000000", signal.SIGKILL)
