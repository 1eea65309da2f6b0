"""infra/operator-policy.json is exactly what spotctl calls: every AWS request the CLI makes through a
whole job's life (offers, a dry run, launch, status, an interruption and resume, stop, logs,
artifacts), as moto's request recorder saw it on the wire (boto3 and s3fs alike), mapped to the IAM
actions that authorise it, must be allowed by the policy, and the policy must allow nothing else.

moto evaluates no EC2 or IAM conditions, so the conditions (GPU types only, Amazon's or the account's
images, the stack's VPC, encrypted volumes, tagged groups, the Spot service-linked role only) are
evaluated here by `evaluate`, a small model of IAM's Allow rules, against the requests spotctl sent."""

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
from tests.orchestrator.test_infra import controller_cache

__all__ = ["controller_cache"]  # the fixture, used by name

POLICY = REPO / "infra" / "operator-policy.json"
FREE = {"sts:GetCallerIdentity"}  # needs no permission
BUCKET_READS = {
    "publicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "encryption": "s3:GetEncryptionConfiguration",
    "policy": "s3:GetBucketPolicy",
    "lifecycle": "s3:GetLifecycleConfiguration",
}
# EC2 creates the Spot service-linked role at an account's first spot request, with the caller's
# rights (AuthFailure.ServiceLinkedRoleCreationNotPermitted without them); `infra deploy` creates it too.
IMPLIED_BY = {"ec2:RunInstances": {"iam:CreateServiceLinkedRole"}}


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
        for subresource, action in BUCKET_READS.items():  # doctor's look at the bucket's protections
            if subresource in query and method == "GET":
                return {action}
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


def test_the_operator_policy_allows_exactly_what_a_jobs_life_calls(
    account, aws, spotctl, monkeypatch, tmp_path, controller_cache
):
    from orchestrator.aws import infra

    # The stack, deployed before (by whoever may: not the operator); its profile set aside, so the job's
    # life is the one without a stack's defaults (spotctl makes the job's security group).
    code, _, err = spotctl("infra", "deploy", "--region", "us-east-1")
    assert code == 0, err
    infra.profile_path().unlink()
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
        # compute.nodes: 2 in the job's placement group; one node lost, only it replaced (the survivor
        # retagged with the next attempt); rm deletes the group.
        nodes = tmp_path / "nodes.yaml"
        nodes.write_text(EXAMPLE.read_text().replace("  disk_gib: 120\n", "  disk_gib: 120\n  nodes: 2\n"))
        code, out, err = spotctl("launch", str(nodes))
        assert code == 0, err
        gang = launched_id(out)
        from orchestrator.jobs.record import JobStore

        aws.interrupt(JobStore(STORAGE).read_record(gang).attempts[-1].nodes[1].instance_id)
        code, _, err = spotctl("resume", gang, "--storage", STORAGE)
        assert code == 0, err
        code, _, err = spotctl("rm", gang, "--force", "--storage", STORAGE)
        assert code == 0, err
        spotctl("logs", job_id, "--storage", STORAGE)  # nothing shipped yet: an error, after the calls it makes
        spotctl("artifacts", job_id, "--storage", STORAGE)
        code, out, err = spotctl("infra", "status", "--region", "us-east-1")  # the controller's health view
        assert "  health             waiting for the first tick" in out.splitlines(), out + err
    finally:
        recorder(aws, "stop-recording")
    recorded = [json.loads(line) for line in recorder(aws, "download-recording").decode().splitlines() if line.strip()]
    requests = [r for r in recorded if f"Credential={PROXY_ACCESS_KEY}/" not in str(r["headers"])]  # spotctl's own
    used = (set().union(*(iam_actions(r) for r in requests)) | called) - FREE
    used |= set().union(*(IMPLIED_BY.get(action, set()) for action in used))
    assert "pricing:GetProducts" in called and "ec2:RunInstances" in used
    assert {"cloudformation:DescribeStacks", "sqs:GetQueueAttributes", "logs:FilterLogEvents"} <= used
    policy = json.loads(POLICY.read_text())
    assert sorted(used - allowed(policy)) == [], "spotctl calls these; add them to infra/operator-policy.json"
    assert sorted(allowed(policy) - used) == [], "infra/operator-policy.json allows these and spotctl never calls them"


# ------------------------------------------------------------------------------------------ conditions
def _like(pattern: str, value: str) -> bool:
    return (
        re.fullmatch(".*".join(".".join(map(re.escape, p.split("?"))) for p in pattern.split("*")), value) is not None
    )


OPERATORS = {
    "StringEquals": lambda expected, value: expected == value,
    "StringLike": _like,
    "ArnEquals": _like,  # IAM's Arn operators both take wildcards
    "ArnLike": _like,
    "Bool": lambda expected, value: expected.lower() == value.lower(),
}


def evaluate(policy: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    """Whether an Allow statement matches the action on this resource with every condition met (a
    condition on a key the request does not carry is not met, as in IAM). No Deny statements here."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if not any(_like(a, action) for a in actions) or not any(_like(r, resource) for r in resources):
            continue
        met = True
        for operator, keys in statement.get("Condition", {}).items():
            # ForAllValues: every value of a multi-valued key (here comma-separated) matches one expected.
            # A key the request lacks is not met here, though IAM's ForAllValues holds it met: each such
            # statement must also test a key every request carries.
            every, _, base = operator.rpartition(":")
            for key, expected in keys.items():
                expected = expected if isinstance(expected, list) else [expected]
                values = context[key].split(",") if every == "ForAllValues" and key in context else [context.get(key)]
                if key not in context or not all(any(OPERATORS[base](e, v) for e in expected) for v in values):
                    met = False
        if met:
            return True
    return False


ACCOUNT, VPC = "123456789012", "vpc-0stack"


def run_instances_allowed(policy: dict, request: dict, owner: str, vpc: str = VPC) -> bool:
    """RunInstances is authorised resource by resource: each must be allowed, with its condition keys."""
    region = "us-east-1"
    tags = {t["Key"]: t["Value"] for spec in request.get("TagSpecifications", []) for t in spec["Tags"]}
    market = request.get("InstanceMarketOptions", {}).get("MarketType", "on-demand")
    instance = {
        "ec2:InstanceType": request["InstanceType"],
        "ec2:InstanceMarketType": market,
        "ec2:MetadataHttpTokens": request.get("MetadataOptions", {}).get("HttpTokens", "optional"),
        **{f"aws:RequestTag/{k}": v for k, v in tags.items()},
    }
    in_vpc = {"ec2:Vpc": f"arn:aws:ec2:{region}:{ACCOUNT}:vpc/{vpc}"}
    encrypted = all(d.get("Ebs", {}).get("Encrypted") for d in request.get("BlockDeviceMappings", []))
    checks = [
        (f"arn:aws:ec2:{region}:{ACCOUNT}:instance/*", instance),
        (f"arn:aws:ec2:{region}::image/{request['ImageId']}", {"ec2:Owner": owner}),
        (f"arn:aws:ec2:{region}:{ACCOUNT}:subnet/subnet-1", in_vpc),
        (f"arn:aws:ec2:{region}:{ACCOUNT}:network-interface/*", in_vpc),
        (f"arn:aws:ec2:{region}:{ACCOUNT}:security-group/sg-1", in_vpc),
        (f"arn:aws:ec2:{region}:{ACCOUNT}:volume/*", {"ec2:Encrypted": str(encrypted).lower()}),
    ]
    group = request.get("Placement", {}).get("GroupName")
    if group:  # compute.nodes > 1: the job's placement group, tagged with the job (aws/placement)
        checks.append((f"arn:aws:ec2:{region}:{ACCOUNT}:placement-group/{group}", request.get("GroupTags", {})))
    return all(evaluate(policy, "ec2:RunInstances", arn, context) for arn, context in checks)


def test_the_operator_policy_allows_spotctls_own_launch_and_refuses_any_other(account, spotctl, monkeypatch):
    from orchestrator.aws import infra
    from tests.cloud import hook_run_instances

    sent: list[dict] = []
    hook_run_instances(monkeypatch, lambda params: sent.append(params))
    code, _, err = spotctl("launch", str(EXAMPLE))
    assert code == 0, err
    [request] = sent
    deployed = infra.Deployed(
        "spotctl", "us-east-1", "b", "s3://b/spotctl", "p", "sg-1", f"arn:aws:iam::{ACCOUNT}:role/r", "now", vpc=VPC
    )
    policy = infra.operator_policy(deployed)

    assert run_instances_allowed(policy, request, owner="amazon")  # what spotctl sends, from the DLAMI
    assert run_instances_allowed(policy, request, owner=ACCOUNT)  # an image of the account's own
    for refused in (
        run_instances_allowed(policy, {**request, "InstanceType": "m5.large"}, owner="amazon"),  # not a GPU type
        run_instances_allowed(policy, {**request, "InstanceType": "x2iedn.32xlarge"}, owner="amazon"),
        run_instances_allowed(policy, request, owner="210987654321"),  # a community AMI
        run_instances_allowed(policy, request, owner="aws-marketplace"),
        run_instances_allowed(policy, request, owner="amazon", vpc="vpc-0other"),
        run_instances_allowed(policy, {**request, "InstanceMarketOptions": {}}, owner="amazon"),  # on-demand
        run_instances_allowed(policy, {**request, "TagSpecifications": []}, owner="amazon"),  # untagged
        run_instances_allowed(
            policy,
            {**request, "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"Encrypted": False}}]},
            owner="amazon",
        ),
    ):
        assert refused is False

    # The security group spotctl makes when a job names none: tagged, in the stack's VPC only.
    group = "arn:aws:ec2:us-east-1:123456789012:security-group/*"
    tagged = {"aws:RequestTag/spotctl:managed": "true"}
    assert evaluate(policy, "ec2:CreateSecurityGroup", group, tagged)
    assert not evaluate(policy, "ec2:CreateSecurityGroup", group, {})
    assert evaluate(policy, "ec2:CreateSecurityGroup", f"arn:aws:ec2:us-east-1:{ACCOUNT}:vpc/{VPC}", {})
    assert not evaluate(policy, "ec2:CreateSecurityGroup", f"arn:aws:ec2:us-east-1:{ACCOUNT}:vpc/vpc-0other", {})
    # compute.nodes > 1: ingress is added only to spotctl's multi-node group (its own members), in the
    # stack's VPC; never to the no-inbound group or anyone else's.
    in_vpc = {"ec2:Vpc": f"arn:aws:ec2:us-east-1:{ACCOUNT}:vpc/{VPC}"}
    nodes_group = {"aws:ResourceTag/spotctl:admits": "its-own-members", **in_vpc}
    assert evaluate(policy, "ec2:AuthorizeSecurityGroupIngress", group, nodes_group)
    for other in ({"aws:ResourceTag/spotctl:managed": "true", **in_vpc}, in_vpc):
        assert not evaluate(policy, "ec2:AuthorizeSecurityGroupIngress", group, other)
    assert not evaluate(
        policy,
        "ec2:AuthorizeSecurityGroupIngress",
        group,
        {**nodes_group, "ec2:Vpc": f"arn:aws:ec2:us-east-1:{ACCOUNT}:vpc/vpc-0other"},
    )

    # One service-linked role, EC2 Spot's; no other service's.
    def creates_role(service: str, name: str) -> bool:
        arn = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/{service}/{name}"
        return evaluate(policy, "iam:CreateServiceLinkedRole", arn, {"iam:AWSServiceName": service})

    # `infra status`: this stack, its controller's two queues and its log group; nobody else's.
    stack = f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/spotctl/0a1b2c3d"
    assert evaluate(policy, "cloudformation:DescribeStacks", stack, {})
    assert not evaluate(policy, "cloudformation:DescribeStacks", stack.replace("/spotctl/", "/other/"), {})
    assert not evaluate(policy, "cloudformation:UpdateStack", stack, {})
    for queue in ("spotctl-ControllerQueue-AbC", "spotctl-ControllerDeadLetterQueue-DeF"):
        arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue}"
        assert evaluate(policy, "sqs:GetQueueAttributes", arn, {}), queue
        for action in ("sqs:ReceiveMessage", "sqs:SendMessage", "sqs:PurgeQueue", "sqs:DeleteMessage"):
            assert not evaluate(policy, action, arn, {}), action  # reads its depth; never takes or adds a message
    assert not evaluate(policy, "sqs:GetQueueAttributes", f"arn:aws:sqs:us-east-1:{ACCOUNT}:other-queue", {})
    group = f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/lambda/spotctl-controller:*"
    assert evaluate(policy, "logs:FilterLogEvents", group, {})
    assert not evaluate(policy, "logs:FilterLogEvents", group.replace("spotctl-controller", "payments"), {})
    assert not evaluate(policy, "logs:DeleteLogGroup", group, {})

    # compute.nodes > 1: placement groups tagged on create, used and deleted while tagged; an instance's
    # attempt tag alone retagged, on spotctl's instances only.
    placement_checks(policy)

    assert creates_role("spot.amazonaws.com", "AWSServiceRoleForEC2Spot")
    assert not creates_role("autoscaling.amazonaws.com", "AWSServiceRoleForAutoScaling")
    assert not creates_role("spotfleet.amazonaws.com", "AWSServiceRoleForEC2SpotFleet")


def placement_checks(policy: dict, region: str = "us-east-1") -> None:
    """A multi-node job's IAM, both ways (the operator's policy and the controller's role alike)."""
    group = f"arn:aws:ec2:{region}:{ACCOUNT}:placement-group/spotctl-j-1"
    instance = f"arn:aws:ec2:{region}:{ACCOUNT}:instance/i-1"
    job_tag, owned = {"aws:RequestTag/spotctl:job": "j-1"}, {"aws:ResourceTag/spotctl:job": "j-1"}
    assert evaluate(policy, "ec2:CreatePlacementGroup", group, job_tag)
    assert not evaluate(policy, "ec2:CreatePlacementGroup", group, {})  # untagged
    assert evaluate(policy, "ec2:CreateTags", group, {"ec2:CreateAction": "CreatePlacementGroup", **job_tag})
    assert not evaluate(policy, "ec2:CreateTags", group, job_tag)  # retagging a group later
    assert evaluate(policy, "ec2:DeletePlacementGroup", group, owned)
    assert not evaluate(policy, "ec2:DeletePlacementGroup", group, {})  # someone else's group
    assert evaluate(policy, "ec2:DescribePlacementGroups", "*", {})
    request = {**SPOT_GANG, "Placement": {"GroupName": "spotctl-j-1"}}
    assert run_instances_allowed(policy, {**request, "GroupTags": owned}, owner="amazon")
    assert not run_instances_allowed(policy, request, owner="amazon")  # a group spotctl did not make
    retag = {**owned, "aws:RequestTag/spotctl:attempt": "2", "aws:TagKeys": "spotctl:attempt"}
    assert evaluate(policy, "ec2:CreateTags", instance, retag)
    assert not evaluate(policy, "ec2:CreateTags", instance, {**retag, "aws:ResourceTag/spotctl:job": ""})
    assert not evaluate(policy, "ec2:CreateTags", instance, {k: v for k, v in retag.items() if "Resource" not in k})
    assert not evaluate(
        policy,
        "ec2:CreateTags",
        instance,
        {**retag, "aws:RequestTag/spotctl:job": "other", "aws:TagKeys": "spotctl:attempt,spotctl:job"},
    )  # any other tag of one of spotctl's instances stays as it was launched
    for action in ("ec2:ModifyPlacementGroup", "ec2:ModifyInstancePlacement"):
        assert not evaluate(policy, action, group, owned), action


# What a gang launch sends (an instance of compute.nodes: 2), for the placement checks.
SPOT_GANG = {
    "InstanceType": "g5.xlarge",
    "ImageId": "ami-1",
    "InstanceMarketOptions": {"MarketType": "spot"},
    "MetadataOptions": {"HttpTokens": "required"},
    "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "spotctl:job", "Value": "j-1"}]}],
    "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"Encrypted": True}}],
}


def test_an_ec2_refusal_says_how_to_decode_its_message():
    import botocore.exceptions

    from orchestrator.aws.clients import as_user_error

    refusal = botocore.exceptions.ClientError(
        {
            "Error": {
                "Code": "UnauthorizedOperation",
                "Message": "You are not authorized to perform this operation. Encoded authorization failure message: AbC",
            }
        },
        "RunInstances",
    )
    error = as_user_error(refusal, "starting g5.xlarge in us-east-1a")
    assert error.message == (
        "AWS refused starting g5.xlarge in us-east-1a: UnauthorizedOperation: You are not authorized to perform "
        "this operation. Encoded authorization failure message: AbC"
    )
    assert error.hint.endswith(
        "; `aws sts decode-authorization-message --encoded-message MESSAGE` (the text after 'Encoded authorization "
        "failure message:') says which resource or condition was refused"
    )
