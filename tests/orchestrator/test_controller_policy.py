"""The controller's execution role (infra/spotctl.yaml, ControllerRole) is least privilege: its policy,
resolved for one stack, evaluated by the operator policy test's model of IAM's Allow rules. Each grant
is checked both ways: what the controller does is allowed, its neighbours are not."""

from __future__ import annotations

import re

from cfnlint.decode import decode_str

from testbed import REPO
from tests.orchestrator.test_operator_policy import ACCOUNT, VPC, evaluate, placement_checks, run_instances_allowed

REGION, BUCKET, PREFIX, STACK = "us-east-1", "b", "spotctl", "spotctl"
TRAINER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/spotctl-TrainerRole-X"
QUEUE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:spotctl-ControllerQueue-X"
LOG_GROUP = f"/aws/lambda/{STACK}-controller"
VALUES = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::StackName": STACK,
    "Prefix": PREFIX,
    "ControllerVpc": VPC,
    "Bucket": BUCKET,
    "Bucket.Arn": f"arn:aws:s3:::{BUCKET}",
    "TrainerRole.Arn": TRAINER_ROLE,
    "ControllerQueue.Arn": QUEUE,
    "ControllerLogGroup": LOG_GROUP,
}


def resolve(node):
    """The template's intrinsics (Ref, Sub, GetAtt) with this stack's values."""
    if isinstance(node, list):
        return [resolve(n) for n in node]
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return VALUES[node["Ref"]]
        if set(node) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: VALUES[m.group(1)], node["Fn::Sub"])
        if set(node) == {"Fn::GetAtt"}:
            return VALUES[".".join(node["Fn::GetAtt"])]
        return {k: resolve(v) for k, v in node.items()}
    return node


def controller_policy() -> dict:
    template, _ = decode_str((REPO / "infra" / "spotctl.yaml").read_text())
    [policy] = template["Resources"]["ControllerRole"]["Properties"]["Policies"]
    return resolve(policy["PolicyDocument"])


POLICY = controller_policy()
INSTANCE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-1"
SPOT_LAUNCH = {
    "InstanceType": "g5.xlarge",
    "ImageId": "ami-1",
    "InstanceMarketOptions": {"MarketType": "spot"},
    "MetadataOptions": {"HttpTokens": "required"},
    "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "spotctl:job", "Value": "j-1"}]}],
    "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"Encrypted": True}}],
}


def allowed(action: str, resource: str, context: dict | None = None) -> bool:
    return evaluate(POLICY, action, resource, context or {})


def test_it_starts_only_tagged_spot_gpu_instances_like_the_operator():
    # run_instances_allowed checks the volume with ec2:Encrypted only; the controller also wants its tag.
    volume = f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/*"
    tagged_volume = {"ec2:Encrypted": "true", "aws:RequestTag/spotctl:job": "j-1"}
    assert allowed("ec2:RunInstances", volume, tagged_volume)
    assert not allowed("ec2:RunInstances", volume, {"ec2:Encrypted": "true"})
    assert not allowed("ec2:RunInstances", volume, {"ec2:Encrypted": "false", "aws:RequestTag/spotctl:job": "j-1"})
    policy = {
        **POLICY,
        "Statement": [
            {**s, "Condition": {"Bool": {"ec2:Encrypted": "true"}}}
            if s["Sid"] == "RunWithEncryptedTaggedVolumes"
            else s
            for s in POLICY["Statement"]
        ],
    }
    assert run_instances_allowed(policy, SPOT_LAUNCH, owner="amazon")
    assert run_instances_allowed(policy, SPOT_LAUNCH, owner=ACCOUNT)
    for refused in (
        {**SPOT_LAUNCH, "InstanceType": "m5.large"},
        {**SPOT_LAUNCH, "InstanceMarketOptions": {}},  # on-demand
        {**SPOT_LAUNCH, "MetadataOptions": {"HttpTokens": "optional"}},  # IMDSv1
        {**SPOT_LAUNCH, "TagSpecifications": []},  # untagged
        {
            **SPOT_LAUNCH,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "spotctl:job", "Value": ""}]}],
        },
    ):
        assert not run_instances_allowed(policy, refused, owner="amazon")
    assert not run_instances_allowed(policy, SPOT_LAUNCH, owner="210987654321")  # a community image
    assert not run_instances_allowed(policy, SPOT_LAUNCH, owner="amazon", vpc="vpc-0other")


def test_it_tags_only_while_starting_and_ends_only_spotctls_instances():
    tagging = {"ec2:CreateAction": "RunInstances", "aws:RequestTag/spotctl:job": "j-1"}
    assert allowed("ec2:CreateTags", INSTANCE, tagging)
    assert not allowed("ec2:CreateTags", INSTANCE, {"aws:RequestTag/spotctl:job": "j-1"})  # retagging later
    assert not allowed("ec2:CreateTags", INSTANCE, {"ec2:CreateAction": "RunInstances"})  # other tags
    assert not allowed("ec2:CreateTags", f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/sg-1", tagging)
    assert allowed("ec2:TerminateInstances", INSTANCE, {"aws:ResourceTag/spotctl:job": "j-1"})
    assert not allowed("ec2:TerminateInstances", INSTANCE, {})  # someone else's instance
    assert not allowed("ec2:TerminateInstances", INSTANCE, {"aws:ResourceTag/spotctl:job": ""})
    for action in ("ec2:StopInstances", "ec2:ModifyInstanceAttribute", "ec2:CreateSecurityGroup", "ec2:DeleteTags"):
        assert not allowed(action, INSTANCE, {"aws:ResourceTag/spotctl:job": "j-1"}), action
    assert allowed("ec2:DescribeInstances", "*") and allowed("ec2:DescribeSpotPriceHistory", "*")


def test_it_makes_uses_and_deletes_only_spotctls_placement_groups_and_retags_only_the_attempt():
    # Its RunInstances also wants the volume tagged (RunWithEncryptedTaggedVolumes): the model's launch
    # carries no volume tags, so that statement is relaxed here as in the first test.
    policy = {
        **POLICY,
        "Statement": [
            {**s, "Condition": {"Bool": {"ec2:Encrypted": "true"}}}
            if s["Sid"] == "RunWithEncryptedTaggedVolumes"
            else s
            for s in POLICY["Statement"]
        ],
    }
    placement_checks(policy, REGION)
    other_region = f"arn:aws:ec2:eu-west-1:{ACCOUNT}:placement-group/spotctl-j-1"
    assert not allowed("ec2:DeletePlacementGroup", other_region, {"aws:ResourceTag/spotctl:job": "j-1"})


def test_it_passes_only_the_trainer_role_to_ec2():
    assert allowed("iam:PassRole", TRAINER_ROLE, {"iam:PassedToService": "ec2.amazonaws.com"})
    assert not allowed("iam:PassRole", TRAINER_ROLE, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not allowed(
        "iam:PassRole",
        f"arn:aws:iam::{ACCOUNT}:role/spotctl-ControllerRole-X",
        {"iam:PassedToService": "ec2.amazonaws.com"},
    )
    for action in ("iam:CreateServiceLinkedRole", "iam:PutRolePolicy", "iam:AttachRolePolicy", "sts:AssumeRole"):
        assert not allowed(action, "*", {}), action


def test_it_reaches_only_the_prefix_its_queue_and_its_log_group():
    objects = f"arn:aws:s3:::{BUCKET}/{PREFIX}"
    assert allowed("s3:GetObject", f"{objects}/jobs/j-1/job.yaml")
    assert allowed("s3:PutObject", f"{objects}/jobs/j-1/record.json")
    assert allowed("s3:DeleteObject", f"{objects}/jobs/j-1/control/stop")
    assert allowed("s3:PutObject", f"{objects}/controller/tick.json")
    for key in ("wheels/x/spotctl.whl", "lambda/x/spotctl-controller.zip"):  # what instances and it run
        assert allowed("s3:GetObject", f"{objects}/{key}") and not allowed("s3:PutObject", f"{objects}/{key}"), key
    assert not allowed("s3:GetObject", f"arn:aws:s3:::{BUCKET}/other/x")
    assert not allowed("s3:GetObject", "arn:aws:s3:::another-bucket/spotctl/x")
    assert allowed("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": f"{PREFIX}/jobs/"})
    assert not allowed("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": "other/"})
    assert not allowed("s3:PutBucketPolicy", f"arn:aws:s3:::{BUCKET}")
    # its queue: drained, and a spot warning sent back to it to look again (controller.events.LOOK_AGAIN_S)
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"):
        assert allowed(action, QUEUE) and not allowed(action, QUEUE + "-other"), action
    assert allowed("sqs:SendMessage", QUEUE)
    assert not allowed("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:spotctl-ControllerDeadLetterQueue-X")
    assert not allowed("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:someone-elses-queue")
    for action in ("sqs:PurgeQueue", "sqs:SetQueueAttributes", "sqs:DeleteQueue", "sqs:CreateQueue"):
        assert not allowed(action, QUEUE), action
    stream = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{LOG_GROUP}:log-stream:s"
    assert allowed("logs:PutLogEvents", stream) and allowed("logs:CreateLogStream", stream)
    assert not allowed("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/other:log-stream:s")
    assert not allowed("logs:CreateLogGroup", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:x")
    assert not allowed("logs:DeleteLogGroup", stream)
    # notifications to the account's own SNS topics, not another account's; nothing else of SNS
    assert allowed("sns:Publish", f"arn:aws:sns:eu-west-1:{ACCOUNT}:alerts")
    assert not allowed("sns:Publish", "arn:aws:sns:us-east-1:999999999999:alerts")
    assert not allowed("sns:CreateTopic", f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts")


def test_it_reads_on_demand_prices_and_nothing_else_of_the_price_list():
    assert allowed("pricing:GetProducts", "*")  # the Price List API has no resources to scope it to
    for action in ("pricing:DescribeServices", "pricing:GetPriceListFileUrl", "pricing:ListPriceLists"):
        assert not allowed(action, "*"), action


def test_no_statement_grants_everything():
    unscoped = ("ec2:Describe", "pricing:GetProducts")  # reads that IAM cannot scope to a resource
    for statement in POLICY["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(a != "*" and not a.endswith(":*") for a in actions), statement["Sid"]
        if statement["Resource"] == "*":
            assert all(a.startswith(unscoped) for a in actions), statement["Sid"]
