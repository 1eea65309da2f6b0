"""Prices of a pool (instance type x availability zone): spot now, and on-demand for comparison; and
the list rates of what an attempt pays besides its instance (its root gp3 volume, a public IPv4
address).

One small interface, `PriceSource`, so the orchestrator never cares where prices come from: AWS
(spot price history + the Pricing API, with a shipped, dated table per region when the Pricing API
cannot answer, as in moto or an account without `pricing:GetProducts`), or the local cloud's
simulated market. The table (data/on_demand_prices.json) states each rate's source and date.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

import botocore.exceptions

from orchestrator.aws.clients import ErrorKind, classify, describe
from trainer.job.settings import Settings

if TYPE_CHECKING:
    from orchestrator.aws.clients import Cloud

log = logging.getLogger(__name__)

Pool = tuple[str, str]  # (instance type, availability zone)
PRICING_CACHE_FILE = "prices/on-demand.json"  # under SPOTCTL_CACHE_DIR: the Pricing API's answers, a day each


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


# ------------------------------------------------------------------------- the shipped list prices
@dataclass(frozen=True)
class ListPrice:
    """One rate of the shipped table (data/on_demand_prices.json), with where it came from and when."""

    usd: float
    as_of: str
    source: str


@cache
def _table() -> dict:
    return json.loads(resources.files("orchestrator").joinpath("data/on_demand_prices.json").read_text())


def on_demand_table(region: str) -> tuple[str, dict[str, float]] | None:
    """(as of, {instance type: USD per hour}) of the region's on-demand list prices; None where the
    table has none: another region's prices would be wrong by tens of percent, so there are none."""
    entry = _table()["on_demand"].get(region)
    return (entry["as_of"], entry["usd_per_hour"]) if entry else None


def ebs_gp3_rate(region: str) -> ListPrice | None:
    """USD per GiB-month of gp3 storage in the region (None: the table has no rate for it)."""
    entry = _table()["ebs_gp3_usd_per_gib_month"].get(region)
    return ListPrice(entry["usd"], entry["as_of"], entry["source"]) if entry else None


def public_ipv4_rate() -> ListPrice:
    """USD per hour of a public IPv4 address (one rate in every commercial region)."""
    entry = _table()["public_ipv4_usd_per_hour"]
    return ListPrice(entry["usd"], entry["as_of"], entry["source"])


# ------------------------------------------------------------------------------------------ AWS
PRICE_HISTORY_DAYS = 89  # DescribeSpotPriceHistory's StartTime reaches back "up to the past 90 days"
NOW_WINDOW_S = 60  # the current price: changes in the last minute, so a clock ahead of AWS's still asks a valid window
PRICING_CACHE_S = 86400.0  # list prices change a few times a year: one answer per (region, type) a day
PRICING_FAILURES_TO_GIVE_UP = 3  # consecutive failures (each already retried by botocore) that switch the API off


class AwsPrices:
    """Spot prices from `describe_spot_price_history`; on-demand from the Pricing API (cached a day per
    region and type), else the region's row of the shipped table, else unknown."""

    def __init__(self, cloud: Cloud, cache: Path | None | bool = True, clock: Callable[[], float] = time.time):
        """`cache`: the file the Pricing API's answers are kept in; True for the default under
        SPOTCTL_CACHE_DIR, which is used only for AWS's own endpoint; None or False: this process only."""
        self.cloud, self.clock = cloud, clock
        self._cache_path = cache
        self._answers: dict[str, tuple[float | None, float]] | None = None  # "region/type" -> (USD/h, fetched at)
        self._pricing_off: str | None = None  # why the Pricing API is not asked again in this process
        self._failures = 0

    def spot_prices(self, pools: list[Pool]) -> dict[Pool, float]:
        wanted = set(pools)
        types = sorted({itype for itype, _ in pools})
        ec2 = self.cloud.client("ec2", retries="adaptive")
        found: dict[Pool, tuple[datetime, float]] = {}
        # "Returns the last price change before the start time" makes a window ending now return the
        # price in force for every pool. StartTime=now alone fails when this clock is ahead of AWS's
        # (StartTime would follow the service's EndTime default, its own "now"): ask for the last minute.
        now = datetime.now(timezone.utc)
        for chunk in (types[i : i + 20] for i in range(0, len(types), 20)):
            pages = ec2.get_paginator("describe_spot_price_history").paginate(
                InstanceTypes=chunk,
                ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                StartTime=now - timedelta(seconds=NOW_WINDOW_S),
                EndTime=now,
            )
            for page in pages:
                for entry in page["SpotPriceHistory"]:
                    pool = (entry["InstanceType"], entry["AvailabilityZone"])
                    if pool in wanted and (pool not in found or entry["Timestamp"] > found[pool][0]):
                        found[pool] = (entry["Timestamp"], float(entry["SpotPrice"]))
        return {pool: price for pool, (_, price) in found.items()}

    def history(self, pool: Pool, start: datetime, end: datetime) -> list[PricePoint]:
        # StartTime accepts "up to the past 90 days": an older attempt gets the price in force 89 days
        # ago from then on (the cost integrates the first known price back to the start), never an error.
        oldest = datetime.now(timezone.utc) - timedelta(days=PRICE_HISTORY_DAYS)
        start = max(start, oldest)
        if end <= start:
            return []  # all of it before the window: the caller falls back on the price recorded at launch
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
        region = self.cloud.region
        key = f"{region}/{instance_type}"
        answers = self._cached()
        known = answers.get(key)
        if known is not None and self.clock() - known[1] < PRICING_CACHE_S:
            price = known[0]
        elif self._pricing_off is None:
            price = self._ask(instance_type)
            if price is not False:
                answers[key] = (price, self.clock())
                self._store()
        else:
            price = None
        if price:
            return OnDemandPrice(price, "pricing-api")
        table = on_demand_table(region)
        if table is None or instance_type not in table[1]:
            return None
        return OnDemandPrice(table[1][instance_type], f"table {table[0]}")

    def _ask(self, instance_type: str) -> float | None | bool:
        """The Pricing API's price (None: it lists none); False when it did not answer."""
        try:
            price = self._pricing_api(instance_type)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ValueError, KeyError) as exc:
            self._failures += 1
            kind = classify(exc)
            # Botocore has already retried throttling and transient errors; one more failure of that
            # kind says nothing about the next call. Refused credentials or permissions do not come
            # back in this process, and neither does an endpoint botocore could not connect to after
            # every attempt (each one waits out the connect timeout).
            if kind is ErrorKind.AUTH:
                self._pricing_off = f"refused ({describe(exc)})"
            elif isinstance(exc, botocore.exceptions.ConnectionError):
                self._pricing_off = f"unreachable ({exc})"
            elif self._failures >= PRICING_FAILURES_TO_GIVE_UP:
                self._pricing_off = f"{self._failures} failures in a row, the last {describe(exc)}"
            log.info(
                "prices: the Pricing API did not answer for %s (%s)%s",
                instance_type,
                describe(exc),
                f"; not asking it again: {self._pricing_off}" if self._pricing_off else "",
            )
            return False
        self._failures = 0
        return price

    # Cached answers: a CLI command is one process, and `spotctl launch`, `offers` and `status` each
    # ask for every candidate type (about 40 for a `gpu:` requirement), so a cache in memory alone would
    # save the watcher only. The file holds AWS's answers only: a look-alike endpoint (moto, the local
    # cloud) must never leave prices there that a later run against AWS would trust.
    def _cached(self) -> dict[str, tuple[float | None, float]]:
        if self._answers is None:
            self._answers = self._read(self._file())
        return self._answers

    @staticmethod
    def _read(path: Path | None) -> dict[str, tuple[float | None, float]]:
        if path is None:
            return {}
        try:
            return {
                k: (None if v[0] is None else float(v[0]), float(v[1])) for k, v in json.loads(path.read_text()).items()
            }
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            return {}  # none yet, or unreadable: asked again, and rewritten

    def _store(self) -> None:
        path = self._file()
        if path is None:
            return
        # Merged with what other processes (and this one's other regions) kept meanwhile; the newer
        # answer wins. Two writers at once may still lose one answer: it is asked for again later.
        merged = self._read(path)
        for key, (price, at) in self._answers.items():
            if key not in merged or merged[key][1] < at:
                merged[key] = (price, at)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(json.dumps({k: list(v) for k, v in merged.items()}))
            os.replace(temporary, path)  # readers see the old file or the new one, never half of one
        except OSError as exc:
            log.info("prices: could not keep the Pricing API's answers in %s (%s)", path, exc)

    def _file(self) -> Path | None:
        if self._cache_path is True:
            endpoint = urlparse(self._pricing().meta.endpoint_url).hostname or ""
            official = endpoint.endswith((".amazonaws.com", ".amazonaws.com.cn"))
            self._cache_path = Settings.from_env().cache_dir / PRICING_CACHE_FILE if official else None
        return self._cache_path or None

    def _pricing(self):
        # The Pricing API lives in a few regions only; us-east-1 answers for the commercial partition.
        return self.cloud.client("pricing", region="us-east-1")

    def _pricing_api(self, instance_type: str) -> float | None:
        filters = {
            "instanceType": instance_type,
            "regionCode": self.cloud.region,
            "operatingSystem": "Linux",
            "tenancy": "Shared",
            "preInstalledSw": "NA",
            "capacitystatus": "Used",
        }
        response = self._pricing().get_products(
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
