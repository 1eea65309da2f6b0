"""infra/operator-policy.json is exactly what spotctl calls: every AWS request the CLI makes through a
whole job's life (offers, a dry run, launch, status, an interruption and resume, stop, logs,
artifacts), as moto's request recorder saw it on the wire (boto3 and s3fs alike), mapped to the IAM
actions that authorise it, must be allowed by the policy, and the policy must allow nothing else."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from urllib.parse import parse_qs, urlparse

from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import AwsPrices
from orchestrator.cli import context
from orchestrator.local.strict import PROXY_ACCESS_KEY
from testbed import REPO
from tests.cloud import EXAMPLE, STORAGE, launched_id

POLICY = REPO / "infra" / "operator-policy.json"
FREE = {"sts:GetCallerIdentity"}  # needs no permission


def recorder(server, action: str) -> bytes:
    method = "GET" if action == "download-recording" else "POST"
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{server.endpoint}/moto-api/recorder/{action}", method=method, data=None if method == "GET" else b""
        )
    ) as r:
        return r.read()


def iam_actions(entry: dict) -> set[str]:
    """The IAM actions that authorise one recorded request."""
    headers = {k.lower(): v for k, v in entry["headers"].items()}
    service = re.search(r"Credential=[^/]+/\d+/[^/]+/([^/]+)/", headers.get("authorization", ""))
    service = service.group(1) if service else "s3"
    body = base64.b64decode(entry["body"]) if entry.get("body_encoded") else (entry.get("body") or "").encode()
    if "x-amz-target" in headers:  # JSON protocol: SSM, Pricing
        return {f"{service}:{headers['x-amz-target'].split('.')[-1]}"}
    if service != "s3":  # query protocol: EC2, IAM, STS, CloudFormation
        params = parse_qs(body.decode()) or parse_qs(urlparse(entry["url"]).query)
        action = params["Action"][0]
        found = {f"{service}:{action}"}
        if action == "RunInstances":
            if any(k.startswith("IamInstanceProfile") for k in params):
                found.add("iam:PassRole")  # handing the instance its role
            if any(k.startswith("TagSpecification") for k in params):
                found.add("ec2:CreateTags")  # tagging on create
        return found
    url = urlparse(entry["url"])
    query, method = parse_qs(url.query, keep_blank_values=True), entry["method"]
    has_key = len(url.path.strip("/").split("/", 1)) == 2
    if not has_key:
        if "delete" in query:
            return {"s3:DeleteObject"}
        return {"s3:ListBucket"} if method in ("GET", "HEAD") else {f"s3:{method} bucket {url.query}"}
    if method in ("GET", "HEAD"):
        return {"s3:GetObject"}
    if method == "DELETE":
        return {"s3:AbortMultipartUpload"} if "uploadId" in query else {"s3:DeleteObject"}
    found = {"s3:PutObject"}  # PUT, and the multipart POSTs (?uploads, ?uploadId)
    if "x-amz-tagging" in headers:
        found.add("s3:PutObjectTagging")
    return found


def allowed(policy: dict) -> set[str]:
    return {
        a
        for s in policy["Statement"]
        if s["Effect"] == "Allow"
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }


def test_the_operator_policy_allows_exactly_what_a_jobs_life_calls(account, aws, spotctl, monkeypatch, tmp_path):
    monkeypatch.setattr(context, "aws_prices", lambda cloud: AwsPrices(cloud))  # the real price calls, too
    # moto has no Pricing API and fails such a request before recording it: botocore's own events see
    # every call a Cloud's clients make (not s3fs's, which the recorder sees).
    called: set[str] = set()
    real_client = Cloud.client

    def client(self, service, region=None, retries="standard"):
        made = real_client(self, service, region, retries)
        prefix = made.meta.service_model.signing_name
        if prefix != "s3":
            made.meta.events.register(
                "before-call", lambda model, **_: called.add(f"{prefix}:{model.name}"), unique_id="operator-policy-test"
            )
        return made

    monkeypatch.setattr(Cloud, "client", client)
    recorder(aws, "reset-recording")
    recorder(aws, "start-recording")
    try:
        assert spotctl("offers", str(EXAMPLE))[0] == 0
        assert spotctl("launch", str(EXAMPLE), "--dry-run")[0] == 0
        private = tmp_path / "private.yaml"  # no public IP: launch first checks the subnet's routes (refused here)
        private.write_text(EXAMPLE.read_text().replace("  public_ip: true", "  public_ip: false"))
        assert spotctl("launch", str(private), "--dry-run")[0] == 1
        code, out, err = spotctl("launch", str(EXAMPLE))
        assert code == 0, err
        job_id = launched_id(out)
        for args in (("status", "--storage", STORAGE), ("status", job_id, "--storage", STORAGE)):
            code, _, err = spotctl(*args)
            assert code == 0, err
        import boto3

        [instance] = [
            i["InstanceId"] for r in boto3.client("ec2").describe_instances()["Reservations"] for i in r["Instances"]
        ]
        aws.interrupt(instance)
        code, _, err = spotctl("resume", job_id, "--storage", STORAGE)
        assert code == 0, err
        code, _, err = spotctl("stop", job_id, "--wait", "0", "--storage", STORAGE)
        assert code == 0, err
        spotctl("logs", job_id, "--storage", STORAGE)  # nothing shipped yet: an error, after the calls it makes
        spotctl("artifacts", job_id, "--storage", STORAGE)
    finally:
        recorder(aws, "stop-recording")
    recorded = [json.loads(line) for line in recorder(aws, "download-recording").decode().splitlines() if line.strip()]
    requests = [r for r in recorded if f"Credential={PROXY_ACCESS_KEY}/" not in str(r["headers"])]  # spotctl's own
    used = (set().union(*(iam_actions(r) for r in requests)) | called) - FREE
    assert "pricing:GetProducts" in called and "ec2:RunInstances" in used
    policy = json.loads(POLICY.read_text())
    assert sorted(used - allowed(policy)) == [], "spotctl calls these; add them to infra/operator-policy.json"
    assert sorted(allowed(policy) - used) == [], "infra/operator-policy.json allows these and spotctl never calls them"
