"""Which instance types a job may use, on describe_instance_types entries shaped as EC2 returns them
(moto's data lacks the retired p2/g3/p3 types and says spot for nearly every type): whole GPUs only,
spot only, families the AMI supports, and no pre-Turing GPU unless asked for."""

from __future__ import annotations

import pytest

from orchestrator.aws.amis import Image, support_of
from orchestrator.aws.offers import _instance_type, exclusion

DLAMI = support_of(
    Image(
        "ami-1",
        "/dev/sda1",
        "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.12 (Ubuntu 24.04) 20260822",
        "Supported EC2 instances: G4dn, G5, G6, Gr6, G6e, P4, P4de, P5, P5e, P5en, P6-B200. PyTorch-2.12. Release notes: x",
    )
)
CUSTOM = support_of(Image("ami-2", "/dev/xvda", "my-image", ""))


def entry(name: str, model: str, count: int = 1, usage=("on-demand", "spot"), **gpu) -> dict:
    return {
        "InstanceType": name,
        "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
        "VCpuInfo": {"DefaultVCpus": 4},
        "MemoryInfo": {"SizeInMiB": 16384},
        "SupportedUsageClasses": list(usage),
        "GpuInfo": {
            "Gpus": [
                {"Name": model, "Manufacturer": "NVIDIA", "Count": count, "MemoryInfo": {"SizeInMiB": 16384}, **gpu}
            ]
        },
    }


PRE_TURING = "is pre-Turing: the open-source NVIDIA driver cannot drive it; name it in compute.gpu.models for an AMI with the proprietary driver"


@pytest.mark.parametrize(
    "described, ami, any_model, why",
    [
        (entry("g4dn.xlarge", "T4", GpuPartitionSize=1.0, LogicalGpuCount=1), DLAMI, True, None),
        (entry("g5.xlarge", "A10G"), DLAMI, True, None),  # no partition fields (older models): whole
        # Retired types EC2 still lists in some regions; the DLAMI's OSS driver drives none of them.
        (entry("p2.xlarge", "K80"), DLAMI, True, "the AMI does not support the p2 family"),
        (entry("g3s.xlarge", "M60"), DLAMI, True, "the AMI does not support the g3s family"),
        (entry("p3.2xlarge", "V100"), DLAMI, True, "the AMI does not support the p3 family"),
        # With an AMI that does not say what it supports, only the default GPU requirement excludes them.
        (entry("p3.2xlarge", "V100"), CUSTOM, True, f"V100 {PRE_TURING}"),
        (entry("p2.xlarge", "K80"), CUSTOM, True, f"K80 {PRE_TURING}"),
        (entry("p3.2xlarge", "V100"), CUSTOM, False, None),  # named in gpu.models or instance_types
        # Fractional GPUs (EC2 reports Count 0 and the share), whatever the AMI says.
        (
            entry("g6f.large", "L4", count=0, GpuPartitionSize=0.125, LogicalGpuCount=1),
            CUSTOM,
            False,
            "1/8 of one L4 GPU: a fractional GPU needs NVIDIA's GRID driver",
        ),
        (
            entry("gr6f.4xlarge", "L4", count=0, GpuPartitionSize=0.5, LogicalGpuCount=1),
            DLAMI,
            True,
            "1/2 of one L4 GPU: a fractional GPU needs NVIDIA's GRID driver",
        ),
        (
            entry("g6.xlarge", "L4", usage=("on-demand", "capacity-block")),
            DLAMI,
            True,
            "EC2 does not sell it as spot (SupportedUsageClasses)",
        ),
        (entry("g6.xlarge", "L4", usage=("on-demand", "spot")), DLAMI, True, None),
    ],
)
def test_what_a_job_may_run_on(described, ami, any_model, why):
    assert exclusion(_instance_type(described), ami, any_model) == why


def test_absent_usage_classes_and_partition_mean_spot_and_whole():
    described = entry("g6.xlarge", "L4")
    del described["SupportedUsageClasses"]
    parsed = _instance_type(described)
    assert parsed.spot and parsed.gpu_partition == 1.0 and parsed.gpus == 1
