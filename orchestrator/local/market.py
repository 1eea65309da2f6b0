"""The local cloud's spot market: per pool (instance type x zone), a price that changes every
STEP_S seconds around a pool-specific discount to the on-demand table, reproducible from a seed.

Pure arithmetic on (seed, pool, time): the CLI and the local cloud's process compute the same prices
without talking to each other. It is a PriceSource, the interface the orchestrator uses on AWS, so
offers, cost and savings are meaningful locally.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from orchestrator.aws.prices import OnDemandPrice, Pool, PricePoint, on_demand_table

STEP_S = 300  # prices change every 5 minutes
DISCOUNT = (0.25, 0.45)  # a pool's typical spot price, as a share of on-demand (AWS: mostly 30-40 %)
WOBBLE = 0.06  # each step moves up to +-3 % of on-demand around it
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)  # step 0
LIST_REGION = "us-east-1"  # whose on-demand list prices the market is built around, whatever the region


class SimulatedMarket:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self._as_of, self._list = on_demand_table(LIST_REGION)

    def _uniform(self, *parts) -> float:
        digest = hashlib.sha256("/".join(str(p) for p in (self.seed, *parts)).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def price_at(self, pool: Pool, at: datetime) -> float | None:
        on_demand = self._list.get(pool[0])
        if on_demand is None:
            return None
        step = int((at - EPOCH).total_seconds() // STEP_S)
        base = DISCOUNT[0] + (DISCOUNT[1] - DISCOUNT[0]) * self._uniform(*pool)
        return round(on_demand * (base + WOBBLE * (self._uniform(*pool, step) - 0.5)), 4)

    # ------------------------------------------------------------------ PriceSource
    def spot_prices(self, pools: list[Pool]) -> dict[Pool, float]:
        now = datetime.now(timezone.utc)
        prices = {pool: self.price_at(pool, now) for pool in pools}
        return {pool: price for pool, price in prices.items() if price is not None}

    def on_demand(self, instance_type: str) -> OnDemandPrice | None:
        price = self._list.get(instance_type)
        return OnDemandPrice(price, f"table {self._as_of}") if price is not None else None

    def history(self, pool: Pool, start: datetime, end: datetime) -> list[PricePoint]:
        if self.price_at(pool, start) is None:
            return []
        first = EPOCH + timedelta(seconds=int((start - EPOCH).total_seconds() // STEP_S) * STEP_S)
        points, at = [], first
        while at < end:
            points.append(PricePoint(at, self.price_at(pool, at)))
            at += timedelta(seconds=STEP_S)
        return points
