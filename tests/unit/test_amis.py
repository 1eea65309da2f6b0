"""Which instance families an AMI supports (its description, else its DLAMI line's release notes),
exact family matching, and the end-of-patch warning, on descriptions as AWS writes them."""

from __future__ import annotations

from datetime import date

import pytest

from orchestrator.aws.amis import Image, families_in, family, parameter_line, support_of
from trainer.job.spec import DEFAULT_AMI

PARAMETER = "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-{}-ubuntu-24.04/latest/ami-id"
# The describe-images Description of DLAMIs (the sentence format of every DLAMI's description).
PYTORCH_DESCRIPTION = (
    "Supported EC2 instances: G4dn, G5, G6, Gr6, G6e, P4, P4de, P5, P5e, P5en, P6-B200. PyTorch-2.9. "
    "Release notes: https://docs.aws.amazon.com/dlami/latest/devguide/appendix-ami-release-notes.html"
)
MULTI_FRAMEWORK = (
    "Supported EC2 instances: G4dn, G5, G6, Gr6, P4d, P4de, P5. PyTorch-2.1, TensorFlow-2.16. "
    "Release notes: https://docs.aws.amazon.com/dlami/latest/devguide/appendix-ami-release-notes.html"
)
BASE = (
    "Supported EC2 instances: G4dn, G5, G6, Gr6, G6e, G7, G7e, P4d, P4de, P5, P5e, P5en, P6-B200, P6-B300. "
    "Release notes: https://aws.amazon.com/releasenotes/aws-deep-learning-base-gpu-ami-ubuntu-24-04/"
)


def test_the_supported_instances_sentence_is_read_as_instance_families():
    assert families_in(PYTORCH_DESCRIPTION) == {
        "g4dn",
        "g5",
        "g6",
        "gr6",
        "g6e",
        "p4d",  # the lists write p4d as "P4"
        "p4de",
        "p5",
        "p5e",
        "p5en",
        "p6-b200",
    }
    assert families_in(MULTI_FRAMEWORK) == {"g4dn", "g5", "g6", "gr6", "p4d", "p4de", "p5"}
    assert "p6-b300" in families_in(BASE) and "g7e" in families_in(BASE)  # the sentence ends at its period
    assert families_in("Amazon Linux AMI 2023.0.20260618 x86_64 ECS HVM EBS") is None
    assert families_in("") is None


@pytest.mark.parametrize(
    "instance_type, expected",
    [("g6e.xlarge", "g6e"), ("g6f.large", "g6f"), ("p4de.24xlarge", "p4de"), ("p6-b200.48xlarge", "p6-b200")],
)
def test_the_family_is_the_name_before_the_size(instance_type, expected):
    assert family(instance_type) == expected


@pytest.mark.parametrize(
    "instance_type, supported",
    [
        ("g6.xlarge", True),
        ("g6e.xlarge", True),
        ("g6f.large", False),  # g6 is listed, g6f is not: no prefix matching
        ("gr6f.4xlarge", False),
        ("p4d.24xlarge", True),
        ("p4de.24xlarge", True),
        ("p5.4xlarge", True),
        ("p5en.48xlarge", True),
        ("p6-b200.48xlarge", True),
        ("p6-b300.48xlarge", False),
        ("p3dn.24xlarge", False),
        ("p3.2xlarge", False),
        ("g3s.xlarge", False),
        ("p2.xlarge", False),
        ("g5g.xlarge", False),
        ("g7e.2xlarge", False),
    ],
)
def test_families_match_exactly(instance_type, supported):
    support = support_of(Image("ami-1", "/dev/sda1", "Deep Learning ...", PYTORCH_DESCRIPTION, PARAMETER.format("2.9")))
    why = support.rejects(instance_type)
    assert (why is None) == supported
    if not supported:
        assert why == f"the AMI does not support the {family(instance_type)} family"


def test_a_dlami_without_the_sentence_falls_back_to_its_lines_release_notes():
    support = support_of(Image("ami-1", "/dev/sda1", "", "", PARAMETER.format("2.12")))
    assert support.source == "its DLAMI release notes"
    assert support.families == families_in(PYTORCH_DESCRIPTION) and support.pytorch == "2.12"
    assert parameter_line(PARAMETER.format("2.12")) == ("x86_64", "oss-nvidia-driver-gpu-pytorch-*-ubuntu-24.04")


def test_a_custom_ami_is_not_filtered_and_says_so():
    support = support_of(Image("ami-0123456789abcdef0", "/dev/xvda", "my-training-image", "built by packer"))
    assert support.families is None and support.rejects("p3.2xlarge") is None and support.pytorch is None
    assert support.notes(date(2026, 12, 1)) == [
        "compute.ami ami-0123456789abcdef0 (my-training-image) does not say which instance types it supports, "
        "so offers are not filtered by AMI; make sure its NVIDIA driver runs the GPUs offered"
    ]
    # A non-DLAMI parameter (Canonical's Ubuntu) has no release notes in the table either.
    ubuntu = Image("ami-2", "/dev/sda1", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261101", "")
    assert support_of(ubuntu).families is None


def test_a_dlami_past_its_end_of_patch_is_a_warning_naming_the_supported_default():
    old = support_of(
        Image(
            "ami-08beb2510fdf8bd81",
            "/dev/sda1",
            "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.9 (Ubuntu 24.04) 20260317",
            PYTORCH_DESCRIPTION,
            PARAMETER.format("2.9"),
        )
    )
    assert old.pytorch == "2.9" and old.end_of_patch() == date(2026, 10, 15)
    assert old.notes(date(2026, 10, 15)) == []  # the last day of patches
    assert old.notes(date(2026, 12, 1)) == [
        "compute.ami ami-08beb2510fdf8bd81 (Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.9 (Ubuntu 24.04) "
        "20260317): AWS stopped patching the PyTorch 2.9 DLAMI on 2026-10-15 "
        "(https://docs.aws.amazon.com/dlami/latest/devguide/dlami-support-policy-table.html, as of 2026-12-01); "
        f"a supported one: {DEFAULT_AMI}"
    ]


def test_the_version_comes_from_the_name_when_the_ami_is_given_by_id():
    by_id = Image("ami-1", "/dev/sda1", "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.5.1 (Ubuntu 22.04) 20250101")
    assert support_of(by_id).pytorch == "2.5"
    assert (
        support_of(by_id)
        .notes(date(2026, 12, 1))[-1]
        .startswith(  # older than the table: ended before its rows
            "compute.ami ami-1 (Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.5.1 (Ubuntu 22.04) 20250101): "
            "AWS stopped patching the PyTorch 2.5 DLAMI by 2026-01-29 "
        )
    )
    name = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.14 (Ubuntu 26.04) 20270101"
    newer = support_of(Image("ami-1", "/dev/sda1", name, PYTORCH_DESCRIPTION.replace("PyTorch-2.9", "PyTorch-2.14")))
    assert newer.pytorch == "2.14" and newer.end_of_patch() is None  # newer than the table: no warning
    assert newer.notes(date(2030, 1, 1)) == []


def test_the_default_ami_is_inside_its_support_window_as_of_the_table():
    from orchestrator.aws.amis import PYTORCH_END_OF_PATCH, SUPPORT_AS_OF

    default = support_of(Image("ami-1", "/dev/sda1", "", "", DEFAULT_AMI.removeprefix("ssm:")))
    assert default.families is not None and default.pytorch in PYTORCH_END_OF_PATCH
    assert default.end_of_patch() > SUPPORT_AS_OF and default.notes(SUPPORT_AS_OF) == []
