"""`--local` talks to the local cloud and to nothing else: the user's own AWS set-up (a profile named
in the shell, its config and credentials files) neither breaks it nor leaks into it, and the process
environment is left as it was."""

from __future__ import annotations

import os

import boto3

from orchestrator.aws.clients import Cloud, Endpoint, storage_options
from orchestrator.jobs.record import JobStore


def test_an_endpoint_ignores_the_shells_profile_and_config(aws, monkeypatch, tmp_path):
    # The moto server runs in this process and reads the same environment when it builds a backend:
    # build them first (the local cloud's daemon is a process of its own, with its own environment).
    boto3.client("ec2").describe_availability_zones()
    boto3.client("s3").list_buckets()
    config = tmp_path / "config"
    config.write_text("[profile work]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "gone")  # a profile no config file has: boto3 itself refuses it
    endpoint = Endpoint(aws.endpoint, "testing", "testing")
    before = dict(os.environ)

    cloud = Cloud("us-east-1", endpoint=endpoint)
    assert cloud.client("ec2").describe_availability_zones()["AvailabilityZones"]
    cloud.client("s3").create_bucket(Bucket="local-bucket")
    store = JobStore("s3://local-bucket/spotctl", **storage_options(endpoint, None))
    store.check()
    store.write("j1", "status/heartbeat.json", b"{}")
    assert store.read_bytes("j1", "status/heartbeat.json") == b"{}"
    assert dict(os.environ) == before
