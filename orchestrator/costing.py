"""A job's cost from its record, EC2's view and the price history (orchestrator.cost does the sums).

An attempt runs from its launch until its recorded end, or until now while its instance runs, or
until its last heartbeat when the instance is gone and no end was recorded yet. EC2's state reason
`Server.SpotInstanceTermination` marks an interruption by EC2 (the first-hour rule applies).
"""

from __future__ import annotations

from datetime import datetime, timezone

from orchestrator.cost import JobCost, PricePoint, attempt_cost, job_cost
from orchestrator.prices import PriceSource
from orchestrator.status import SPOT_TERMINATION, JobView


def cost_of(view: JobView, prices: PriceSource, now: datetime | None = None) -> dict | None:
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
        by_ec2 = reason == SPOT_TERMINATION if reason else attempt.end_reason == "interrupted"
        history = prices.history((attempt.instance_type, attempt.zone), start, end) or [_launch_price(attempt, start)]
        costs.append(attempt_cost(attempt.number, history, start, end, by_ec2, attempt.on_demand_price))
        counted.append(attempt)
    total: JobCost = job_cost(costs, [a.end_step for a in counted], [a.start_step for a in counted])
    result = total.as_dict()
    current = record.attempts[-1]
    running = view.instance is not None and view.instance.state in ("pending", "running")
    rate = None
    if running:
        rate = prices.spot_prices([(current.instance_type, current.zone)]).get((current.instance_type, current.zone), current.spot_price)
    eta = (view.heartbeat or {}).get("eta_s")
    result["current_usd_per_hour"] = rate
    result["projected_total_usd"] = round(total.total_usd + eta / 3600 * rate, 6) if running and eta is not None and rate is not None else None
    return result


def _end_of(attempt, instance, is_current: bool, view: JobView, now: datetime) -> datetime | None:
    if attempt.ended_at:
        return datetime.fromisoformat(attempt.ended_at)
    if instance is not None and instance.state in ("pending", "running", "shutting-down"):
        return now  # still billed
    beat = view.heartbeat or {}
    if is_current and beat.get("updated_at"):
        return datetime.fromisoformat(beat["updated_at"])
    return None


def _launch_price(attempt, start: datetime) -> PricePoint:
    """No history for the pool (a market that forgot it): the price recorded at launch."""
    return PricePoint(start, attempt.spot_price)
