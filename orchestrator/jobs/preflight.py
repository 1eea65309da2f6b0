"""Checks before a paid boot: what an instance would otherwise find out minutes after its meter
started. `launch` refuses a job that fails one (nothing started, nothing written); `launch --dry-run`
and `spotctl doctor` list them with the account's checks.

- the data URLs exist and are ImageFolders, the weights URL is there, so is the distillation teacher
  (its weights, or the teacher job's best model) (orchestrator.aws.datasets);
- the budget covers at least one minimum charge plus one checkpoint interval on the chosen offer,
  with its root volume and public address (`smallest_budget`): a smaller one stops the job before
  anything is saved, after paying for the boot.

The GPU requirement's matches are the offers' (orchestrator.aws.offers says what dropped which type).
What cannot be checked (a 403 on a listing, a scheme spotctl does not read) is said, never refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import botocore.exceptions

from orchestrator.aws.checks import Check, Verdict
from orchestrator.aws.clients import Cloud, describe
from orchestrator.aws.datasets import data_checks, teacher_checks, weights_checks
from orchestrator.aws.offers import Offer, Offers
from orchestrator.errors import UserError
from orchestrator.jobs.cost import MINIMUM_BILLED_S, spec_extras
from trainer.job.spec import JobSpec


@dataclass(frozen=True)
class BudgetNeed:
    """What the first checkpoint costs at the least on one offer."""

    usd: float
    seconds: float  # the minimum charge plus the checkpoint interval (when known)
    usd_per_hour: float  # the offer's spot price plus its volume and address, times the nodes
    extras_usd_per_hour: float
    interval_s: float | None  # None: not known before the run (every_steps at an unmeasured pace)
    nodes: int = 1  # compute.nodes: usd_per_hour is all of them

    @property
    def smallest_budget(self) -> float:
        """The need rounded up to what a person writes (4 decimals below $1, cents above)."""
        digits = 4 if self.usd < 1 else 2
        return math.ceil(self.usd * 10**digits - 1e-9) / 10**digits


def budget_need(
    spec: JobSpec, offer: Offer, spent_usd: float = 0.0, seconds_per_step: float | None = None
) -> BudgetNeed:
    """The cost of one more attempt's minimum charge plus one checkpoint interval on `offer`, on top of
    `spent_usd` (a resumed job's cost so far). The interval is CheckpointSpec.seconds_to_next, as for
    the budget look-ahead of a running job (jobs.policy)."""
    interval = spec.train.checkpoint.seconds_to_next(seconds_per_step=seconds_per_step)
    extras = spec_extras(spec.compute.disk_gib, spec.compute.public_ip, spec.region).usd_per_hour
    rate = (offer.spot_price + extras) * spec.compute.nodes  # every node pays its instance, volume and address
    seconds = MINIMUM_BILLED_S + (interval or 0.0)
    return BudgetNeed(spent_usd + rate * seconds / 3600, seconds, rate, extras, interval, spec.compute.nodes)


def budget_checks(spec: JobSpec, offers: Offers) -> list[Check]:
    """The budget against the first checkpoint on the offer a launch would take (the cheapest)."""
    budget = spec.budget.max_cost_usd
    if budget is None or not offers.ranked:
        return []
    offer = offers.ranked[0]
    need = budget_need(spec, offer)
    what = _what(need, offer)
    if budget >= need.usd:
        return [Check("budget", Verdict.OK, f"budget.max_cost_usd ${budget:g} covers {what}")]
    return [
        Check(
            "budget",
            Verdict.PROBLEM,
            f"budget.max_cost_usd ${budget:g} does not cover {what}: the job would stop before its first checkpoint",
            f"set budget.max_cost_usd to {need.smallest_budget:g} or more"
            + ("" if need.interval_s is None else ", or checkpoint more often (train.checkpoint)"),
        )
    ]


def _what(need: BudgetNeed, offer: Offer) -> str:
    interval = (
        f" plus one checkpoint interval ({need.interval_s:.0f} s)"
        if need.interval_s is not None
        else " (the time to the first checkpoint is not known before the run: every_steps at an unmeasured pace)"
    )
    besides = f" + ${need.extras_usd_per_hour:.4f}/h volume and address" if need.extras_usd_per_hour else ""
    on = f"{need.nodes} x {offer.instance.name}" if need.nodes > 1 else offer.instance.name
    each = " each" if need.nodes > 1 else ""
    return (
        f"one {MINIMUM_BILLED_S:.0f} s minimum charge{interval} on {on} "
        f"(${offer.spot_price:.4f}/h spot{besides}{each}): ${need.usd:.4f}"
    )


def before_boot(spec: JobSpec, cloud: Cloud, offers: Offers) -> list[Check]:
    """The data, the weights, the teacher and the budget, in that order; a check that cannot run says why."""
    checks: list[Check] = []
    for name, check in (
        ("data", lambda: data_checks(cloud, spec)),
        ("weights", lambda: weights_checks(cloud, spec)),
        ("teacher", lambda: teacher_checks(cloud, spec)),
        ("budget", lambda: budget_checks(spec, offers)),
    ):
        try:
            checks += check()
        except botocore.exceptions.ClientError as exc:
            checks.append(Check(name, Verdict.UNKNOWN, f"could not be checked: {describe(exc)}"))
    return checks


class PreflightRefused(UserError):
    """A check before the boot found what would fail the job after it: nothing was started."""

    def __init__(self, problems: list[Check]):
        self.problems = problems
        fixes = list(dict.fromkeys(c.fix for c in problems if c.fix))
        super().__init__(
            "not launched (nothing started): " + "; ".join(c.detail for c in problems), "; ".join(fixes) or None
        )


def refuse_problems(checks: list[Check]) -> None:
    problems = [c for c in checks if c.verdict is Verdict.PROBLEM]
    if problems:
        raise PreflightRefused(problems)
