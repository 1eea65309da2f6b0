"""The job's AMI: which image `compute.ami` names, which instance families it can drive, and whether
AWS still patches it.

An AWS Deep Learning AMI (DLAMI) says what it runs on in its EC2 description, e.g. "Supported EC2
instances: G4dn, G5, G6, Gr6, G6e, P4, P4de, P5, P5e, P5en, P6-B200. ...". That sentence is read
first; a DLAMI parameter whose image lacks it falls back to SUPPORTED_BY_PARAMETER, taken from the
release notes. Any other AMI is not filtered by family (`AmiSupport.families` is None), and
`find_offers` says so. Pure: orchestrator.aws.ec2.describe_image reads the image from EC2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from trainer.job.spec import DEFAULT_AMI

DLAMI_PARAMETER = re.compile(r"/aws/service/deeplearning/ami/(?P<arch>[\w-]+)/(?P<type>[\w.-]+)/latest/ami-id")
"""The DLAMI's public SSM parameters: /aws/service/deeplearning/ami/$architecture/$ami_type/latest/ami-id,
$ami_type being the DLAMI's name without "deep", "learning" and "ami"
(https://docs.aws.amazon.com/dlami/latest/devguide/find-dlami-id.html)."""

RELEASE_NOTES = "https://docs.aws.amazon.com/dlami/latest/devguide/appendix-ami-release-notes.html"

# The instance families of each DLAMI line (its parameter's ami_type, framework version as `*`), from
# its release notes' `supported_ec2_instances`: for a DLAMI image whose description lacks the sentence.
SUPPORTED_BY_PARAMETER: dict[tuple[str, str], tuple[str, ...]] = {
    # docs.aws.amazon.com/dlami/latest/devguide/aws-deep-learning-ami-gpupt212oss-ul2404-2026-08-24.html
    # (the same list for 2.9 since 2026-01-08, ...-gpupt29oss-ul2404-2026-01-08.html)
    ("x86_64", "oss-nvidia-driver-gpu-pytorch-*-ubuntu-24.04"): (
        "G4dn",
        "G5",
        "G6",
        "Gr6",
        "G6e",
        "P4",
        "P4de",
        "P5",
        "P5e",
        "P5en",
        "P6-B200",
    ),
}

# The DLAMI lists write the p4d generation as "P4"; no instance family is named p4, so this cannot
# widen a match. Every other name is the family itself, matched exactly (g6 is not g6e or g6f).
FAMILY_ALIASES = {"p4": "p4d"}

SUPPORT_POLICY_URL = "https://docs.aws.amazon.com/dlami/latest/devguide/dlami-support-policy-table.html"
SUPPORT_AS_OF = date(2026, 12, 1)
# PyTorch version -> the DLAMI's end of patch. 2.6-2.9: the support policy table. 2.10-2.12 are not
# in the copy read on SUPPORT_AS_OF; their dates follow the rule every row of it follows, GitHub GA
# plus one year (GA: 2.10 2026-01-21, the AWS DLC support policy; 2.11 2026-03-23; 2.12 2026-05-13,
# pytorch.org/blog/pytorch-2-12-release-blog). Every version older than the oldest row ended before it.
PYTORCH_END_OF_PATCH = {
    "2.6": date(2026, 1, 29),
    "2.7": date(2026, 4, 23),
    "2.8": date(2026, 8, 6),
    "2.9": date(2026, 10, 15),
    "2.10": date(2027, 1, 21),
    "2.11": date(2027, 3, 23),
    "2.12": date(2027, 5, 13),
}

_SUPPORTED = re.compile(r"Supported EC2 instances:\s*((?:[A-Za-z0-9-]+\s*,\s*)*[A-Za-z0-9-]+)", re.IGNORECASE)
_PYTORCH = re.compile(r"pytorch[- ](\d+\.\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Image:
    """One AMI as describe_images tells it."""

    id: str
    root_device: str
    name: str = ""
    description: str = ""
    parameter: str | None = None
    """The SSM parameter it was resolved from, if any."""
    root_gib: int | None = None
    """The size of its root volume's snapshot: the smallest root volume it boots with."""


@dataclass(frozen=True)
class AmiSupport:
    image: Image
    families: frozenset[str] | None
    """Lowercase instance families the AMI supports; None: unknown, so nothing is filtered."""
    source: str
    """Where `families` came from, for messages."""
    pytorch: str | None = None
    """A DLAMI's PyTorch version (major.minor), if it has one."""

    def rejects(self, instance_type: str) -> str | None:
        """Why the AMI cannot drive `instance_type`, or None if it can (or nobody knows)."""
        if self.families is None or family(instance_type) in self.families:
            return None
        return f"the AMI does not support the {family(instance_type)} family"

    def describe(self) -> str:
        """One line: the image and what it runs on."""
        what = self.image.id + (f" ({self.image.name})" if self.image.name else "")
        if self.families is None:
            return f"AMI {what}: supported instance types unknown"
        return f"AMI {what} supports {', '.join(sorted(self.families))} (from {self.source})"

    def end_of_patch(self) -> date | None:
        """The DLAMI's last day of patches; for a version older than the table, a day they had ended by."""
        if self.pytorch is None:
            return None
        if self.pytorch in PYTORCH_END_OF_PATCH:
            return PYTORCH_END_OF_PATCH[self.pytorch]
        oldest = min(PYTORCH_END_OF_PATCH, key=_version)
        return PYTORCH_END_OF_PATCH[oldest] if _version(self.pytorch) < _version(oldest) else None

    def notes(self, today: date) -> list[str]:
        """What the user should know about the AMI: no family filter, or past its end of patch."""
        notes = []
        what = self.image.id + (f" ({self.image.name})" if self.image.name else "")
        if self.families is None:
            notes.append(
                f"compute.ami {what} does not say which instance types it supports, so offers are not "
                "filtered by AMI; make sure its NVIDIA driver runs the GPUs offered"
            )
        ended = self.end_of_patch()
        if ended is not None and today > ended:
            newer = DEFAULT_AMI.removeprefix("ssm:")
            notes.append(
                f"compute.ami {what}: AWS stopped patching the PyTorch {self.pytorch} DLAMI "
                f"{'on' if self.pytorch in PYTORCH_END_OF_PATCH else 'by'} {ended} "
                f"({SUPPORT_POLICY_URL}, as of {SUPPORT_AS_OF})"
                + (f"; a supported one: ssm:{newer}" if self.image.parameter != newer else "")
            )
        return notes


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def family(instance_type: str) -> str:
    """`p6-b200.48xlarge` -> `p6-b200`; `g6e.xlarge` -> `g6e`."""
    return instance_type.split(".", 1)[0].lower()


def families_in(description: str) -> frozenset[str] | None:
    """The families a DLAMI description's "Supported EC2 instances: ..." sentence lists, or None."""
    found = _SUPPORTED.search(description or "")
    return _families(found.group(1).split(",")) if found else None


def _families(names) -> frozenset[str]:
    """DLAMI spellings (G4dn, P4, P6-B200) -> instance families (g4dn, p4d, p6-b200)."""
    lowered = (name.strip().lower() for name in names)
    return frozenset(FAMILY_ALIASES.get(name, name) for name in lowered if name)


def parameter_line(parameter: str | None) -> tuple[str, str] | None:
    """A DLAMI parameter's (architecture, ami_type with its framework version as `*`), or None."""
    found = DLAMI_PARAMETER.fullmatch(parameter or "")
    if not found:
        return None
    return found["arch"], re.sub(r"(pytorch-)\d+\.\d+", r"\1*", found["type"])


def support_of(image: Image) -> AmiSupport:
    """What `image` runs on: its description's sentence, else its DLAMI line's release notes, else unknown."""
    is_dlami = parameter_line(image.parameter) is not None or image.name.startswith("Deep Learning")
    versions = (_PYTORCH.search(text) for text in (image.parameter or "", image.description, image.name))
    pytorch = next((v.group(1) for v in versions if v), None) if is_dlami else None
    listed = families_in(image.description)
    if listed:
        return AmiSupport(image, listed, "its description", pytorch)
    line = parameter_line(image.parameter)
    if line in SUPPORTED_BY_PARAMETER:
        return AmiSupport(image, _families(SUPPORTED_BY_PARAMETER[line]), "its DLAMI release notes", pytorch)
    return AmiSupport(image, None, "unknown", pytorch)
