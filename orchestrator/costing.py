"""A job's cost from its record, EC2's view and the price history (orchestrator.cost does the sums).

An attempt runs from its launch until its recorded end, or until now while its instance runs, or
until its last heartbeat when the instance is gone and no end was recorded yet. EC2's state reason
`Server.SpotInstanceTermination` marks an interruption by EC2 (the first-hour rule applies).
"""

from __future__ import annotations

from datetime import datetime, timezone

from orchestrator.cost import JobCost, PricePoint, attempt_cost, job_cost
from orchestrator.prices import PriceSource
from orchestrator.status import JobView

EC2_INTERRUPTION = "Server.SpotInstanceTermination"


def cost_of(view: JobView, prices: PriceSource, now: datetime | None = None) -> dict | None:
    record = view.record
    if record is None or not record.attempts:
        return None
    now = now or datetime.now(timezone.utc)
    costs = []
    for attempt in record.attempts:
        is_current = attempt is record.attempts[-1]
        start = datetime.fromisoformat(attempt.launched_at) if attempt.launched_at else None
        end = _end_of(attempt, is_current, view, now)
        if start is None or end is None:
            continue
        reason = attempt.end_reason or (view.instance.reason_code if is_current and view.instance else None)
        history = prices.history((attempt.instance_type, attempt.zone), start, end) or [_launch_price(attempt, start)]
        costs.append(attempt_cost(attempt.number, history, start, end, reason == EC2_INTERRUPTION, attempt.on_demand_price))
    total: JobCost = job_cost(costs)
    result = total.as_dict()
    running = view.instance is not None and view.instance.state in ("pending", "running")
    current = record.attempts[-1].spot_price if running else None
    if running:
        latest = prices.spot_prices([(record.attempts[-1].instance_type, record.attempts[-1].zone)])
        current = next(iter(latest.values()), current)
    eta = (view.heartbeat or {}).get("eta_s")
    result["current_usd_per_hour"] = current
    result["projected_total_usd"] = round(total.total_usd + eta / 3600 * current, 6) if running and eta is not None and current is not None else None
    return result


def _end_of(attempt, is_current: bool, view: JobView, now: datetime) -> datetime | None:
    if attempt.ended_at:
        return datetime.fromisoformat(attempt.ended_at)
    if is_current and view.instance is not None and view.instance.state in ("pending", "running"):
        return now
    beat = view.heartbeat or {}
    if is_current and beat.get("updated_at"):
        return datetime.fromisoformat(beat["updated_at"])
    return None


def _launch_price(attempt, start: datetime) -> PricePoint:
    """No history for the pool (a market that forgot it): the price recorded at launch."""
    return PricePoint(start, attempt.spot_price)
