"""A multi-node job's cluster placement group, against the strict local cloud's placement groups
(moto has none): created tagged with the job and reused, never another's; AWS's refusals (a
cluster group in one zone, types that cannot join one, deleting one in use) as AWS words them."""

from __future__ import annotations

import time

import boto3
import botocore.exceptions
import pytest

from orchestrator.aws import placement
from orchestrator.aws.clients import Cloud, error_code
from orchestrator.errors import UserError


def ec2():
    return boto3.client("ec2", region_name="us-east-1")


def run(zone: str, instance_type: str = "g5.xlarge", group: str | None = None, **spot) -> str:
    subnet = ec2().describe_subnets(Filters=[{"Name": "availability-zone", "Values": [zone]}])["Subnets"][0]
    request = {
        "ImageId": "ami-12c6146b",
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "SubnetId": subnet["SubnetId"],
        "InstanceMarketOptions": {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate", **spot},
        },
    }
    if group:
        request["Placement"] = {"GroupName": group}
    return ec2().run_instances(**request)["Instances"][0]["InstanceId"]


@pytest.fixture
def spot_account(aws):
    boto3.client("iam").create_service_linked_role(AWSServiceName="spot.amazonaws.com")
    return aws


def refused(call) -> tuple[str, str]:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call()
    return error_code(caught.value), caught.value.response["Error"]["Message"]


def test_the_jobs_group_is_created_tagged_reused_and_found_by_tag(aws):
    cloud = Cloud("us-east-1")
    name = placement.ensure_group(cloud, "demo-261202-abcd")
    assert name == "spotctl-demo-261202-abcd"
    assert placement.ensure_group(cloud, "demo-261202-abcd") == name  # a second launch reuses it
    found = placement.describe_group(cloud, name)
    assert found["Strategy"] == "cluster" and found["State"] == "available"
    assert {t["Key"]: t["Value"] for t in found["Tags"]} == {"spotctl:job": "demo-261202-abcd"}
    assert placement.groups_of(cloud, "demo-261202-abcd") == [name]
    assert placement.groups_of(cloud, "other-261202-abcd") == []
    assert refused(lambda: ec2().create_placement_group(GroupName=name, Strategy="cluster")) == (
        "InvalidPlacementGroup.Duplicate",
        f"The Placement Group '{name}' already exists.",
    )


def test_a_group_of_that_name_that_is_not_the_jobs_is_refused_with_the_fix(aws):
    ec2().create_placement_group(GroupName="spotctl-demo-261202-abcd", Strategy="spread")
    with pytest.raises(UserError) as caught:
        placement.ensure_group(Cloud("us-east-1"), "demo-261202-abcd")
    assert "is not this job's cluster group" in caught.value.message
    assert "aws ec2 delete-placement-group --group-name spotctl-demo-261202-abcd" in caught.value.hint


def terminate_once_visible(ids: list[str]) -> None:
    """As on AWS, a new instance cannot be named by id for a moment (eventual consistency)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            ec2().terminate_instances(InstanceIds=ids)
            return
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] != "InvalidInstanceID.NotFound" or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_cluster_group_lies_in_one_zone_and_cannot_be_deleted_while_in_use(spot_account):
    cloud = Cloud("us-east-1")
    name = placement.ensure_group(cloud, "demo-261202-abcd")
    first = run("us-east-1a", group=name)
    run("us-east-1a", group=name)  # the same zone joins
    assert refused(lambda: run("us-east-1b", group=name)) == (
        "InvalidPlacementGroup.InUse",
        f"The placement group '{name}' is in use in another availability zone: us-east-1a",
    )
    assert placement.delete_group(cloud, name) is False  # instances still in it: later
    ids = [i["InstanceId"] for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]]
    terminate_once_visible(ids)
    assert first in ids
    assert placement.delete_group(cloud, name) is True
    assert placement.describe_group(cloud, name) is None
    assert placement.delete_group(cloud, name) is True  # gone already: nothing to do
    assert refused(lambda: run("us-east-1a", group=name))[0] == "InvalidPlacementGroup.Unknown"


def test_types_that_cannot_join_a_cluster_group_and_spot_that_stops_are_refused(spot_account):
    name = placement.ensure_group(Cloud("us-east-1"), "demo-261202-abcd")
    code, message = refused(lambda: run("us-east-1a", instance_type="t2.micro", group=name))
    assert code == "InvalidParameterCombination" and "t2.micro" in message
    code, message = refused(
        lambda: run("us-east-1a", group=name, SpotInstanceType="persistent", InstanceInterruptionBehavior="stop")
    )
    assert code == "InvalidParameterCombination" and "stop or hibernate on interruption" in message
