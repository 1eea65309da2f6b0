"""The cost arithmetic against hand-computed values: price changes mid-attempt, the first-hour rule,
the one-minute minimum, several attempts and the work lost between them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.aws.prices import PricePoint
from orchestrator.jobs.cost import attempt_cost, integrate, job_cost


def at(hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(2026, 11, 24, hh, mm, ss, tzinfo=timezone.utc)


def test_a_constant_price_for_two_hours():
    assert integrate([PricePoint(at(9), 0.36)], at(10), at(12)) == pytest.approx(0.72)


def test_a_price_change_mid_attempt_is_integrated_per_second():
    prices = [PricePoint(at(10), 0.30), PricePoint(at(10, 30), 0.60)]
    assert integrate(prices, at(10), at(11)) == pytest.approx(0.5 * 0.30 + 0.5 * 0.60)
    # The price in force at the start is the latest change before it; later changes apply from their time.
    prices = [PricePoint(at(9), 0.20), PricePoint(at(10, 30), 0.40), PricePoint(at(13), 9.99)]
    assert integrate(prices, at(10), at(12)) == pytest.approx(0.5 * 0.20 + 1.5 * 0.40)
    assert integrate(prices, at(10, 0, 0), at(10, 0, 36)) == pytest.approx(36 * 0.20 / 3600)


def test_interrupted_by_ec2_in_the_first_hour_is_free_but_not_when_stopped_by_the_user():
    prices = [PricePoint(at(9), 0.30)]
    assert attempt_cost(1, prices, at(10), at(10, 59), interrupted_by_ec2=True).usd == 0.0
    assert attempt_cost(1, prices, at(10), at(10, 59), interrupted_by_ec2=True).free_by_first_hour_rule
    assert attempt_cost(1, prices, at(10), at(11, 1), interrupted_by_ec2=True).usd == pytest.approx(0.30 * 61 / 60)
    assert attempt_cost(1, prices, at(10), at(10, 59), interrupted_by_ec2=False).usd == pytest.approx(0.30 * 59 / 60)


def test_a_minute_is_the_least_that_is_billed():
    cost = attempt_cost(
        1, [PricePoint(at(9), 0.36)], at(10), at(10, 0, 30), interrupted_by_ec2=False, on_demand_usd_per_hour=1.2
    )
    assert cost.usd == pytest.approx(60 * 0.36 / 3600) and cost.on_demand_usd == pytest.approx(60 * 1.2 / 3600)


def test_several_attempts_savings_and_lost_work():
    first = attempt_cost(
        1, [PricePoint(at(9), 0.5)], at(10), at(10, 40), interrupted_by_ec2=True, on_demand_usd_per_hour=1.0
    )  # free
    second = attempt_cost(
        2, [PricePoint(at(9), 0.5)], at(11), at(13), interrupted_by_ec2=True, on_demand_usd_per_hour=1.0
    )  # 1.00
    third = attempt_cost(
        3, [PricePoint(at(9), 0.4)], at(14), at(15, 30), interrupted_by_ec2=False, on_demand_usd_per_hour=1.0
    )  # 0.60
    cost = job_cost([first, second, third], steps_reached=[300, 900, 1200], resumed_from=[0, 250, 880])
    assert cost.total_usd == pytest.approx(1.6)
    assert cost.on_demand_usd == pytest.approx((2400 + 7200 + 5400) / 3600)
    assert cost.savings == pytest.approx(1 - 1.6 / (15000 / 3600))
    assert cost.lost_steps == 50 + 20
    assert cost.lost_usd == pytest.approx(0.0 + 1.0 * 20 / 650)  # the first attempt was free
    assert cost.as_dict()["attempts"][0] == {
        "number": 1,
        "seconds": 2400.0,
        "usd": 0.0,
        "on_demand_usd": pytest.approx(0.666667),
        "free_by_first_hour_rule": True,
    }


def test_unknown_on_demand_prices_give_no_savings():
    cost = job_cost([attempt_cost(1, [PricePoint(at(9), 0.5)], at(10), at(11), interrupted_by_ec2=False)])
    assert cost.total_usd == pytest.approx(0.5) and cost.on_demand_usd is None and cost.savings is None


def test_no_price_at_all_is_an_error():
    with pytest.raises(ValueError, match="no price known"):
        integrate([], at(10), at(11))
    assert (
        integrate([], at(11), at(10)) == 0.0
        and integrate([PricePoint(at(9), 1.0)], at(10) + timedelta(0), at(10)) == 0.0
    )
