"""The security guarantees of SECURITY.md, each proved here (or in the test named beside it there):
instances locked down, user-data inert and free of secrets, nothing untrusted unpickled, no
credentials in any output, the trainer role held to its prefix by IAM itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import torch
import yaml

from testbed import REPO
from testbed.harness import free_port
from tests.cloud import EXAMPLE, hook_run_instances, launched_id, settled_ec2

# Fake, but shaped like real ones: an access key id, a secret, a session token.
FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN = (
    "AKIAZ7QEXAMPLE2XK4RT",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYZq9vS3TmUq",
    "FwoGZXIvYXdzEXAMPLEsessionTOKENzzQ9mV3x",
)


# ------------------------------------------------------------------------------------------ instances
def captured_run_instances(monkeypatch) -> list[dict]:
    """The parameters of every RunInstances spotctl sends, as botocore sends them."""
    seen: list[dict] = []
    hook_run_instances(monkeypatch, lambda params: seen.append(params))  # refuses none
    return seen


def route_default_vpc_through_a_nat_gateway() -> None:
    """What a private network has and a default VPC lacks: outbound traffic through a NAT gateway."""
    ec2 = boto3.client("ec2")
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"][0]["SubnetId"]
    nat = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=ec2.allocate_address(Domain="vpc")["AllocationId"])[
        "NatGateway"
    ]["NatGatewayId"]
    [table] = ec2.describe_route_tables(
        Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}, {"Name": "association.main", "Values": ["true"]}]
    )["RouteTables"]
    ec2.replace_route(
        RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat
    )  # was the internet gateway


def job_file(tmp_path, **compute) -> Path:
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["compute"].pop("public_ip", None)
    spec["compute"].update(compute)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job


@pytest.mark.parametrize("public_ip", [False, True])
def test_instances_require_imdsv2_take_no_inbound_traffic_and_encrypt_their_disk(
    account, spotctl, monkeypatch, tmp_path, public_ip
):
    sent = captured_run_instances(monkeypatch)
    if not public_ip:
        route_default_vpc_through_a_nat_gateway()
    job = job_file(tmp_path, **({"public_ip": True} if public_ip else {}))
    code, out, err = spotctl("launch", str(job))
    assert code == 0, err
    [params] = sent
    assert params["MetadataOptions"] == {
        "HttpTokens": "required",
        "HttpEndpoint": "enabled",
        "HttpPutResponseHopLimit": 1,
    }  # IMDSv2, not reachable from containers
    [interface] = params["NetworkInterfaces"]
    assert interface["AssociatePublicIpAddress"] is public_ip  # a public address only when asked
    assert all(device["Ebs"]["Encrypted"] for device in params["BlockDeviceMappings"])
    assert "KeyName" not in params  # no SSH key: nothing to log in with
    [group] = boto3.client("ec2").describe_security_groups(GroupIds=interface["Groups"])["SecurityGroups"]
    assert group["IpPermissions"] == []  # nothing inbound, from anywhere


def test_no_public_ip_where_the_only_way_out_is_an_internet_gateway_is_refused_before_launching(
    account, spotctl, monkeypatch, tmp_path
):
    sent = captured_run_instances(monkeypatch)
    for args in (("launch", str(job_file(tmp_path)), "--dry-run"), ("launch", str(job_file(tmp_path)))):
        code, _, err = spotctl(*args)
        assert code == 1 and err.count("error: ") == 1
        assert re.search(
            r"subnet subnet-\w+ \(us-east-1a\) reaches the internet only through an internet gateway, which needs a public IP",
            err,
        )
        assert "hint: set compute.public_ip: true (the security group still admits nothing inbound)" in err
    assert sent == []  # nothing started, no dry run sent


# ------------------------------------------------------------------------------------------ user-data
HOSTILE = [
    "s3://b/it's",
    "s3://b/$(touch /tmp/pwned)",
    "s3://b/`touch /tmp/pwned`",
    "s3://b/a b;touch /tmp/pwned",
    's3://b/"quoted"',
    "s3://b/${IFS}$(id)",
    "s3://b/\\$(id)",
]
SHA = "0123456789abcdef" * 4  # a wheel's sha256


@pytest.mark.parametrize("url", HOSTILE)
def test_hostile_urls_in_user_data_stay_inert_strings(url, tmp_path):
    from orchestrator.jobs.userdata import Bootstrap, render

    script = render(Bootstrap("job-1", 1, "us-east-1", url, url, url, "0.1.0", SHA))
    header = script.split("export SPOTCTL_JOB_URL")[0]
    probe = tmp_path / "probe.sh"
    probe.write_text(header + 'printf "%s\\n%s\\n%s" "$JOB_URL" "$JOB_PREFIX" "$WHEEL_URL"\n')
    result = subprocess.run(["bash", str(probe)], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout == "\n".join([url] * 3) and result.returncode == 0  # the value, byte for byte, nothing run
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("url", ["s3://b/a\nb", "s3://b/a\rb", "s3://b/a\0b", "https://example.com/x"])
def test_urls_that_quoting_cannot_make_safe_are_refused(url):
    from orchestrator.errors import UserError
    from orchestrator.jobs.userdata import Bootstrap, render

    with pytest.raises(UserError, match="must be an s3:// URL on one line"):
        render(Bootstrap("job-1", 1, "us-east-1", url, "s3://b/j", "s3://b/w", "0.1.0", SHA))


@pytest.mark.parametrize("job_id", ["job;id", "job$(id)", "job`id`", "job\nid", "../job", "job id", "-rf"])
def test_hostile_job_ids_are_refused(job_id):
    from orchestrator.errors import UserError
    from orchestrator.jobs.userdata import Bootstrap, render

    with pytest.raises(UserError, match="may hold only letters"):
        render(Bootstrap(job_id, 1, "us-east-1", "s3://b/j", "s3://b/j", "s3://b/w", "0.1.0", SHA))


@pytest.mark.parametrize("digest", ["", "$(id)", SHA.upper(), SHA[:-1], SHA + "0", SHA[:-1] + "\n"])
def test_a_wheel_digest_that_is_not_a_sha256_is_refused(digest):
    from orchestrator.errors import UserError
    from orchestrator.jobs.userdata import Bootstrap, render

    with pytest.raises(UserError, match="wheel_sha256 must be 64 lower-case hex digits"):
        render(Bootstrap("job-1", 1, "us-east-1", "s3://b/j", "s3://b/j", "s3://b/w", "0.1.0", digest))


@pytest.mark.parametrize("name", ["x$(touch /tmp/pwned)", "x`id`", "x;id", "x\ny", "x y"])
def test_hostile_job_names_never_reach_a_script(spotctl, tmp_path, name):
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["name"] = name
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    code, _, err = spotctl("validate", str(job))
    # Refused as a name, or (a newline) as a control character on its line; either way one printable line.
    assert code == 2 and ("name:" in err or "control character \\n" in err), err
    assert all(line.isprintable() for line in err.splitlines())
    assert not Path("/tmp/pwned").exists()


# ------------------------------------------------------------------------------------------ credentials
def test_credentials_appear_in_no_output_user_data_object_or_log(account, spotctl, monkeypatch, tmp_path, aws):
    for name, value in (
        ("AWS_ACCESS_KEY_ID", FAKE_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", FAKE_SECRET),
        ("AWS_SESSION_TOKEN", FAKE_TOKEN),
    ):
        monkeypatch.setenv(name, value)
    seen = []
    for args in (
        ("launch", str(EXAMPLE), "--dry-run"),
        ("launch", str(EXAMPLE), "--dry-run", "--json"),
        ("launch", str(EXAMPLE)),
        ("status", "--storage", "s3://my-spotctl-bucket/spotctl", "--json"),
    ):
        code, out, err = spotctl(*args)
        seen.append(out + err)
    job_id = launched_id(seen[2])
    env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_EC2_METADATA_DISABLED": "true"}
    for args in (
        ("--debug", "logs", "no-such-job", "--storage", "s3://my-spotctl-bucket/spotctl"),  # errors, with tracebacks
        ("--debug", "status", "--storage", "s3://no-such-bucket-here/x"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode != 0 and "Traceback" in done.stderr
        seen.append(done.stdout + done.stderr)
    ec2, s3 = settled_ec2(), boto3.client("s3")
    [instance] = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    import base64

    seen.append(
        base64.b64decode(
            ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")["UserData"][
                "Value"
            ]
        ).decode()
    )
    for item in s3.list_objects_v2(Bucket="my-spotctl-bucket", Prefix=f"spotctl/jobs/{job_id}/")["Contents"]:
        seen.append(s3.get_object(Bucket="my-spotctl-bucket", Key=item["Key"])["Body"].read().decode())
    # The trainer, failing on storage it cannot use, says why without the keys it used.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "name": "bad",
                "storage": "s3://no-such-bucket-here/x",
                "train": {"model": {"name": "resnet18"}, "data": {"train": "s3://no-such-bucket-here/d"}},
            }
        )
    )
    trainer = subprocess.run(
        [sys.executable, "-m", "trainer", "run", "--job", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert trainer.returncode == 1 and "no-such-bucket-here" in trainer.stderr
    seen.append(trainer.stdout + trainer.stderr)
    assert len(seen) > 8
    for text in seen:
        for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN, FAKE_SECRET[:16]):
            assert secret not in text


# ------------------------------------------------------------------------------------------ loading
class Payload:
    """What a tampered file carries: unpickling it would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_checkpoint_is_refused_not_loaded(tmp_path):
    import hashlib

    from trainer.checkpoint import MANIFEST, STATE_FILE, Checkpointer, CorruptCheckpoint
    from trainer.job.storage import Storage

    storage, marker = Storage(str(tmp_path / "job")), tmp_path / "ran"
    Checkpointer(storage).write(5, {"model": {"w": torch.ones(2)}}, {})
    folder = tmp_path / "job/checkpoints/step-5"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker)}, evil)
    (folder / STATE_FILE).write_bytes(evil.read_bytes())
    committed = Checkpointer(storage).latest()
    with pytest.raises(CorruptCheckpoint, match="does not match its manifest"):  # sha256 first
        Checkpointer(storage).load(committed)
    # Someone who can also rewrite the manifest: weights_only refuses to build anything but tensors.
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][STATE_FILE] = {
        "sha256": hashlib.sha256(evil.read_bytes()).hexdigest(),
        "size": evil.stat().st_size,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        Checkpointer(storage).load(Checkpointer(storage).latest())
    assert not marker.exists()


def test_weights_from_a_url_are_checked_and_never_unpickled_beyond_tensors(tmp_path):
    import hashlib

    import torchvision

    from trainer.job.spec import ModelSpec
    from trainer.model import WeightsError, build_model

    marker, good, evil = tmp_path / "ran", tmp_path / "good.pt", tmp_path / "evil.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), good)
    torch.save({"conv1.weight": Payload(marker)}, evil)
    with pytest.raises(WeightsError, match="cannot be loaded as a state dict"):
        build_model(ModelSpec(name="resnet18", weights=str(evil)), 3)
    wrong = "0" * 64
    with pytest.raises(WeightsError, match=f"not train.model.weights_sha256 {wrong}"):
        build_model(ModelSpec(name="resnet18", weights=str(good), weights_sha256=wrong), 3)
    build_model(
        ModelSpec(name="resnet18", weights=str(good), weights_sha256=hashlib.sha256(good.read_bytes()).hexdigest()), 3
    )
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ the trainer role
@pytest.fixture
def iam_enforcing_s3():
    """Start a moto server of its own that evaluates IAM policies: its first `unchecked` requests (a
    test's set-up) go through, every later one must be signed by a user whose policy allows it."""
    servers = []

    def start(unchecked: int) -> str:
        port = free_port()
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(unchecked)}
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                return endpoint
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    yield start
    for server in servers:
        server.terminate()
        server.wait(10)


def user_with_policy(endpoint: str, name: str, policy: dict) -> dict:
    """Three unchecked requests: the user, its policy, its key. Returns client keywords signed as it."""
    open_kw = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "x",
        "aws_secret_access_key": "x",
    }
    iam = boto3.client("iam", **open_kw)
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {**open_kw, "aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def allowed(call) -> bool:
    try:
        call()
        return True
    except (botocore.exceptions.ClientError, PermissionError) as exc:
        if isinstance(exc, botocore.exceptions.ClientError):
            assert exc.response["Error"]["Code"] == "AccessDenied", exc
        return False


def signed_as(monkeypatch, client_kw: dict) -> None:
    """Point s3fs (through the environment) at the server, signed as the given user."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", client_kw["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", client_kw["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", client_kw["aws_secret_access_key"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()


def trainer_role_policy(bucket: str, prefix: str) -> dict:
    """The TrainerRole's inline policy as infra/spotctl.yaml defines it, with its !Sub / !GetAtt filled in."""
    from cfnlint.decode import decode_str

    template, _ = decode_str((REPO / "infra" / "spotctl.yaml").read_text())
    [policy] = template["Resources"]["TrainerRole"]["Properties"]["Policies"]
    values = {"Bucket.Arn": f"arn:aws:s3:::{bucket}", "Prefix": prefix}

    def resolve(node):
        if isinstance(node, dict) and set(node) == {"Fn::Sub"}:
            text = node["Fn::Sub"]
            for name, value in values.items():
                text = text.replace("${" + name + "}", value)
            return text
        if isinstance(node, dict) and set(node) == {"Fn::GetAtt"}:
            return values[".".join(node["Fn::GetAtt"])]
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(json.loads(json.dumps(policy["PolicyDocument"], default=str)))


def test_the_trainer_role_reaches_only_its_prefix(iam_enforcing_s3, monkeypatch, tmp_path):
    from trainer.job.storage import Storage

    endpoint = iam_enforcing_s3(unchecked=7)
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    s3.create_bucket(Bucket="team-bucket")
    s3.create_bucket(Bucket="other-bucket")
    s3.put_object(Bucket="team-bucket", Key="spotctl/jobs/a/job.yaml", Body=b"job")
    s3.put_object(Bucket="team-bucket", Key="finance/salaries.csv", Body=b"secret")
    policy = trainer_role_policy("team-bucket", "spotctl")
    as_trainer = user_with_policy(endpoint, "instance", policy)  # the 7th request: IAM checks everything after it
    trainer_s3 = boto3.client("s3", **as_trainer)

    assert not allowed(
        lambda: trainer_s3.get_object(Bucket="team-bucket", Key="finance/salaries.csv")
    )  # first: no request goes unchecked
    assert allowed(lambda: trainer_s3.get_object(Bucket="team-bucket", Key="spotctl/jobs/a/job.yaml"))
    assert allowed(
        lambda: trainer_s3.put_object(Bucket="team-bucket", Key="spotctl/jobs/a/checkpoints/step-1/state.pt", Body=b"w")
    )
    assert allowed(
        lambda: trainer_s3.delete_object(Bucket="team-bucket", Key="spotctl/jobs/a/checkpoints/step-1/state.pt")
    )
    # What the trainer and the bootstrap write (trainer/job/layout.py), and nothing that decides what
    # the next instance boots: job.yaml, record.json, control/, wheels/ stay read-only.
    from trainer.job import layout

    for owned in (
        layout.HEARTBEAT,
        layout.FINAL,
        layout.trainer_log(1),
        layout.bootstrap_log(2),
        layout.metrics_part(1, 1),
        layout.MANIFEST,
        layout.artifact("e1", "model.onnx"),
        "best/step-3/state.pt",
    ):
        assert allowed(
            lambda owned=owned: trainer_s3.put_object(Bucket="team-bucket", Key=f"spotctl/jobs/a/{owned}", Body=b"x")
        )
    assert allowed(lambda: trainer_s3.delete_object(Bucket="team-bucket", Key=f"spotctl/jobs/a/{layout.FINAL}"))
    for kept in (
        f"jobs/a/{layout.JOB_FILE}",
        f"jobs/a/{layout.RECORD}",
        f"jobs/a/{layout.CONTROL_STOP}",
        f"jobs/a/{layout.final_of(1)}",
        layout.wheel_key("0" * 64, "spotctl-0.1.0-py3-none-any.whl"),
        "datasets/flowers/train/rose/1.jpg",
    ):
        assert not allowed(
            lambda kept=kept: trainer_s3.put_object(Bucket="team-bucket", Key=f"spotctl/{kept}", Body=b"x")
        ), kept
        assert not allowed(lambda kept=kept: trainer_s3.delete_object(Bucket="team-bucket", Key=f"spotctl/{kept}")), (
            kept
        )
    assert not allowed(  # another file than the heartbeat under status/
        lambda: trainer_s3.put_object(Bucket="team-bucket", Key="spotctl/jobs/a/status/other.json", Body=b"x")
    )
    assert allowed(lambda: trainer_s3.list_objects_v2(Bucket="team-bucket", Prefix="spotctl/jobs/"))
    assert not allowed(lambda: trainer_s3.put_object(Bucket="team-bucket", Key="finance/salaries.csv", Body=b"changed"))
    assert not allowed(lambda: trainer_s3.delete_object(Bucket="team-bucket", Key="finance/salaries.csv"))
    assert not allowed(
        lambda: trainer_s3.get_object(Bucket="team-bucket", Key="spotctl-evil/x")
    )  # a sibling prefix is not the prefix
    assert not allowed(lambda: trainer_s3.list_objects_v2(Bucket="other-bucket"))
    assert not allowed(lambda: boto3.client("ec2", **as_trainer).describe_instances())  # nothing but S3
    assert not allowed(lambda: boto3.client("iam", **as_trainer).list_users())

    # What the trainer itself does, through s3fs, as the role: check, tagged and multipart writes, reads.
    signed_as(monkeypatch, as_trainer)
    job = Storage("s3://team-bucket/spotctl/jobs/a")
    job.check()
    job.write_bytes("checkpoints/step-2/MANIFEST.json", b"{}", create_only=True, tags={"spotctl:kind": "checkpoint"})
    big = tmp_path / "state.pt"
    big.write_bytes(os.urandom(12 * 2**20))  # above s3fs's multipart threshold
    job.upload(str(big), "checkpoints/step-2/state.pt", tags={"spotctl:kind": "checkpoint"})
    assert job.read_bytes("job.yaml") == b"job" and job.list("checkpoints/step-2") == ["MANIFEST.json", "state.pt"]
    assert not job.exists("status/final.json")
    # Listing is limited to the prefix by a condition moto does not evaluate; the policy says so:
    [listing] = [s for s in policy["Statement"] if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["spotctl", "spotctl/*"]}}


def test_the_operator_policy_covers_spotctls_storage_calls_and_nothing_else(iam_enforcing_s3, monkeypatch, tmp_path):
    from orchestrator.aws import infra
    from orchestrator.jobs.record import JobStore
    from trainer.job.documents import JobRecord

    endpoint = iam_enforcing_s3(unchecked=5)
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    s3.create_bucket(Bucket="team-bucket")
    s3.put_object(Bucket="team-bucket", Key="finance/salaries.csv", Body=b"secret")
    deployed = infra.Deployed(
        "spotctl",
        "us-east-1",
        "team-bucket",
        "s3://team-bucket/spotctl",
        "p",
        "sg-1",
        "arn:aws:iam::123456789012:role/r",
        "now",
        vpc="vpc-1",
    )
    as_operator = user_with_policy(endpoint, "operator", infra.operator_policy(deployed))
    signed_as(monkeypatch, as_operator)

    store = JobStore("s3://team-bucket/spotctl")
    store.check()  # what every command does first
    record = JobRecord(
        job_id="j1",
        name="j",
        region="us-east-1",
        storage="s3://team-bucket/spotctl",
        job_url="s3://team-bucket/spotctl/jobs/j1/job.yaml",
        wheel_url="s3://team-bucket/spotctl/wheels/abc/spotctl-0.1.0-py3-none-any.whl",
        ami="ami-12345678",
    )
    store.storage.write_bytes("jobs/j1/job.yaml", b"name: j")
    store.write_record(record, create=True)
    store.update_record("j1", lambda r: setattr(r, "budget_usd", 5.0))  # a conditional write (If-Match)
    assert store.job_ids() == ["j1"] and store.read_record("j1").budget_usd == 5.0
    wheel = tmp_path / "spotctl-0.1.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(1000))
    store.storage.upload(str(wheel), "wheels/abc/spotctl-0.1.0-py3-none-any.whl")
    store.storage.delete("jobs/j1/job.yaml")
    operator_s3 = boto3.client("s3", **as_operator)
    assert not allowed(lambda: operator_s3.get_object(Bucket="team-bucket", Key="finance/salaries.csv"))
    assert not allowed(lambda: operator_s3.put_object(Bucket="team-bucket", Key="finance/x", Body=b"x"))
    assert not allowed(lambda: boto3.client("iam", **as_operator).list_users())


# ------------------------------------------------------------------------------------------ record.json
@pytest.mark.parametrize(
    ("field", "value", "refusal"),
    [
        (
            "wheel_url",
            "s3://attacker-bucket/wheels/{sha}/spotctl-0.1.0-py3-none-any.whl",
            "wheel_url 's3://attacker-bucket/wheels/{sha}/spotctl-0.1.0-py3-none-any.whl' is not a wheel under "
            "this job's storage; expected s3://my-spotctl-bucket/spotctl/wheels/<sha256>/<name>.whl",
        ),
        (
            "wheel_url",
            "s3://my-spotctl-bucket/spotctl/jobs/{job}/artifacts/x.whl",  # a path the instance may write
            "wheel_url 's3://my-spotctl-bucket/spotctl/jobs/{job}/artifacts/x.whl' is not a wheel under this job's "
            "storage; expected s3://my-spotctl-bucket/spotctl/wheels/<sha256>/<name>.whl",
        ),
        (
            "ami",
            "ami-0badc0ffee0000000",
            "ami 'ami-0badc0ffee0000000' is not {ami}, which compute.ami (ssm:{parameter}) resolves to, and it is "
            "owned by nobody (it does not exist), neither Amazon nor account 123456789012",
        ),
    ],
    ids=["another-bucket", "instance-writable", "unknown-ami"],
)
def test_a_tampered_record_is_refused_before_the_next_attempt(
    account, aws, spotctl, monkeypatch, field, value, refusal
):
    from trainer.job.spec import DEFAULT_AMI

    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    job_id = launched_id(out)
    s3, key = boto3.client("s3"), f"spotctl/jobs/{job_id}/record.json"
    record = json.loads(s3.get_object(Bucket="my-spotctl-bucket", Key=key)["Body"].read())
    sha = record["wheel_url"].split("/wheels/")[1].split("/")[0]
    filled = {"sha": sha, "job": job_id, "ami": record["ami"], "parameter": DEFAULT_AMI.removeprefix("ssm:")}
    record[field] = value.format(**filled)
    s3.put_object(Bucket="my-spotctl-bucket", Key=key, Body=json.dumps(record).encode())
    [instance] = [
        i["InstanceId"] for r in boto3.client("ec2").describe_instances()["Reservations"] for i in r["Instances"]
    ]
    aws.interrupt(instance)

    sent = captured_run_instances(monkeypatch)
    code, _, err = spotctl("resume", job_id, "--storage", "s3://my-spotctl-bucket/spotctl")
    assert code == 1
    assert err.splitlines()[0] == f"error: record.json of job {job_id}: {refusal.format(**filled)}"
    assert err.splitlines()[1].startswith("hint: someone other than spotctl changed record.json")
    assert sent == []
    live = [
        i["InstanceId"]
        for r in boto3.client("ec2").describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )["Reservations"]
        for i in r["Instances"]
    ]
    assert live == []  # nothing started with it


def test_an_earlier_amazon_image_of_a_moving_ssm_parameter_is_still_accepted(account, aws, spotctl):
    code, out, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    job_id = launched_id(out)
    s3, key = boto3.client("s3"), f"spotctl/jobs/{job_id}/record.json"
    record = json.loads(s3.get_object(Bucket="my-spotctl-bucket", Key=key)["Body"].read())
    [older] = [
        i for i in boto3.client("ec2").describe_images(Owners=["amazon"])["Images"] if i["ImageId"] != record["ami"]
    ][:1]
    record["ami"] = older["ImageId"]  # what ".../latest" named when the job was launched
    s3.put_object(Bucket="my-spotctl-bucket", Key=key, Body=json.dumps(record).encode())
    [instance] = [
        i["InstanceId"] for r in boto3.client("ec2").describe_instances()["Reservations"] for i in r["Instances"]
    ]
    aws.interrupt(instance)
    code, _, err = spotctl("resume", job_id, "--storage", "s3://my-spotctl-bucket/spotctl")
    assert code == 0, err
    [second] = [
        i
        for r in boto3.client("ec2").describe_instances(Filters=[{"Name": "tag:spotctl:attempt", "Values": ["2"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]
    assert second["ImageId"] == older["ImageId"]  # the job keeps the image it started with
