"""What a job really cost: spot prices integrated over each attempt's running time, the on-demand
equivalent, savings, the work lost to interruptions, and what it costs now.

AWS's rules applied (Linux spot): billed per second, with a minimum of one minute; an instance that EC2
interrupts within its first hour is not charged at all (one stopped by its user or itself is).

`cost_of` applies them to a job: an attempt runs from its launch until its recorded end, or until now
while its instance runs, or until its last heartbeat when the instance is gone and no end was
recorded yet. EC2's state reason `Server.SpotInstanceTermination` marks an interruption by EC2 (the
first-hour rule applies). The rest is pure arithmetic on price series (PriceSource.history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from orchestrator.aws.instances import LIVE, SPOT_TERMINATION
from orchestrator.aws.prices import PricePoint
from trainer.job.documents import EndReason

if TYPE_CHECKING:
    from orchestrator.aws.prices import PriceSource
    from orchestrator.jobs.state import JobView

FREE_IF_INTERRUPTED_WITHIN_S = 3600.0
MINIMUM_BILLED_S = 60.0


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


def attempt_cost(
    number: int,
    prices: Sequence[PricePoint],
    start: datetime,
    end: datetime,
    interrupted_by_ec2: bool,
    on_demand_usd_per_hour: float | None = None,
) -> AttemptCost:
    seconds = max(0.0, (end - start).total_seconds())
    on_demand = (
        None if on_demand_usd_per_hour is None else max(seconds, MINIMUM_BILLED_S) * on_demand_usd_per_hour / 3600
    )
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
    current_usd_per_hour: float | None = None  # the running instance's spot price now (None: nothing runs)
    projected_total_usd: float | None = None  # the cost so far plus the trainer's ETA at that price

    def as_dict(self) -> dict:
        return {
            "total_usd": round(self.total_usd, 6),
            "on_demand_usd": None if self.on_demand_usd is None else round(self.on_demand_usd, 6),
            "savings": None if self.savings is None else round(self.savings, 4),
            "lost_steps": self.lost_steps,
            "lost_usd": round(self.lost_usd, 6),
            "attempts": [
                {
                    "number": a.number,
                    "seconds": round(a.seconds, 1),
                    "usd": round(a.usd, 6),
                    "on_demand_usd": None if a.on_demand_usd is None else round(a.on_demand_usd, 6),
                    "free_by_first_hour_rule": a.free_by_first_hour_rule,
                }
                for a in self.attempts
            ],
            "current_usd_per_hour": self.current_usd_per_hour,
            "projected_total_usd": None if self.projected_total_usd is None else round(self.projected_total_usd, 6),
        }


def job_cost(
    attempts: list[AttemptCost], steps_reached: Sequence[int | None] = (), resumed_from: Sequence[int | None] = ()
) -> JobCost:
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


def cost_of(view: JobView, prices: PriceSource, now: datetime | None = None) -> JobCost | None:
    record = view.record
    if record is None or not record.attempts:
        return None
    now = now or datetime.now(timezone.utc)
    instances = view.instances or ({record.attempts[-1].number: view.instance} if view.instance else {})
    costs, counted = [], []
    for attempt in record.attempts:
        start = datetime.fromisoformat(attempt.launched_at) if attempt.launched_at else None
        instance = instances.get(attempt.number)
        end = _end_of(attempt, instance, attempt is record.attempts[-1], view, now)
        if start is None or end is None:
            continue
        # EC2's reason once it has one; until then the trainer's word that a spot notice came.
        reason = attempt.state_reason or (instance.reason_code if instance else None)
        by_ec2 = reason == SPOT_TERMINATION if reason else attempt.end_reason == EndReason.INTERRUPTED
        history = prices.history((attempt.instance_type, attempt.zone), start, end) or [_launch_price(attempt, start)]
        costs.append(attempt_cost(attempt.number, history, start, end, by_ec2, attempt.on_demand_price))
        counted.append(attempt)
    total = job_cost(costs, [a.end_step for a in counted], [a.start_step for a in counted])
    current = record.attempts[-1]
    running = view.instance is not None and view.instance.state in LIVE
    rate = None
    if running:
        rate = prices.spot_prices([(current.instance_type, current.zone)]).get(
            (current.instance_type, current.zone), current.spot_price
        )
    eta = view.heartbeat.eta_s if view.heartbeat else None
    projected = total.total_usd + eta / 3600 * rate if running and eta is not None and rate is not None else None
    return replace(total, current_usd_per_hour=rate, projected_total_usd=projected)


def _end_of(attempt, instance, is_current: bool, view: JobView, now: datetime) -> datetime | None:
    if attempt.ended_at:
        return datetime.fromisoformat(attempt.ended_at)
    if instance is not None and instance.state in ("pending", "running", "shutting-down"):
        return now  # still billed
    beat = view.heartbeat
    if is_current and beat and beat.updated_at:
        return datetime.fromisoformat(beat.updated_at)
    return None


def _launch_price(attempt, start: datetime) -> PricePoint:
    """No history for the pool (a market that forgot it): the price recorded at launch."""
    return PricePoint(start, attempt.spot_price)
