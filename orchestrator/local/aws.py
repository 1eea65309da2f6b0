"""What real AWS has or does and moto lacks, put straight into moto's in-process backends (moto
refuses some of it through its API): the Deep Learning AMI (its public SSM parameter, its name and
description), a default VPC that routes to the internet, and the way EC2 ends an instance (a spot
interruption, a machine that shut itself down)."""

from __future__ import annotations

import datetime
import re

from orchestrator.aws import instances as ec2
from orchestrator.aws.amis import RELEASE_NOTES, SUPPORTED_BY_PARAMETER, parameter_line

SPOT_TERMINATION = (ec2.SPOT_TERMINATION, f"{ec2.SPOT_TERMINATION}: Spot instance termination")
SELF_SHUTDOWN = (ec2.SELF_SHUTDOWN, f"{ec2.SELF_SHUTDOWN}: Instance initiated shutdown")


def seed_deep_learning_ami(ec2_client, region: str) -> str:
    """Point spotctl's default AMI parameter (trainer.job.spec.DEFAULT_AMI) at one of moto's x86_64
    images, named and described as the real DLAMI is, so offers read its supported instances the same
    way as on AWS. Returns the AMI id."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ssm.models import Parameter, ssm_backends

    from trainer.job.spec import DEFAULT_AMI

    images = ec2_client.describe_images(Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}])[
        "Images"
    ]
    ami = sorted(image["ImageId"] for image in images)[0]
    name = DEFAULT_AMI.removeprefix("ssm:")
    image = ec2_backends[DEFAULT_ACCOUNT_ID][region].amis[ami]
    image.name, image.description = dlami_name_and_description(name)
    ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters[name] = [
        Parameter(
            DEFAULT_ACCOUNT_ID,
            name,
            ami,
            "String",
            "Deep Learning AMI (seeded by spotctl's local cloud)",
            None,
            None,
            datetime.datetime.now(datetime.timezone.utc),
            1,
            "aws:ec2:image",
        )
    ]
    return ami


def dlami_name_and_description(parameter: str) -> tuple[str, str]:
    """A DLAMI's EC2 name and description as AWS writes them, for the PyTorch OSS-driver Ubuntu 24.04
    line `parameter` names, e.g. "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.12 (Ubuntu 24.04)
    20260822" and "Supported EC2 instances: G4dn, G5, ... P6-B200. PyTorch-2.12. Release notes: ..."."""
    version = re.search(r"pytorch-(\d+\.\d+)", parameter).group(1)
    families = SUPPORTED_BY_PARAMETER[parameter_line(parameter)]
    return (
        f"Deep Learning OSS Nvidia Driver AMI GPU PyTorch {version} (Ubuntu 24.04) 20260822",  # the 2.12 build's date
        f"Supported EC2 instances: {', '.join(families)}. PyTorch-{version}. Release notes: {RELEASE_NOTES}",
    )


def route_default_vpc_to_the_internet(ec2_client) -> str:
    """Give the default VPC what AWS's has and moto's lacks: an internet gateway and the main route
    table's 0.0.0.0/0 route through it (through the API: moto implements these). Returns the gateway."""
    [vpc] = ec2_client.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    attached = ec2_client.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])[
        "InternetGateways"
    ]
    gateway = (
        attached[0]["InternetGatewayId"]
        if attached
        else ec2_client.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    )
    if not attached:
        ec2_client.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc["VpcId"])
    [table] = ec2_client.describe_route_tables(
        Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}, {"Name": "association.main", "Values": ["true"]}]
    )["RouteTables"]
    if not any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in table["Routes"]):
        ec2_client.create_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    return gateway


def end_instance(instance_id: str, region: str, reason: tuple[str, str], service: bool) -> None:
    """Terminate an instance as EC2 would for `reason` (code, message): state, state reason, and the
    transition time spotctl reads as the end of billing."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    instance = ec2_backends[DEFAULT_ACCOUNT_ID][region].get_instance(instance_id)
    if instance.state == "terminated":
        return
    instance.terminate()
    who = "Service" if service else "User"
    instance._reason = f"{who} initiated ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} GMT)"
    instance.state_reason = StateReason(reason[1], reason[0])


def spot_interrupt(instance_id: str, region: str = "us-east-1") -> None:
    end_instance(instance_id, region, SPOT_TERMINATION, service=True)
