"""`spotctl infra deploy|status|delete` against the moto server: the stack's bucket checked through an
independent S3 client, the Spot service-linked role ensured, the README's example launched with the
stack's outputs (and a warning for data the role cannot read), delete refusing while instances run or
jobs exist; the trainer role's writable paths held to trainer/job/layout.py; cfn-lint on every template."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import logging
import re

import boto3
import botocore.exceptions
import pytest
import yaml

from orchestrator.aws import infra
from orchestrator.aws.clients import Cloud
from orchestrator.errors import UserError
from testbed import REPO
from tests.cloud import EXAMPLE_AS_WRITTEN, launched_id, seed_image_folder
from trainer.job.documents import ControllerTick

ACCOUNT = "123456789012"  # moto's
BUCKET = f"spotctl-{ACCOUNT}-us-east-1"


@pytest.fixture
def controller_cache(account, kept_cache_dir, monkeypatch):
    """The controller's zip built once, not per test."""
    monkeypatch.setenv("SPOTCTL_CACHE_DIR", str(kept_cache_dir))


@pytest.fixture
def deployed(account, controller_cache, spotctl):
    code, out, err = spotctl(
        "infra",
        "deploy",
        "--region",
        "us-east-1",
        "--expire-checkpoints-days",
        "30",
        "--data-read",
        "s3://my-datasets/imagenet/",
    )
    assert code == 0, err
    return out, err


def statements_of(iam, role: str) -> dict[str, dict]:
    """The role's inline policy statements by Sid."""
    found = {}
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        document = (
            ast.literal_eval(document) if isinstance(document, str) else document
        )  # moto's CloudFormation stores the Python repr
        found.update({s["Sid"]: s for s in document["Statement"]})
    return found


def test_deploy_creates_the_stack_secures_the_bucket_and_records_the_outputs(deployed, spotctl):
    out, err = deployed
    from orchestrator.jobs import lambda_package

    code_zip = lambda_package.build()  # cached: the zip deploy uploaded
    key = f"spotctl/lambda/{code_zip.sha256}/spotctl-controller-0.1.0.zip"
    assert (
        err.splitlines()
        == [
            "building the controller's code (spotctl without torch, for Lambda)",
            "service-linked role AWSServiceRoleForEC2Spot: present",  # the account fixture has it already
            f"creating stack spotctl in us-east-1 (bucket {BUCKET})",
            "spotctl: CREATE_COMPLETE",  # moto's CloudFormation creates at once
            # the code lives in the stack's bucket: uploaded once the bucket exists, then the stack updated
            f"controller: spotctl 0.1.0, code sha256 {code_zip.sha256[:12]}: uploaded",
            "updating stack spotctl in us-east-1",
            "spotctl: UPDATE_COMPLETE",
        ]
    )
    uploaded = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(uploaded).hexdigest() == code_zip.sha256
    function = boto3.client("lambda").get_function(FunctionName="spotctl-controller")["Configuration"]
    assert (function["Runtime"], function["Handler"], function["Timeout"], function["Environment"]) == (
        "python3.12",
        "orchestrator.controller.handler.handler",
        60,
        {"Variables": {"SPOTCTL_STORAGE": f"s3://{BUCKET}/spotctl"}},
    )
    assert function["CodeSha256"] == base64.b64encode(bytes.fromhex(code_zip.sha256)).decode()  # Lambda's own digest
    [spot_role] = boto3.client("iam").list_roles(PathPrefix="/aws-service-role/spot.amazonaws.com/")["Roles"]
    assert json.dumps(spot_role["AssumeRolePolicyDocument"]).count("spot.amazonaws.com") == 1
    stack = boto3.client("cloudformation").describe_stacks(StackName="spotctl")["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["Storage"] == f"s3://{BUCKET}/spotctl" and outputs["SecurityGroup"].startswith("sg-")
    assert f"  storage           s3://{BUCKET}/spotctl" in out.splitlines()

    # What S3 itself says, through a client of our own, not through spotctl.
    s3 = boto3.client("s3")
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    [rule] = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # TLS-only: in the template (see test_the_template_denies_plain_http); on this plain-HTTP endpoint it
    # would refuse every request, so deploy leaves it out here and says so.
    rules = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert any(
        r["Status"] == "Enabled" and r["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1} for r in rules
    )

    # The instance role: one inline policy, objects under the prefix only; the group: nothing inbound.
    iam = boto3.client("iam")
    [profile] = [
        p
        for p in iam.list_instance_profiles()["InstanceProfiles"]
        if p["InstanceProfileName"] == outputs["InstanceProfile"]
    ]
    [role] = profile["Roles"]
    resources = {sid: statement["Resource"] for sid, statement in statements_of(iam, role["RoleName"]).items()}
    jobs = f"arn:aws:s3:::{BUCKET}/spotctl/jobs/*"
    assert resources == {
        "ReadUnderThePrefix": f"arn:aws:s3:::{BUCKET}/spotctl/*",
        "WriteWhatTheTrainerOwns": [
            f"{jobs}/checkpoints/*",
            f"{jobs}/best/*",
            f"{jobs}/artifacts/*",
            f"{jobs}/metrics/*",
            f"{jobs}/logs/*",
            f"{jobs}/status/heartbeat.json",
            f"{jobs}/status/final.json",
        ],
        "ListThePrefix": f"arn:aws:s3:::{BUCKET}",
        "ReadDatasets": ["arn:aws:s3:::my-datasets", "arn:aws:s3:::my-datasets/imagenet/*"],
        "DenyTheSecrets": [f"arn:aws:s3:::{BUCKET}/spotctl/secrets/*"],  # the jobs' notify targets
    }  # --data-read, read-only
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    [group] = boto3.client("ec2").describe_security_groups(GroupIds=[outputs["SecurityGroup"]])["SecurityGroups"]
    # Inbound from its own members only (a multi-node job's nodes), from no address range.
    [rule] = group["IpPermissions"]
    assert rule["IpProtocol"] == "-1" and rule["IpRanges"] == [] and rule["Ipv6Ranges"] == []
    assert [pair["GroupId"] for pair in rule["UserIdGroupPairs"]] == [outputs["SecurityGroup"]]

    recorded = infra.read_profile()
    [default_vpc] = boto3.client("ec2").describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    assert (
        recorded.storage,
        recorded.instance_profile,
        recorded.security_group,
        recorded.vpc,
        recorded.data_read,
    ) == (
        outputs["Storage"],
        outputs["InstanceProfile"],
        outputs["SecurityGroup"],
        default_vpc["VpcId"],
        ["arn:aws:s3:::my-datasets", "arn:aws:s3:::my-datasets/imagenet/*"],
    )

    code, out, _ = spotctl("infra", "policy")  # what to attach to the people and CI who run spotctl
    assert code == 0 and "${" not in out
    policy = json.loads(out)
    assert {"arn:aws:s3:::" + BUCKET, f"arn:aws:s3:::{BUCKET}/spotctl/*", recorded.role_arn} <= {
        s["Resource"] for s in policy["Statement"] if isinstance(s["Resource"], str)
    }
    boto3.client("iam").create_policy(PolicyName="spotctl-operator", PolicyDocument=out)  # IAM accepts it as a policy

    code, out, err = spotctl("infra", "status")
    assert code == 0 and out.splitlines()[0] == "stack spotctl in us-east-1: UPDATE_COMPLETE"
    assert [
        "controller spotctl-controller: spotctl 0.1.0, code sha256 " + code_zip.sha256[:12],
        "  last tick          none yet",
        "  queue              0 waiting, 0 in flight",
        "  dead letters       0",
        "  errors, last hour  0",
        "  health             waiting for the first tick",
    ] == [
        line
        for line in out.splitlines()
        if line.startswith(("controller", "  last", "  queue", "  dead", "  errors", "  health"))
    ]
    for check in ("public access blocked", "encrypted at rest", "aborts incomplete uploads"):
        assert f"  ok   {check}" in out
    assert f"  n/a  tls only (plain-HTTP endpoint {boto3.client('s3').meta.endpoint_url})" in out
    code, out, err = spotctl("infra", "deploy")  # again, no options: an update that keeps every earlier choice
    assert code == 0, err
    assert err.splitlines()[1] == "service-linked role AWSServiceRoleForEC2Spot: present"
    assert "updating stack spotctl in us-east-1" in err and infra.read_profile().storage == outputs["Storage"]
    parameters = {
        p["ParameterKey"]: p["ParameterValue"]
        for p in boto3.client("cloudformation").describe_stacks(StackName="spotctl")["Stacks"][0]["Parameters"]
    }
    assert (parameters["BucketName"], parameters["CheckpointExpirationDays"]) == (BUCKET, "30")
    assert "ReadDatasets" in statements_of(iam, role["RoleName"])  # the dataset grant survived


def test_infra_status_reports_the_controllers_tick_queue_dead_letters_and_errors(deployed, spotctl):
    from datetime import datetime, timedelta, timezone

    outputs = infra.outputs_of(boto3.client("cloudformation").describe_stacks(StackName="spotctl")["Stacks"][0])
    tick = (datetime.now(timezone.utc) - timedelta(seconds=30)).isoformat(timespec="seconds")
    s3, sqs, logs = boto3.client("s3"), boto3.client("sqs"), boto3.client("logs")
    # What the controller writes (orchestrator.controller.handler: a ControllerTick).
    written = ControllerTick(at=tick, version="1.0", jobs_seen=[], errors=[]).model_dump_json()
    s3.put_object(Bucket=BUCKET, Key="spotctl/controller/tick.json", Body=written)
    sqs.send_message(QueueUrl=outputs["ControllerQueueUrl"], MessageBody="{}")
    code, out, _ = spotctl("infra", "status", "--json")
    controller = json.loads(out)["controller"]
    assert code == 0 and (controller["queue"], controller["dead_letters"], controller["health"]) == (
        {"waiting": 1, "in_flight": 0},
        0,
        "ok",
    )
    assert controller["tick"] == json.loads(written) and 29 <= controller["tick_age_s"] < 120
    code, out, _ = spotctl("infra", "status")
    assert re.search(rf"^  last tick          {re.escape(tick)} \(\d+ s ago\), 0 errors$", out, re.M), out

    # A message that failed its five receives, and an error logged: failing, exit 1.
    sqs.send_message(QueueUrl=outputs["ControllerDeadLetterQueueUrl"], MessageBody="{}")
    logs.create_log_stream(logGroupName=outputs["ControllerLogGroup"], logStreamName="s")
    now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    logs.put_log_events(
        logGroupName=outputs["ControllerLogGroup"],
        logStreamName="s",
        logEvents=[
            {"timestamp": now_ms - 7_200_000, "message": "[ERROR] two hours ago: not counted"},
            {"timestamp": now_ms - 1000, "message": "[ERROR] RunInstances refused"},
            {"timestamp": now_ms, "message": "[INFO] tick"},
        ],
    )
    code, out, _ = spotctl("infra", "status")
    assert code == 1
    assert "  dead letters       1" in out.splitlines() and "  errors, last hour  1" in out.splitlines()
    assert "  health             failing" in out.splitlines()

    # --no-controller takes it out of the stack again.
    code, out, err = spotctl("infra", "deploy", "--no-controller")
    assert code == 0, err
    assert "  controller        left out (jobs launched without --watch are recovered by nobody)" in out.splitlines()
    assert "ControllerFunction" not in infra.outputs_of(
        boto3.client("cloudformation").describe_stacks(StackName="spotctl")["Stacks"][0]
    )
    # (moto's CloudFormation keeps the resources a condition drops on an update; AWS deletes them.)
    code, out, _ = spotctl("infra", "status")
    assert "controller: not deployed (`spotctl infra deploy` adds it; --no-controller left it out)" in out.splitlines()


def test_the_templates_rules_are_the_controllers_event_patterns():
    from cfnlint.decode import decode_str

    template, _ = decode_str((REPO / "infra" / "spotctl.yaml").read_text())
    rules = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Events::Rule"]
    patterns = sorted(json.dumps(r["EventPattern"], sort_keys=True) for r in rules if "EventPattern" in r)
    schedules = [r["ScheduleExpression"] for r in rules if "ScheduleExpression" in r]
    queue = {"Fn::GetAtt": ["ControllerQueue", "Arn"]}
    assert all([t["Arn"] for t in r["Targets"]] == [queue] for r in rules)
    events = pytest.importorskip(
        "orchestrator.controller.events", reason="the controller's branch (EVENT_PATTERNS) is not merged yet"
    )
    assert patterns == sorted(json.dumps(p, sort_keys=True) for p in events.EVENT_PATTERNS.values())
    assert schedules == [events.SCHEDULE_EXPRESSION]


def test_the_readme_example_launches_with_the_stacks_profile_and_group(deployed, spotctl, tmp_path, caplog):
    # What the README says to do: the example, with the stack's bucket written in (`--bucket NAME` at
    # deploy would make it the example's own); it names no instance profile or security group.
    job = tmp_path / "job.yaml"
    job.write_text(EXAMPLE_AS_WRITTEN.read_text().replace("my-spotctl-bucket", BUCKET))
    spec = yaml.safe_load(job.read_text())
    assert "instance_profile" not in spec["compute"] and "security_group" not in spec["compute"]
    for split in ("train", "val"):
        seed_image_folder(f"s3://{BUCKET}/spotctl/datasets/flowers/{split}")  # uploaded, as the README says
    stored = infra.read_profile()

    with caplog.at_level(logging.WARNING):
        code, out, err = spotctl("launch", str(job))
    assert code == 0, err
    assert [
        r.message for r in caplog.records if r.message.startswith("warning:")
    ] == []  # its data is the role's to read
    job_id = launched_id(out)
    [instance] = [
        i
        for r in boto3.client("ec2").describe_instances(Filters=[{"Name": "tag:spotctl:job", "Values": [job_id]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]
    assert instance["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{stored.instance_profile}")
    assert [g["GroupId"] for g in instance["NetworkInterfaces"][0]["Groups"]] == [stored.security_group]
    written = yaml.safe_load(
        boto3.client("s3").get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{job_id}/job.yaml")["Body"].read()
    )
    assert (
        written["storage"] == stored.storage and written["compute"]["security_group"] == stored.security_group
    )  # the instance reads the same

    # Deleting the stack under a running instance: refused (CloudFormation would end in DELETE_FAILED,
    # the group still in use), even with --force, until told to terminate it.
    for args in (("infra", "delete"), ("infra", "delete", "--force")):
        code, _, err = spotctl(*args)
        assert code == 1 and err.splitlines()[:2] == [
            f"error: 1 spotctl instance still runs with stack spotctl's security group or instance profile: "
            f"{instance['InstanceId']} (job {job_id})",
            "hint: stop the jobs first (`spotctl stop JOB`), or pass --terminate-instances to terminate them before deleting",
        ]
    assert boto3.client("cloudformation").describe_stacks(StackName="spotctl")["Stacks"][0]["StackStatus"] == (
        "UPDATE_COMPLETE"  # created, then updated with the controller
    )
    spec = yaml.safe_load(job.read_text())
    del spec["storage"]
    job.write_text(yaml.safe_dump(spec))

    # Another region than the stack's (in the file, or by --region): its resources do not apply.
    code, _, err = spotctl("launch", str(job), "--region", "eu-west-1")
    assert (
        code == 2
        and "storage: required but missing; add storage: s3://my-bucket/spotctl (or run `spotctl infra deploy` once"
        in err
    )
    spec["region"] = "eu-west-1"
    job.write_text(yaml.safe_dump(spec))
    code, _, err = spotctl("validate", str(job))
    assert code == 2 and "storage: required but missing" in err
    # Storage of its own: the stack's role reaches only the stack's bucket, so it is not filled in.
    spec["region"], spec["storage"] = "us-east-1", "s3://my-spotctl-bucket/spotctl"
    job.write_text(yaml.safe_dump(spec))
    code, _, err = spotctl("launch", str(job))
    assert code == 1 and err.startswith("error: compute.instance_profile is not set")

    code, _, err = spotctl("infra", "delete", "--terminate-instances")  # nothing terminated before this is settled
    assert code == 1 and err.splitlines()[0] == (
        f"error: bucket {BUCKET} holds 1 job under spotctl/jobs/; deleting the stack removes the role and "
        "security group they run with"
    )
    code, out, err = spotctl("infra", "delete", "--force", "--terminate-instances")
    assert code == 0, err
    assert f"terminating 1 instance: {instance['InstanceId']}" in err.splitlines()
    [state] = [
        i["State"]["Name"]
        for r in boto3.client("ec2").describe_instances(InstanceIds=[instance["InstanceId"]])["Reservations"]
        for i in r["Instances"]
    ]
    assert state == "terminated"
    assert out.strip().startswith(f"deleted stack spotctl in us-east-1; bucket {BUCKET} kept with its objects")
    assert infra.read_profile() is None
    code, _, err = spotctl(
        "infra", "deploy"
    )  # the kept bucket's name is taken: said before CloudFormation fails half-way
    assert code == 1 and err.splitlines()[1].startswith(
        f"error: bucket {BUCKET} already exists (kept from an earlier stack"
    )
    assert (
        "hint: pass --bucket NEW-NAME" in err
        and boto3.client("cloudformation").list_stacks()["StackSummaries"][-1]["StackStatus"] == "DELETE_COMPLETE"
    )
    code, out, _ = spotctl("infra", "status", "--region", "us-east-1")
    assert code == 1 and out.strip() == "no stack spotctl in us-east-1; `spotctl infra deploy` creates it"


def test_every_template_passes_cfn_lint():
    from cfnlint.api import lint_all

    templates = sorted((REPO / "infra").glob("*.yaml"))
    assert templates
    for template in templates:  # errors and warnings, as the cfn-lint command reports by default
        assert [str(m) for m in lint_all(template.read_text()) if m.rule.id[0] in "EW"] == [], template


def test_the_template_denies_plain_http_keeps_the_bucket_and_opens_nothing():
    """What moto's CloudFormation cannot show (it makes no bucket policy), read from the template itself."""
    from cfnlint.decode import decode_str

    template, _ = decode_str((REPO / "infra" / "spotctl.yaml").read_text())
    resources = template["Resources"]
    [statement] = resources["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == ("Deny", "*", "s3:*")
    assert (
        statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and len(statement["Resource"]) == 2
    )  # the bucket and its objects
    assert resources["Bucket"]["DeletionPolicy"] == "Retain"  # checkpoints and models outlive the stack
    assert "SecurityGroupIngress" not in resources["SecurityGroup"]["Properties"]
    # One ingress rule: the group's own members (a multi-node job's nodes reach each other), nobody else.
    ingress = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert ingress == [
        {
            "GroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]},
            "SourceSecurityGroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]},
            "IpProtocol": "-1",
            "Description": "spotctl nodes of one job reach each other",
        }
    ]
    assert not any("CidrIp" in r or "CidrIpv6" in r or "SourcePrefixListId" in r for r in ingress)
    role = resources["TrainerRole"]["Properties"]
    assert "ManagedPolicyArns" not in role and role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "ec2.amazonaws.com"
    }


# --------------------------------------------------------------------------- the Spot service-linked role
def aws_answers(cloud: Cloud, code: str, message: str) -> None:
    """IAM answering CreateServiceLinkedRole with an error, as AWS words it."""

    def refuse(**_):
        raise botocore.exceptions.ClientError({"Error": {"Code": code, "Message": message}}, "CreateServiceLinkedRole")

    cloud.client("iam").meta.events.register("before-call.iam.CreateServiceLinkedRole", refuse)


def test_the_spot_service_linked_role_is_created_once_and_found_present_after(aws):
    cloud = Cloud("us-east-1")
    assert infra.ensure_spot_service_linked_role(cloud) == "created"
    assert infra.ensure_spot_service_linked_role(cloud) == "present"  # moto: EntityAlreadyExists
    # AWS's answer when it exists (400 InvalidInput, as quoted in terraform and CDK issues):
    taken = Cloud("us-east-1")
    aws_answers(
        taken,
        "InvalidInput",
        "Service role name AWSServiceRoleForEC2Spot has been taken in this account, please try a different suffix.",
    )
    assert infra.ensure_spot_service_linked_role(taken) == "present"


def test_a_caller_who_may_not_create_the_spot_role_is_told_who_can_and_how(aws):
    denied = Cloud("us-east-1")
    aws_answers(denied, "AccessDenied", "User: arn:aws:iam::123456789012:user/dev is not authorized")
    with pytest.raises(UserError) as caught:
        infra.ensure_spot_service_linked_role(denied)
    assert caught.value.message == (
        "AWS refused creating the AWSServiceRoleForEC2Spot service-linked role: "
        "AccessDenied: User: arn:aws:iam::123456789012:user/dev is not authorized"
    )
    assert caught.value.hint == (
        "someone allowed to create it runs, once per account: "
        "aws iam create-service-linked-role --aws-service-name spot.amazonaws.com"
    )
    other = Cloud("us-east-1")
    aws_answers(other, "InvalidInput", "Custom suffix is not allowed for spot.amazonaws.com")
    with pytest.raises(UserError, match="Custom suffix is not allowed"):  # not every InvalidInput means "present"
        infra.ensure_spot_service_linked_role(other)


# --------------------------------------------------------------------------- data the role can read
def test_data_outside_the_stacks_prefix_and_grants_is_warned_about(deployed, spotctl, tmp_path, caplog):
    from trainer.job.spec_file import load_spec

    stored = infra.read_profile()
    job = tmp_path / "job.yaml"
    text = EXAMPLE_AS_WRITTEN.read_text().replace("my-spotctl-bucket", BUCKET)

    def warnings_for(train: str, val: str) -> list[str]:
        job.write_text(
            text.replace(f"s3://{BUCKET}/spotctl/datasets/flowers/train", train).replace(
                f"s3://{BUCKET}/spotctl/datasets/flowers/val", val
            )
        )
        return infra.data_outside_role(load_spec(job, defaults=infra.job_defaults), stored)

    assert warnings_for(f"s3://{BUCKET}/spotctl/datasets/a", "s3://my-datasets/imagenet/val") == []  # both readable
    assert warnings_for(f"s3://{BUCKET}/datasets/flowers/train", "s3://my-datasets/imagenet") == [
        f"train.data.train s3://{BUCKET}/datasets/flowers/train is outside what stack spotctl's instance role may read "
        f"(s3://{BUCKET}/spotctl/ and arn:aws:s3:::my-datasets, arn:aws:s3:::my-datasets/imagenet/*): the trainer "
        f"would be refused once the instance has booted; move the data under s3://{BUCKET}/spotctl/, or grant it "
        f"with `spotctl infra deploy --data-read s3://{BUCKET}/datasets/flowers/train/`"
    ]  # the README's old path; the granted imagenet/ prefix is read object by object beneath it
    assert [w.split(" is outside")[0] for w in warnings_for("s3://my-datasets/other/t", "s3://spotctl-x/v")] == [
        "train.data.train s3://my-datasets/other/t",
        "train.data.val s3://spotctl-x/v",
    ]
    # launch says so on the way, and still launches (the role may have rights granted elsewhere).
    warnings_for(f"s3://{BUCKET}/datasets/flowers/train", f"s3://{BUCKET}/spotctl/datasets/flowers/val")
    seed_image_folder(f"s3://{BUCKET}/datasets/flowers/train")
    seed_image_folder(f"s3://{BUCKET}/spotctl/datasets/flowers/val")
    with caplog.at_level(logging.WARNING):
        code, _, err = spotctl("launch", str(job), "--dry-run")
    assert code == 0, err
    assert [r.message for r in caplog.records if r.message.startswith("warning:")] == [
        f"warning: train.data.train s3://{BUCKET}/datasets/flowers/train is outside what stack spotctl's instance "
        f"role may read (s3://{BUCKET}/spotctl/ and arn:aws:s3:::my-datasets, arn:aws:s3:::my-datasets/imagenet/*): "
        f"the trainer would be refused once the instance has booted; move the data under s3://{BUCKET}/spotctl/, or "
        f"grant it with `spotctl infra deploy --data-read s3://{BUCKET}/datasets/flowers/train/`"
    ]
    # A job with an instance profile of its own: its rights are not known here, nothing is said.
    job.write_text(job.read_text().replace("compute:\n", "compute:\n  instance_profile: another\n", 1))
    assert infra.data_outside_role(load_spec(job, defaults=infra.job_defaults), stored) == []


# --------------------------------------------------------------------------- the trainer role and layout
def test_the_trainer_role_writes_exactly_the_trainer_owned_paths_of_layout():
    """The template spells the ARNs; infra.TRAINER_WRITES builds them from trainer/job/layout.py."""
    from cfnlint.decode import decode_str

    template, _ = decode_str((REPO / "infra" / "spotctl.yaml").read_text())
    [policy] = template["Resources"]["TrainerRole"]["Properties"]["Policies"]
    by_sid = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    written = [r["Fn::Sub"] for r in by_sid["WriteWhatTheTrainerOwns"]["Resource"]]
    assert written == infra.trainer_write_arns("${Bucket.Arn}", "${Prefix}")
    assert by_sid["ReadUnderThePrefix"]["Action"] == "s3:GetObject"  # everything else under the prefix: read only
    writes = {"s3:PutObject", "s3:DeleteObject", "s3:PutObjectTagging"}
    assert [
        s["Sid"]
        for s in by_sid.values()
        if writes & set(s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    ] == ["WriteWhatTheTrainerOwns"]


def test_an_account_without_a_default_vpc_deploys_into_the_vpc_it_names(account, spotctl):
    from tests.orchestrator.test_aws_fidelity import remove_default_vpc

    ec2 = boto3.client("ec2")
    remove_default_vpc(ec2)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    code, out, err = spotctl("infra", "deploy", "--region", "us-east-1", "--vpc", vpc, "--json")
    assert code == 0, err
    group = json.loads(out)["security_group"]
    assert ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["VpcId"] == vpc
    assert json.loads(out)["vpc"] == vpc
