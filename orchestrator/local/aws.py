"""What real AWS has or does and moto lacks, put straight into moto's in-process backends (moto
refuses some of it through its API): the Deep Learning AMI's public SSM parameter, and the way EC2
ends an instance (a spot interruption, a machine that shut itself down)."""

from __future__ import annotations

import datetime

from orchestrator import status

SPOT_TERMINATION = (status.SPOT_TERMINATION, f"{status.SPOT_TERMINATION}: Spot instance termination")
SELF_SHUTDOWN = (status.SELF_SHUTDOWN, f"{status.SELF_SHUTDOWN}: Instance initiated shutdown")


def seed_deep_learning_ami(ec2_client, region: str) -> str:
    """Point spotctl's default AMI parameter (trainer.config.DEFAULT_AMI) at one of moto's images.
    Returns the AMI id."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    from trainer.config import DEFAULT_AMI

    ami = sorted(image["ImageId"] for image in ec2_client.describe_images(Owners=["amazon"])["Images"])[0]
    name = DEFAULT_AMI.removeprefix("ssm:")
    ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters[name] = [
        Parameter(DEFAULT_ACCOUNT_ID, name, ami, "String", "Deep Learning AMI (seeded by spotctl's local cloud)", None, None,
                  datetime.datetime.now(datetime.timezone.utc), 1, "aws:ec2:image")]
    return ami


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
