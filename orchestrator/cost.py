"""What a job really cost: spot prices integrated over each attempt's running time, the on-demand
equivalent, savings, and the work lost to interruptions.

AWS's rules applied (Linux spot): billed per second, with a minimum of one minute; an instance that EC2
interrupts within its first hour is not charged at all (one stopped by its user or itself is).
Pure arithmetic on price series: the callers fetch the history (PriceSource.history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

FREE_IF_INTERRUPTED_WITHIN_S = 3600.0
MINIMUM_BILLED_S = 60.0


@dataclass(frozen=True)
class PricePoint:
    at: datetime
    usd_per_hour: float


@dataclass(frozen=True)
class AttemptCost:
    number: int
    seconds: float
    usd: float
    on_demand_usd: float | None
    free_by_first_hour_rule: bool


def integrate(prices: Sequence[PricePoint], start: datetime, end: datetime) -> float:
    """USD for running from `start` to `end` under a price series (each price holds until the next
    change; before the first known change, the first price holds)."""
    if end <= start:
        return 0.0
    if not prices:
        raise ValueError("no price known for this pool")
    points = sorted(prices, key=lambda p: p.at)
    total, now = 0.0, start
    current = next((p.usd_per_hour for p in reversed(points) if p.at <= start), points[0].usd_per_hour)
    for point in points:
        if point.at <= start:
            continue
        if point.at >= end:
            break
        total += (point.at - now).total_seconds() * current / 3600
        now, current = point.at, point.usd_per_hour
    return total + (end - now).total_seconds() * current / 3600


def attempt_cost(number: int, prices: Sequence[PricePoint], start: datetime, end: datetime, interrupted_by_ec2: bool, on_demand_usd_per_hour: float | None = None) -> AttemptCost:
    seconds = max(0.0, (end - start).total_seconds())
    on_demand = None if on_demand_usd_per_hour is None else max(seconds, MINIMUM_BILLED_S) * on_demand_usd_per_hour / 3600
    if interrupted_by_ec2 and seconds < FREE_IF_INTERRUPTED_WITHIN_S:
        return AttemptCost(number, seconds, 0.0, on_demand, True)
    billed_until = max(end, start + timedelta(seconds=MINIMUM_BILLED_S))  # a started instance bills a minute at least
    return AttemptCost(number, seconds, integrate(prices, start, billed_until), on_demand, False)


@dataclass(frozen=True)
class JobCost:
    attempts: list[AttemptCost]
    total_usd: float
    on_demand_usd: float | None  # the same running time at on-demand prices
    savings: float | None  # share of the on-demand cost saved, 0..1
    lost_steps: int  # steps trained twice because an interruption came after them and before a checkpoint
    lost_usd: float

    def as_dict(self) -> dict:
        return {
            "total_usd": round(self.total_usd, 6),
            "on_demand_usd": None if self.on_demand_usd is None else round(self.on_demand_usd, 6),
            "savings": None if self.savings is None else round(self.savings, 4),
            "lost_steps": self.lost_steps,
            "lost_usd": round(self.lost_usd, 6),
            "attempts": [{"number": a.number, "seconds": round(a.seconds, 1), "usd": round(a.usd, 6), "on_demand_usd": None if a.on_demand_usd is None else round(a.on_demand_usd, 6),
                          "free_by_first_hour_rule": a.free_by_first_hour_rule} for a in self.attempts],
        }


def job_cost(attempts: list[AttemptCost], steps_reached: Sequence[int | None] = (), resumed_from: Sequence[int | None] = ()) -> JobCost:
    """Sum the attempts; lost work from the step each attempt reached and the step the next resumed from.

    The steps between where attempt k stopped and where attempt k+1 resumed were paid for twice; their
    cost is attempt k's cost per step (nothing when attempt k was free under the first-hour rule)."""
    total = sum(a.usd for a in attempts)
    known = [a.on_demand_usd for a in attempts]
    on_demand = None if any(v is None for v in known) or not attempts else sum(known)
    savings = None if not on_demand else 1 - total / on_demand
    lost_steps, lost_usd = 0, 0.0
    for k, attempt in enumerate(attempts[:-1]):
        reached = steps_reached[k] if k < len(steps_reached) else None
        restart = resumed_from[k + 1] if k + 1 < len(resumed_from) else None
        started = (resumed_from[k] if k < len(resumed_from) else None) or 0
        if reached is None or restart is None or reached <= restart:
            continue
        lost = reached - restart
        lost_steps += lost
        done = reached - started
        if done > 0:
            lost_usd += attempt.usd * lost / done
    return JobCost(attempts, total, on_demand, savings, lost_steps, lost_usd)
