"""One check's answer, as `spotctl doctor` and the checks before a paid boot (`launch`) give it: a
name, a verdict, what was found and, for a problem, the fix."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass


class Verdict(str, enum.Enum):
    OK = "ok"
    PROBLEM = "problem"  # the launch (or the run) would fail: fix it first
    WARNING = "warning"  # works, at a cost or a risk worth knowing
    UNKNOWN = "unknown"  # could not be checked with these credentials


@dataclass
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict.value}
