"""The cost arithmetic against hand-computed values: price changes mid-attempt, the first-hour rule,
the one-minute minimum, several attempts and the work lost between them; the root volume and the
public IPv4 address, billing from `running`, and savings where no on-demand price is known."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.aws.prices import FixedPrices, PricePoint, on_demand_table
from orchestrator.jobs.cost import Extras, attempt_cost, cost_of, integrate, job_cost
from orchestrator.jobs.state import settle
from tests.unit.jobs import NOW, ago, attempt, instance, record, view
from trainer.job.documents import Node

# 100 GiB of gp3 at us-east-1's $0.08/GiB-month over a 730-hour month, and one public IPv4 address.
EBS_PER_HOUR = 100 * 0.08 / 730  # $0.010959/h
IPV4_PER_HOUR = 0.005
SPOT = FixedPrices({("g5.xlarge", "us-east-1a"): 0.4, ("g5.xlarge", "eu-west-1a"): 0.4}, {})


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
        "instance_usd": 0.0,
        "ebs_usd": 0.0,
        "public_ipv4_usd": 0.0,
        "on_demand_usd": pytest.approx(0.666667),
        "free_by_first_hour_rule": True,
        "waived_usd": 0.333333,  # 40 min at $0.50/h
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


# ----------------------------------------------------------------- what an attempt pays besides its instance
def recorded(number=1, pool=("g5.xlarge", "us-east-1a"), launched=2400, running=2340, ended=600, **fields):
    """An attempt of a 100 GiB root volume with a public address, launched, running and ended so many
    seconds before NOW."""
    made = attempt(
        number, pool, launched=launched, ended=ended, **({"end": fields.pop("end")} if "end" in fields else {})
    )
    return replace(
        made, running_at=ago(running) if running is not None else None, disk_gib=100, public_ip=True, **fields
    )


def test_an_attempt_ec2_interrupts_in_its_first_hour_costs_its_volume_and_address_only():
    # Launched 40 min ago, running 60 s later, interrupted 10 min ago: 29 min of instance (free), and
    # 30 min of volume and address, which the first-hour rule does not waive.
    interrupted = recorded(end="interrupted", state_reason="Server.SpotInstanceTermination")
    cost = cost_of(view(record(interrupted)), SPOT, NOW).as_dict()
    assert cost["attempts"] == [
        {
            "number": 1,
            "seconds": 1740.0,
            "usd": 0.007979,
            "instance_usd": 0.0,
            "ebs_usd": 0.005479,
            "public_ipv4_usd": 0.0025,
            "on_demand_usd": pytest.approx(1740 / 3600 * 1.0 + 0.007979, abs=1e-6),
            "free_by_first_hour_rule": True,
            "waived_usd": 0.193333,  # 29 min at $0.40/h
        }
    ]
    assert (cost["total_usd"], cost["instance_usd"], cost["ebs_usd"], cost["public_ipv4_usd"]) == (
        0.007979,
        0.0,
        0.005479,
        0.0025,
    )
    assert cost["notes"] == [] and cost["savings_unknown"] is None


def test_an_attempt_its_user_terminates_pays_its_instance_from_running_and_its_volume_and_address_from_launch():
    # Launched 91 min ago, running a minute later, terminated by its user after one hour of running.
    terminated = recorded(
        launched=5460, running=5400, ended=1800, end="terminated", state_reason="Client.UserInitiatedShutdown"
    )
    cost = cost_of(view(record(terminated)), SPOT, NOW)
    assert cost.as_dict()["attempts"][0] == {
        "number": 1,
        "seconds": 3600.0,
        "usd": 0.416225,  # $0.40 of instance + 61 min of volume and address
        "instance_usd": 0.4,
        "ebs_usd": 0.011142,
        "public_ipv4_usd": 0.005083,
        "on_demand_usd": 1.016225,  # the same hour on demand ($1.00/h), with the same volume and address
        "free_by_first_hour_rule": False,
        "waived_usd": 0.0,
    }
    assert cost.total_usd == pytest.approx(0.4 + 3660 / 3600 * (EBS_PER_HOUR + IPV4_PER_HOUR))
    assert cost.savings == pytest.approx(1 - 0.416225 / 1.016225, abs=1e-6)
    # Billed from the launch, as before running_at was recorded, the same attempt costs a minute more.
    unseen = cost_of(view(record(replace(terminated, running_at=None))), SPOT, NOW)
    assert unseen.instance_usd == pytest.approx(0.4 * 61 / 60) and unseen.attempts[0].seconds == 3660.0


def test_the_rate_now_and_the_projection_include_the_volume_and_address():
    live = recorded(ended=None)
    cost = cost_of(view(record(live), instance("running"), None), SPOT, NOW)
    assert cost.current_usd_per_hour == pytest.approx(0.4 + EBS_PER_HOUR + IPV4_PER_HOUR)
    assert round(cost.current_usd_per_hour, 6) == 0.415959  # what the budget stop projects with (jobs.policy)
    private = cost_of(view(record(replace(live, public_ip=False)), instance("running"), None), SPOT, NOW)
    assert private.current_usd_per_hour == pytest.approx(0.4 + EBS_PER_HOUR) and private.public_ipv4_usd == 0.0


def test_a_record_without_disk_size_counts_no_volume_and_says_so():
    old = replace(
        recorded(end="terminated", state_reason="Client.UserInitiatedShutdown"), disk_gib=None, public_ip=None
    )
    cost = cost_of(view(record(old)), SPOT, NOW)
    assert cost.attempts[0].ebs_usd is None and cost.ebs_usd == 0.0 and cost.public_ipv4_usd == 0.0
    assert cost.total_usd == pytest.approx(0.4 * 1740 / 3600)
    assert cost.notes == ("attempt 1: its root volume and public address are not counted (not recorded)",)


def test_a_region_without_an_on_demand_price_has_unknown_savings_not_us_east_1s():
    assert on_demand_table("us-east-1")[1]["g5.xlarge"] == 1.006 and on_demand_table("eu-west-1") is None
    abroad = replace(
        recorded(pool=("g5.xlarge", "eu-west-1a"), end="terminated", state_reason="Client.UserInitiatedShutdown"),
        on_demand_price=None,  # what the offer had: neither the Pricing API nor the table knew one
    )
    job = record(abroad)
    job.region = "eu-west-1"
    cost = cost_of(view(job), SPOT, NOW)
    assert cost.savings is None and cost.on_demand_usd is None
    assert cost.savings_unknown == "no on-demand price for g5.xlarge in eu-west-1"
    # gp3 has no rate for eu-west-1 in the table either: us-east-1's, said so.
    assert cost.notes == (
        "root volumes priced at us-east-1's gp3 rate ($0.08/GiB-month, 2026-12-01): spotctl has no rate for eu-west-1",
    )
    assert cost.ebs_usd == pytest.approx(1800 / 3600 * EBS_PER_HOUR)


def test_extras_are_charged_even_when_the_instance_is_free():
    free = attempt_cost(
        1, [PricePoint(at(9), 0.5)], at(10), at(10, 30), True, 1.0, Extras(0.02, 0.005), launched=at(9, 58)
    )
    assert free.free_by_first_hour_rule and free.instance_usd == 0.0
    assert free.usd == pytest.approx(32 / 60 * 0.025) and free.ebs_usd == pytest.approx(32 / 60 * 0.02)
    assert free.on_demand_usd == pytest.approx(0.5 * 1.0 + 32 / 60 * 0.025)


# ------------------------------------------------------------------------------ when billing starts
def test_running_at_is_the_first_poll_that_sees_it_running_soon_after_the_launch():
    booting = record(attempt(launched=40))
    assert not settle(booting, {1: instance("pending")}, None, None, NOW) and booting.attempts[0].running_at is None
    assert settle(booting, {1: instance("running")}, None, None, NOW)
    assert booting.attempts[0].running_at == NOW.isoformat(timespec="seconds")
    later = NOW + timedelta(seconds=30)
    assert not settle(booting, {1: instance("running")}, None, None, later)  # recorded once
    assert booting.attempts[0].running_at == NOW.isoformat(timespec="seconds")


def test_a_first_look_long_after_the_launch_keeps_the_launch_time():
    unwatched = record(attempt(launched=900))  # nobody looked for 15 minutes: when it began running is unknown
    assert settle(unwatched, {1: instance("running")}, None, None, NOW)
    assert unwatched.attempts[0].running_at == unwatched.attempts[0].launched_at == ago(900)


# ----------------------------------------------------------------------------- several nodes (compute.nodes)
def nodes_of(*nodes: dict) -> list[Node]:
    return [
        Node(rank=i, instance_type="g5.xlarge", zone="us-east-1a", spot_price=0.4, client_token=f"t{i}", **fields)
        for i, fields in enumerate(nodes)
    ]


def test_every_node_of_an_attempt_is_billed_over_its_own_time():
    # Two nodes of one attempt, each running 50 min and terminated by their user: twice one instance.
    both = recorded(launched=3060, running=3000, ended=0, end="terminated", state_reason="Client.UserInitiatedShutdown")
    one = cost_of(view(record(both)), SPOT, NOW)
    two_nodes = nodes_of(
        *[{"instance_id": f"i-{i}", "launched_at": ago(3060), "running_at": ago(3000)} for i in (0, 1)]
    )
    two = cost_of(view(record(replace(both, nodes=two_nodes))), SPOT, NOW)
    assert two.instance_usd == pytest.approx(2 * one.instance_usd) and two.instance_usd == pytest.approx(
        2 * 0.4 * 50 / 60
    )
    assert two.ebs_usd == pytest.approx(2 * one.ebs_usd) and two.total_usd == pytest.approx(2 * one.total_usd)


def test_a_kept_node_is_billed_from_the_last_attempts_end_and_a_replaced_one_from_its_own_running():
    # Attempt 1 ran nodes 0 and 1 for 30 min; node 1 was interrupted 60 min ago (free: its first hour).
    # Attempt 2 kept node 0 (running since 90 min ago; no new minimum) and replaced node 1 (running 55 min ago).
    first = recorded(
        launched=5460, running=5400, ended=3600, end="interrupted", state_reason="Server.SpotInstanceTermination"
    )
    first = replace(
        first,
        nodes=nodes_of(
            {"instance_id": "i-0", "launched_at": ago(5460), "running_at": ago(5400), "ended_at": ago(3600)},
            {
                "instance_id": "i-1",
                "launched_at": ago(5460),
                "running_at": ago(5400),
                "ended_at": ago(3600),
                "lost": True,
                "state_reason": "Server.SpotInstanceTermination",
            },
        ),
    )
    second = recorded(number=2, launched=3600, running=3300, ended=0, end="terminated")
    second = replace(
        second,
        state_reason="Client.UserInitiatedShutdown",
        nodes=nodes_of(
            {"instance_id": "i-0", "launched_at": ago(5460), "running_at": ago(5400), "since": ago(3600), "kept": True},
            {"instance_id": "i-2", "launched_at": ago(3360), "running_at": ago(3300)},
        ),
    )
    cost = cost_of(view(record(first, second)), SPOT, NOW)
    a1, a2 = cost.attempts
    # Attempt 1: node 0 pays its 30 min; node 1, interrupted by EC2 within its first hour, pays none.
    assert a1.instance_usd == pytest.approx(0.4 * 30 / 60) and a1.waived_usd == pytest.approx(0.4 * 30 / 60)
    # Attempt 2: node 0 its next 60 min (not its first hour: no waiver), node 2 its 55 min.
    assert a2.instance_usd == pytest.approx(0.4 * 60 / 60 + 0.4 * 55 / 60)
    assert not a2.free_by_first_hour_rule
    # No instance-hour counted twice: node 0's 90 minutes are split between the attempts.
    assert cost.instance_usd == pytest.approx(0.4 * (30 + 60 + 55) / 60)


def test_the_rate_now_counts_every_live_node():
    live = replace(
        recorded(ended=None), nodes=nodes_of({"instance_id": "i-0"}, {"instance_id": "i-1"}, {"instance_id": "i-2"})
    )
    cost = cost_of(view(record(live), instance("running"), None), SPOT, NOW)
    assert cost.current_usd_per_hour == pytest.approx(3 * (0.4 + EBS_PER_HOUR + IPV4_PER_HOUR))
