"""Prices of a pool (instance type x availability zone): spot now, and on-demand for comparison.

One small interface, `PriceSource`, so the orchestrator never cares where prices come from: AWS
(spot price history + the Pricing API, with a shipped, dated table when the Pricing API cannot
answer, as in moto or an account without `pricing:GetProducts`), or the local cloud's simulated
market.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Protocol

import botocore.exceptions

if TYPE_CHECKING:
    from orchestrator.aws.clients import Cloud

log = logging.getLogger(__name__)

Pool = tuple[str, str]  # (instance type, availability zone)


@dataclass(frozen=True)
class PricePoint:
    """A pool's spot price from `at` until the next change."""

    at: datetime
    usd_per_hour: float


@dataclass(frozen=True)
class OnDemandPrice:
    usd_per_hour: float
    source: str  # "pricing-api" or "table <date>"


class PriceSource(Protocol):
    def spot_prices(self, pools: list[Pool]) -> dict[Pool, float]:
        """The current spot price of each pool that has one (USD per instance-hour)."""

    def on_demand(self, instance_type: str) -> OnDemandPrice | None:
        """The on-demand price of an instance type in this region, if known."""

    def history(self, pool: Pool, start: datetime, end: datetime) -> list[PricePoint]:
        """The pool's spot price changes from the one in force at `start` until `end`."""


@cache
def on_demand_table() -> dict:
    return json.loads(resources.files("orchestrator").joinpath("data/on_demand_prices.json").read_text())


class AwsPrices:
    """Spot prices from `describe_spot_price_history`; on-demand from the Pricing API, else the table."""

    def __init__(self, cloud: Cloud):
        self.cloud = cloud
        self._pricing_works = True

    def spot_prices(self, pools: list[Pool]) -> dict[Pool, float]:
        wanted = set(pools)
        types = sorted({itype for itype, _ in pools})
        ec2 = self.cloud.client("ec2", retries="adaptive")
        found: dict[Pool, tuple[datetime, float]] = {}
        # StartTime=now returns the price in force now for every pool (AWS's documented idiom).
        for chunk in (types[i : i + 20] for i in range(0, len(types), 20)):
            pages = ec2.get_paginator("describe_spot_price_history").paginate(
                InstanceTypes=chunk,
                ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                StartTime=datetime.now(timezone.utc),
            )
            for page in pages:
                for entry in page["SpotPriceHistory"]:
                    pool = (entry["InstanceType"], entry["AvailabilityZone"])
                    if pool in wanted and (pool not in found or entry["Timestamp"] > found[pool][0]):
                        found[pool] = (entry["Timestamp"], float(entry["SpotPrice"]))
        return {pool: price for pool, (_, price) in found.items()}

    def history(self, pool: Pool, start: datetime, end: datetime) -> list[PricePoint]:
        itype, zone = pool
        pages = (
            self.cloud.client("ec2", retries="adaptive")
            .get_paginator("describe_spot_price_history")
            .paginate(
                InstanceTypes=[itype],
                AvailabilityZone=zone,
                ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                StartTime=start,
                EndTime=end,
            )
        )
        entries = [e for page in pages for e in page["SpotPriceHistory"] if e["AvailabilityZone"] == zone]
        return sorted((PricePoint(e["Timestamp"], float(e["SpotPrice"])) for e in entries), key=lambda p: p.at)

    def on_demand(self, instance_type: str) -> OnDemandPrice | None:
        if self._pricing_works:
            try:
                price = self._pricing_api(instance_type)
                if price is not None:
                    return OnDemandPrice(price, "pricing-api")
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ValueError, KeyError) as exc:
                log.info(
                    "prices: the Pricing API did not answer (%s); using the table of %s",
                    exc,
                    on_demand_table()["as_of"],
                )
                self._pricing_works = False  # do not ask again for every type
        table = on_demand_table()
        price = table["prices"].get(instance_type)
        return OnDemandPrice(price, f"table {table['as_of']}") if price is not None else None

    def _pricing_api(self, instance_type: str) -> float | None:
        # The Pricing API lives in a few regions only; us-east-1 answers for all.
        pricing = self.cloud.client("pricing", region="us-east-1")
        filters = {
            "instanceType": instance_type,
            "regionCode": self.cloud.region,
            "operatingSystem": "Linux",
            "tenancy": "Shared",
            "preInstalledSw": "NA",
            "capacitystatus": "Used",
        }
        response = pricing.get_products(
            ServiceCode="AmazonEC2",
            Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
            MaxResults=10,
        )
        for item in response["PriceList"]:
            product = json.loads(item) if isinstance(item, str) else item
            for term in product["terms"]["OnDemand"].values():
                for dimension in term["priceDimensions"].values():
                    usd = float(dimension["pricePerUnit"]["USD"])
                    if usd > 0:
                        return usd
        return None


class FixedPrices:
    """Prices given up front: for tests, and a building block for the local cloud's market."""

    def __init__(self, spot: dict[Pool, float], on_demand: dict[str, float]):
        self._spot, self._on_demand = spot, on_demand

    def spot_prices(self, pools: list[Pool]) -> dict[Pool, float]:
        return {pool: self._spot[pool] for pool in pools if pool in self._spot}

    def on_demand(self, instance_type: str) -> OnDemandPrice | None:
        price = self._on_demand.get(instance_type)
        return OnDemandPrice(price, "fixed") if price is not None else None

    def history(self, pool: Pool, start: datetime, end: datetime) -> list[PricePoint]:
        return [PricePoint(datetime(2000, 1, 1, tzinfo=timezone.utc), self._spot[pool])] if pool in self._spot else []
