"""`spotctl infra deploy|status|delete` against the moto server: the stack's bucket checked through an
independent S3 client, a job file that leaves storage, instance profile and security group out
launched with the stack's outputs, delete refusing while jobs exist; cfn-lint on every template."""

from __future__ import annotations

import ast
import json

import boto3
import pytest
import yaml

from orchestrator.aws import infra
from testbed import REPO
from tests.cloud import EXAMPLE, launched_id

ACCOUNT = "123456789012"  # moto's
BUCKET = f"spotctl-{ACCOUNT}-us-east-1"


@pytest.fixture
def deployed(account, spotctl):
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
    assert (
        err.splitlines()[0] == f"creating stack spotctl in us-east-1 (bucket {BUCKET})"
        and "spotctl: CREATE_COMPLETE" in err
    )
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
    assert resources == {
        "ObjectsUnderThePrefix": f"arn:aws:s3:::{BUCKET}/spotctl/*",
        "ListThePrefix": f"arn:aws:s3:::{BUCKET}",
        "ReadDatasets": ["arn:aws:s3:::my-datasets", "arn:aws:s3:::my-datasets/imagenet/*"],
    }  # --data-read, read-only
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    [group] = boto3.client("ec2").describe_security_groups(GroupIds=[outputs["SecurityGroup"]])["SecurityGroups"]
    assert group["IpPermissions"] == []

    recorded = infra.read_profile()
    assert (recorded.storage, recorded.instance_profile, recorded.security_group) == (
        outputs["Storage"],
        outputs["InstanceProfile"],
        outputs["SecurityGroup"],
    )

    code, out, _ = spotctl("infra", "policy")  # what to attach to the people and CI who run spotctl
    assert code == 0 and "${" not in out
    policy = json.loads(out)
    assert {"arn:aws:s3:::" + BUCKET, f"arn:aws:s3:::{BUCKET}/spotctl/*", recorded.role_arn} <= {
        s["Resource"] for s in policy["Statement"] if isinstance(s["Resource"], str)
    }
    boto3.client("iam").create_policy(PolicyName="spotctl-operator", PolicyDocument=out)  # IAM accepts it as a policy

    code, out, _ = spotctl("infra", "status")
    assert code == 0 and out.splitlines()[0] == "stack spotctl in us-east-1: CREATE_COMPLETE"
    for check in ("public access blocked", "encrypted at rest", "aborts incomplete uploads"):
        assert f"  ok   {check}" in out
    assert f"  n/a  tls only (plain-HTTP endpoint {boto3.client('s3').meta.endpoint_url})" in out
    code, out, err = spotctl("infra", "deploy")  # again, no options: an update that keeps every earlier choice
    assert code == 0, err
    assert "updating stack spotctl in us-east-1" in err and infra.read_profile().storage == outputs["Storage"]
    parameters = {
        p["ParameterKey"]: p["ParameterValue"]
        for p in boto3.client("cloudformation").describe_stacks(StackName="spotctl")["Stacks"][0]["Parameters"]
    }
    assert (parameters["BucketName"], parameters["CheckpointExpirationDays"]) == (BUCKET, "30")
    assert "ReadDatasets" in statements_of(iam, role["RoleName"])  # the dataset grant survived


def test_a_job_file_without_storage_profile_or_group_launches_with_the_stacks(deployed, spotctl, tmp_path):
    spec = yaml.safe_load(EXAMPLE.read_text())
    del spec["storage"], spec["compute"]["instance_profile"]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    stored = infra.read_profile()

    code, out, err = spotctl("launch", str(job))
    assert code == 0, err
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

    code, _, err = spotctl("infra", "delete")
    assert code == 1 and err.splitlines()[0] == (
        f"error: bucket {BUCKET} holds 1 job under spotctl/jobs/; deleting the stack removes the role and "
        "security group they run with"
    )
    code, out, err = spotctl("infra", "delete", "--force")
    assert code == 0, err
    assert out.strip().startswith(f"deleted stack spotctl in us-east-1; bucket {BUCKET} kept with its objects")
    assert infra.read_profile() is None
    code, _, err = spotctl(
        "infra", "deploy"
    )  # the kept bucket's name is taken: said before CloudFormation fails half-way
    assert code == 1 and err.startswith(f"error: bucket {BUCKET} already exists (kept from an earlier stack")
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
    assert [r["Type"] for r in resources.values() if r["Type"].startswith("AWS::EC2::SecurityGroupIngress")] == []
    role = resources["TrainerRole"]["Properties"]
    assert "ManagedPolicyArns" not in role and role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "ec2.amazonaws.com"
    }
