"""Fixtures every test can use: a moto server, AWS clients pointed at it, tiny image datasets.

The tests mirror the packages, one layer a folder, each marked by it (`pytest -m unit` runs the
fast floor alone):

    unit/          pure logic: the policy, the state machine, cost, health, the spec, the layering (no moto, no torch runs)
    orchestrator/  the control plane against a real moto server: launch, recovery, security, infra, the CLI
    trainer/       the data plane: checkpoints, data, models, in-process and subprocess trainer runs, exports
    e2e/           the whole product on the local cloud (slow)

No test may reach the real network: `_no_network` refuses connections to anything but loopback,
and the AWS environment is replaced by one that points at the local moto server.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tempfile
from pathlib import Path

import pytest

from testbed.harness import AWS_VARIABLES_TO_CLEAR, MotoServer, make_image_folder

LAYERS = {"unit": "unit", "orchestrator": "moto", "trainer": "trainer", "e2e": "e2e"}
# moto's request recorder (tests/orchestrator/test_operator_policy.py) writes here, not into the working directory.
os.environ.setdefault(
    "MOTO_RECORDER_FILEPATH", str(Path(tempfile.mkdtemp(prefix="spotctl-moto-recording-")) / "requests.jsonl")
)


# The order the layers run in, longest tests first: `make test` hands whole files to its workers in
# this order (pytest-xdist's --dist loadfile --no-loadscope-reorder; without that flag the files with
# the most tests go first), so the long end-to-end and trainer files start at once and the many short
# control-plane and unit files fill in at the end, instead of two end-to-end files finishing last.
LONGEST_FIRST = ("e2e", "trainer", "orchestrator", "unit")


def _layer(item) -> str:
    return Path(str(item.path)).relative_to(Path(__file__).parent).parts[0]


def pytest_collection_modifyitems(items):
    """Each test is marked with its layer, from its folder; the layers run longest first (a stable
    sort: each file's tests stay together and in order)."""
    for item in items:
        if (layer := _layer(item)) in LAYERS:
            item.add_marker(LAYERS[layer])
    order = {layer: rank for rank, layer in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(_layer(item), len(order)))


@pytest.fixture(autouse=True)
def _own_spotctl_home(tmp_path, monkeypatch):
    """No test reads or writes the user's ~/.spotctl (the infra profile changes what job files mean)."""
    monkeypatch.setenv("SPOTCTL_HOME", str(tmp_path / "spotctl-home"))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail any connection this process makes to a non-loopback address."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ConnectionRefusedError(f"tests must not reach the network (tried {host})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    """A clean moto server and the environment that points every AWS client (boto3, s3fs) at it."""
    moto_server.reset()
    for name in AWS_VARIABLES_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_server.environment().items():
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # no listings cached from before the reset
    yield moto_server
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_denies_missing_keys(aws):
    """S3 as the trainer role and the operator see it on AWS: a GET or HEAD of a missing key answers
    403 AccessDenied, not 404 (their s3:ListBucket holds only under an s3:prefix condition). The
    strict local cloud does this for every test; this names the tests that rely on it and returns
    its proxy: `.strictness.denied_keys` / `.denied_listings` refuse more, `.denials` lists each 403."""
    aws.be_strict(missing_keys_denied=True)
    return aws.strict


@pytest.fixture
def s3_bucket(aws):
    """An empty bucket on the moto server; returns its name."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="spotctl-test")
    return "spotctl-test"


@pytest.fixture
def image_folder(tmp_path):
    """Factory for tiny ImageFolder datasets of real PNGs, local (default) or at an s3:// root."""

    def make(root: str | Path | None = None, **kwargs):
        return make_image_folder(root if root is not None else tmp_path / "data", **kwargs)

    return make


@pytest.fixture
def trainer_in_process(tmp_path, monkeypatch):
    """For running the trainer inside the test (fast): its own cache, no instance metadata, and
    pytest's logging set-up restored afterwards (the trainer's entry points install their own)."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setenv("SPOTCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def spotctl(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from orchestrator.cli.main import main

    def run(*args: str):
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def kept_cache_dir(request, tmp_path_factory) -> Path:
    """A SPOTCTL_CACHE_DIR kept between test runs (pytest's cache), so what is slow to build (the
    controller's Lambda zip: a pip download) is built once; a fresh folder when the cache is off
    (`-p no:cacheprovider`)."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("spotctl-cache") if cache is not None else tmp_path_factory.mktemp("spotctl-cache")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """spotctl's wheel, built once for the session (launch ships it to the instance)."""
    import os

    from orchestrator.jobs.wheel import build_wheel

    os.environ["SPOTCTL_CACHE_DIR"] = str(tmp_path_factory.mktemp("wheel-cache"))
    try:
        return build_wheel()
    finally:
        del os.environ["SPOTCTL_CACHE_DIR"]


TRUST_EC2 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def trainer_policy() -> dict:
    """The stack's trainer role, as infra/spotctl.yaml grants it: read the prefix, write its jobs'
    trainer-owned objects."""
    from orchestrator.aws.infra import trainer_denied_arns, trainer_write_arns
    from tests.cloud import BUCKET

    bucket = f"arn:aws:s3:::{BUCKET}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket}/spotctl/*"},
            {
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket,
                "Condition": {"StringLike": {"s3:prefix": ["spotctl", "spotctl/*"]}},
            },
            {
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject"],
                "Resource": trainer_write_arns(bucket, "spotctl"),
            },
            {"Effect": "Deny", "Action": "s3:*", "Resource": trainer_denied_arns(bucket, "spotctl")},
        ],
    }


@pytest.fixture
def account(aws, monkeypatch, wheel, tmp_path):
    """What `infra deploy` and AWS itself would provide: the bucket, the instance profile, the Spot
    service-linked role, the DLAMI;
    and a spot market of fixed prices (tests.cloud.MARKET). Returns the AMI id."""
    import boto3

    from orchestrator.aws.clients import Cloud
    from orchestrator.aws.infra import ensure_spot_service_linked_role
    from orchestrator.aws.prices import FixedPrices
    from orchestrator.cli import context
    from tests.cloud import BUCKET, MARKET, ON_DEMAND, seed_example_data

    monkeypatch.setenv("SPOTCTL_WHEEL", str(wheel))
    monkeypatch.setenv("SPOTCTL_CACHE_DIR", str(tmp_path / "cache"))
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    seed_example_data()  # what launch checks before a boot
    iam = boto3.client("iam")
    iam.create_instance_profile(InstanceProfileName="spotctl-trainer")
    iam.create_role(RoleName="spotctl-trainer", AssumeRolePolicyDocument=json.dumps(TRUST_EC2))
    iam.put_role_policy(RoleName="spotctl-trainer", PolicyName="trainer", PolicyDocument=json.dumps(trainer_policy()))
    iam.add_role_to_instance_profile(InstanceProfileName="spotctl-trainer", RoleName="spotctl-trainer")
    ensure_spot_service_linked_role(Cloud("us-east-1"))  # as `infra deploy` does
    ami = aws.seed_deep_learning_ami()
    aws.route_default_vpc_to_the_internet()
    monkeypatch.setattr(context, "aws_prices", lambda cloud: FixedPrices(MARKET, ON_DEMAND))
    return ami
