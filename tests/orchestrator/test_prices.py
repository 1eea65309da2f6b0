"""AwsPrices against the moto server, with the Pricing API (which moto lacks) answered through botocore
events on spotctl's own pricing client: one throttle does not switch the Pricing API off, refused
permissions and repeated failures do; its answers are kept a day per region and type, in a file a
later process reads; a region without a table row gets no on-demand price at all; and the spot price
queries stay inside what DescribeSpotPriceHistory accepts."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import botocore.awsrequest
import botocore.exceptions
import pytest

from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import PRICE_HISTORY_DAYS, PRICING_CACHE_FILE, PRICING_CACHE_S, AwsPrices

TABLE = "table 2025-06-15"


def answer_pricing(prices: AwsPrices, answers: list) -> list[str]:
    """Answer each GetProducts of `prices` with the next of `answers`: a USD price, None (no product)
    or an error code. Returns the instance types asked for, in order."""
    asked: list[str] = []
    current: list = [None]
    pricing = prices._pricing()

    def before(params, **_):
        asked.append(next(f["Value"] for f in params["Filters"] if f["Field"] == "instanceType"))
        current[0] = answers.pop(0)
        if isinstance(current[0], str):  # as spotctl sees it once botocore has given up retrying
            raise botocore.exceptions.ClientError({"Error": {"Code": current[0], "Message": "(test)"}}, "GetProducts")

    def call(**_):  # the answer, without a request: moto has no Pricing API
        price_list = [] if current[0] is None else [_product(current[0])]
        return botocore.awsrequest.AWSResponse("https://pricing.test", 200, {}, None), {"PriceList": price_list}

    pricing.meta.events.register("before-parameter-build.pricing.GetProducts", before)
    pricing.meta.events.register("before-call.pricing.GetProducts", call)
    return asked


def _product(usd: float) -> str:
    return json.dumps({"terms": {"OnDemand": {"T": {"priceDimensions": {"D": {"pricePerUnit": {"USD": str(usd)}}}}}}})


@pytest.fixture
def cache_dir(aws, monkeypatch, tmp_path):
    monkeypatch.setenv("SPOTCTL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_one_throttle_does_not_switch_the_pricing_api_off(cache_dir):
    prices = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=None)
    asked = answer_pricing(prices, ["ThrottlingException", 0.81, 1.02])
    first = prices.on_demand("g5.xlarge")
    assert (first.usd_per_hour, first.source) == (1.006, TABLE)  # this once: the table
    second = prices.on_demand("g6.xlarge")
    assert (second.usd_per_hour, second.source) == (0.81, "pricing-api")  # asked again, and it answered
    again = prices.on_demand("g5.xlarge")  # the throttled type is asked again too: no answer was kept
    assert (again.usd_per_hour, again.source) == (1.02, "pricing-api")
    assert asked == ["g5.xlarge", "g6.xlarge", "g5.xlarge"]


def test_refused_permissions_switch_it_off_for_the_process(cache_dir):
    prices = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=None)
    asked = answer_pricing(prices, ["AccessDeniedException", 0.81])
    assert prices.on_demand("g5.xlarge").source == TABLE
    assert prices.on_demand("g6.xlarge").source == TABLE and asked == ["g5.xlarge"]


def test_three_failures_in_a_row_switch_it_off(cache_dir):
    prices = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=None)
    asked = answer_pricing(
        prices,
        ["InternalErrorException", 0.5, "InternalErrorException", "ThrottlingException", "InternalErrorException", 0.9],
    )
    types = ["g4dn.xlarge", "g5.xlarge", "g6.xlarge", "g6e.xlarge", "p3.2xlarge", "g4dn.2xlarge"]
    sources = [prices.on_demand(name).source for name in types]
    # A success resets the count: switched off at the third failure after it, the last type is not asked.
    assert sources == [TABLE, "pricing-api", TABLE, TABLE, TABLE, TABLE]
    assert asked == types[:5]


def test_answers_are_kept_a_day_per_region_and_type_for_later_processes(cache_dir, tmp_path):
    now = [1_000_000.0]
    path = tmp_path / "on-demand.json"
    east = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=path, clock=lambda: now[0])
    asked = answer_pricing(east, [1.2])
    assert east.on_demand("g5.xlarge").usd_per_hour == 1.2 and east.on_demand("g5.xlarge").usd_per_hour == 1.2
    assert asked == ["g5.xlarge"]

    now[0] += PRICING_CACHE_S - 1  # another process, within the day: the file answers
    later = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=path, clock=lambda: now[0])
    asked_later = answer_pricing(later, [])
    assert later.on_demand("g5.xlarge").usd_per_hour == 1.2 and asked_later == []

    west = AwsPrices(Cloud("us-west-2", max_attempts=1), cache=path, clock=lambda: now[0])
    asked_west = answer_pricing(west, [1.1])
    assert west.on_demand("g5.xlarge").usd_per_hour == 1.1 and asked_west == ["g5.xlarge"]  # another region's key

    now[0] += 2  # a day old: asked again
    next_day = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=path, clock=lambda: now[0])
    asked_next = answer_pricing(next_day, [1.3])
    assert next_day.on_demand("g5.xlarge").usd_per_hour == 1.3 and asked_next == ["g5.xlarge"]


def test_answers_from_a_look_alike_endpoint_are_not_kept_on_disk(cache_dir):
    prices = AwsPrices(Cloud("us-east-1", max_attempts=1))  # the default cache, but the endpoint is moto
    answer_pricing(prices, [1.2])
    assert prices.on_demand("g5.xlarge").usd_per_hour == 1.2 and not (cache_dir / PRICING_CACHE_FILE).exists()


def test_a_region_without_a_table_row_gets_no_on_demand_price(cache_dir):
    abroad = AwsPrices(Cloud("eu-west-1", max_attempts=1), cache=None)
    answer_pricing(abroad, ["ThrottlingException"])
    assert abroad.on_demand("g5.xlarge") is None  # never us-east-1's price under another region's name


def test_spot_price_queries_stay_inside_the_90_days_and_allow_for_clock_skew(cache_dir):
    prices = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=None)
    asked: list[dict] = []
    ec2 = prices.cloud.client("ec2", retries="adaptive")
    ec2.meta.events.register(
        "before-parameter-build.ec2.DescribeSpotPriceHistory", lambda params, **_: asked.append(dict(params))
    )
    before = datetime.now(timezone.utc)
    assert prices.spot_prices([("g5.xlarge", "us-east-1a")]) == {("g5.xlarge", "us-east-1a"): 0.00001}
    after = datetime.now(timezone.utc)
    [current] = asked
    assert before <= current["EndTime"] <= after  # the price now: the last minute, ending at this clock's now
    assert current["EndTime"] - current["StartTime"] == timedelta(seconds=60)

    asked.clear()
    start = before - timedelta(days=200)  # an attempt older than the history AWS keeps
    assert [p.usd_per_hour for p in prices.history(("g5.xlarge", "us-east-1a"), start, after)] == [0.00001]
    [old] = asked
    assert old["StartTime"] >= before - timedelta(days=PRICE_HISTORY_DAYS) and old["EndTime"] == after

    asked.clear()  # wholly before the window: nothing to ask (the cost uses the price recorded at launch)
    assert prices.history(("g5.xlarge", "us-east-1a"), start, start + timedelta(days=5)) == [] and asked == []


def test_two_processes_keeping_answers_keep_both(cache_dir, tmp_path):
    path = tmp_path / "on-demand.json"
    first = AwsPrices(Cloud("us-east-1", max_attempts=1), cache=path)
    second = AwsPrices(Cloud("us-west-2", max_attempts=1), cache=path)
    answer_pricing(first, [1.2, 0.9])
    answer_pricing(second, [1.1])
    first.on_demand("g5.xlarge")
    second.on_demand("g5.xlarge")
    first.on_demand("g6.xlarge")  # its copy of the file predates the second's answer, which stays
    assert {key: price for key, (price, _) in json.loads(path.read_text()).items()} == {
        "us-east-1/g5.xlarge": 1.2,
        "us-east-1/g6.xlarge": 0.9,
        "us-west-2/g5.xlarge": 1.1,
    }
