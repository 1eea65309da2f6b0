"""EC2's Spot quotas: vCPUs per *bucket* of instance families, one Service Quotas code each.

A quota refusal on g5.xlarge means every G instance is refused too, in every zone, until running
spot G instances end or the quota is raised; trying the next pool of the same bucket only burns calls.
The launcher skips the rest of a refused bucket, `doctor` compares each bucket's quota with what the
job needs, and the strict local cloud enforces them. Source: the EC2 user guide, "Spot Instance
quotas" (using-spot-limits.html), and the Service Quotas console (service code `ec2`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SERVICE_CODE = "ec2"


@dataclass(frozen=True)
class SpotQuota:
    code: str  # Service Quotas' quota code, e.g. L-3819A6DF
    name: str  # as the console names it

    def increase_command(self, vcpus: int) -> str:
        return (
            f"aws service-quotas request-service-quota-increase --service-code {SERVICE_CODE} "
            f"--quota-code {self.code} --desired-value {vcpus}"
        )


STANDARD = SpotQuota("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests")
G_AND_VT = SpotQuota("L-3819A6DF", "All G and VT Spot Instance Requests")
P = SpotQuota("L-7212CCBC", "All P Spot Instance Requests")
F = SpotQuota("L-88CF9481", "All F Spot Instance Requests")
INF = SpotQuota("L-B5D1601B", "All Inf Spot Instance Requests")
X = SpotQuota("L-E3A00192", "All X Spot Instance Requests")
DL = SpotQuota("L-85EED4F7", "All DL Spot Instance Requests")
TRN = SpotQuota("L-6B0D517C", "All Trn Spot Instance Requests")
ALL = (STANDARD, G_AND_VT, P, F, INF, X, DL, TRN)

# The family's leading letters decide the bucket ("g6e" -> g, "vt1" -> vt, "inf2" -> inf).
_BY_PREFIX = {"g": G_AND_VT, "vt": G_AND_VT, "p": P, "f": F, "inf": INF, "x": X, "dl": DL, "trn": TRN}


def spot_quota_of(instance_type: str) -> SpotQuota:
    """The Spot quota bucket an instance type counts against."""
    letters = re.match(r"[a-z]*", instance_type.lower()).group(0)
    for length in range(len(letters), 0, -1):  # the longest known prefix: "trn" before "t", "gr" falls to "g"
        if letters[:length] in _BY_PREFIX:
            return _BY_PREFIX[letters[:length]]
    return STANDARD
