"""What `status`, `watch` and the budget messages print: one money format, one ETA, a cost that never
falls without a word, progress while the next attempt starts, settled attempts, steady and whole
columns, plurals (issue 16, bugs 3, 10, 11 and 13)."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import timedelta

from rich.console import Console

from orchestrator.aws.prices import FixedPrices
from orchestrator.cli import render
from orchestrator.cli.status import job_panel, list_row, progress_text
from orchestrator.cli.watch import table as watch_table
from orchestrator.jobs.cost import AttemptCost, JobCost, cost_of
from orchestrator.jobs.policy import Action, decide
from orchestrator.jobs.status import status_document
from orchestrator.jobs.watch import JobRow
from tests.unit.jobs import NOW, SPEC, attempt, beat, cost, instance, record, view
from trainer.job.units import amounts, money, plural, price, rate


def printed(renderable, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, highlight=False).print(renderable)
    return out.getvalue()


# ----------------------------------------------------------------------------------- bug 3: money
def test_money_shows_the_precision_it_needs_and_the_same_figure_prints_the_same():
    assert [money(v) for v in (0, 0.004, 0.0031, 0.00395, 0.0404, 0.7378, 0.5, 0.9996, 12.5, 1234.5, None)] == [
        "$0",
        "$0.004",
        "$0.0031",
        "$0.00395",
        "$0.0404",
        "$0.738",
        "$0.50",
        "$1.00",
        "$12.50",
        "$1,234.50",
        "-",
    ]
    assert amounts(0.0039951, 0.004) == ("$0.003995", "$0.004")  # told apart where they would read the same
    assert amounts(0.004, 0.004, 4.9) == ("$0.004", "$0.004", "$4.90")
    assert (price(0.21), rate(0.1752), rate(None)) == ("$0.2100", "$0.1752/h", "-")
    assert render.money is money  # the CLI's money is this one


def test_a_budget_under_a_cent_reads_as_itself_not_zero():
    running = view(record(attempt(), budget=0.004), instance(), beat())
    decision = decide(running, SPEC, cost(0.0039, per_hour=0.4), poll_s=10.0, now=NOW)
    assert decision.action is Action.STOP
    assert decision.reason.startswith("cost $0.0039 + $") and decision.reason.endswith("would pass the budget $0.004")
    spent = view(record(attempt(end="interrupted", ended=60), budget=0.004), instance("terminated"))
    decision = decide(spent, SPEC, cost(0.004), now=NOW)
    assert decision.reason == "cost $0.004 has reached the budget $0.004"


# ----------------------------------------------------------------------------------- bug 10
def failover():
    """One job's views as watch sees them across a failover: running, interrupted, the next attempt starting."""
    first = replace(attempt(1, launched=900), running_at=None, disk_gib=100, public_ip=True)
    yield view(record(first), instance(), beat(step=40))
    yield view(record(first), instance(), beat(step=48, phase="interrupted"))
    ended = replace(first, end_reason="interrupted", end_step=48)
    second = replace(attempt(2, ("g5.xlarge", "us-east-1b"), launched=30), disk_gib=100, public_ip=True)
    yield view(record(ended, second), instance("shutting-down", "Server.SpotInstanceTermination"), beat(step=48))
    gone = instance("terminated", "Server.SpotInstanceTermination", transition=None)
    both = view(record(ended, second), instance("pending", number=2), beat(attempt=2, phase="starting"))
    both.instances = {1: gone, 2: both.instance}
    yield both


def test_a_failovers_cost_never_falls_without_a_word():
    prices = FixedPrices({("g5.xlarge", "us-east-1a"): 0.4, ("g5.xlarge", "us-east-1b"): 0.5}, {"g5.xlarge": 1.0})
    seen = []
    for step in failover():
        figures = cost_of(step, prices, NOW)
        seen.append((figures.total_usd + figures.waived_usd, [a.number for a in figures.attempts]))
    gross = [total for total, _ in seen]
    assert gross == sorted(gross), seen  # what was charged plus what the first-hour rule waived
    assert all(1 in numbers for _, numbers in seen)  # attempt 1 never drops out of the sum while it is replaced


def test_an_unwatched_attempts_end_still_counts_in_its_cost():
    # EC2 took attempt 1; nobody settled it (no watch): status prices it from EC2's end, not not at all.
    left = view(
        record(attempt(1, launched=900), attempt(2, launched=30)),
        instance(number=2),
        beat(attempt=2, step=5),
    )
    left.instances = {
        1: instance("terminated", "Client.UserInitiatedShutdown", 1, "User initiated (2026-12-01 11:55:00 GMT)"),
        2: left.instance,
    }
    figures = cost_of(left, FixedPrices({("g5.xlarge", "us-east-1a"): 0.4}, {}), NOW)
    assert [a.number for a in figures.attempts] == [1, 2] and figures.attempts[0].seconds == 600.0
    assert left.record.attempts[0].ended_at is None  # read, not written


def test_one_eta_in_every_view_as_of_now():
    # The heartbeat said 120.5 s left, 5 s ago: the list and the detail both say 115.5 s.
    running = view(record(attempt()), instance(), beat(step=40, total_steps=96, epoch=2, epochs=8, eta_s=120.5))
    document = status_document(running, now=NOW)
    assert document["progress"]["eta_s"] == 115.5
    assert progress_text(document) == "epoch 2/8 step 40/96, ETA 1m 55s"
    assert status_document(running, now=NOW + timedelta(seconds=200))["progress"]["eta_s"] == 0.0  # never negative


def test_progress_while_the_next_attempt_starts_says_where_it_resumes():
    ended = attempt(1, end="interrupted", ended=60)
    old_beat = beat(attempt=1, phase="interrupted", step=48, last_checkpoint_step=40, last_checkpoint_age_s=1)
    starting = status_document(view(record(ended, attempt(2, launched=30)), instance("pending", number=2), old_beat))
    assert progress_text(starting) == "starting attempt 2 at step 40"
    new_beat = beat(attempt=2, phase="starting", resumed_from_step=40)
    loading = status_document(view(record(ended, attempt(2, launched=30)), instance(number=2), new_beat))
    assert progress_text(loading) == "starting attempt 2 at step 40"
    claimed = status_document(view(record(ended, attempt(2, instance_id=None)), None, None))
    assert progress_text(claimed) == "starting attempt 2"


def test_watch_columns_keep_their_widths_from_poll_to_poll():
    launching = JobRow(view(record(attempt(1, instance_id=None)), None, None))
    running = JobRow(
        view(record(attempt()), instance(), beat(step=1000, total_steps=2000, epoch=10, epochs=20, gpu_util_pct=97.0)),
        cost(0.0123),
    )
    header = [printed(watch_table({"quickstart-261125-fbe7": row})).splitlines()[0] for row in (launching, running)]
    assert header[0].rstrip() == header[1].rstrip()  # the last column (health) may grow to the right


# ----------------------------------------------------------------------------------- bug 11
def test_status_shows_an_unwatched_attempt_as_ended_without_writing():
    left = view(
        record(attempt()),
        instance("terminated", "Server.SpotInstanceTermination", transition="(2026-12-01 11:50:00 GMT)"),
        beat(step=40),
    )
    document = status_document(left)
    assert (document["attempts"][0]["end_reason"], document["attempts"][0]["ended_at"]) == (
        "interrupted",
        "2026-12-01T11:50:00+00:00",
    )
    assert left.record.attempts[0].end_reason is None  # status writes nothing


# ----------------------------------------------------------------------------------- bug 13 and tables
def test_plurals():
    assert (plural(1, "job"), plural(2, "job"), plural(0, "step"), plural(1, "class", "classes")) == (
        "1 job",
        "2 jobs",
        "0 steps",
        "1 class",
    )


def panel(document: dict) -> str:
    return printed(job_panel(document))


def test_a_cost_of_nothing_is_no_charge_not_a_saving():
    free = JobCost(
        [AttemptCost(1, 600.0, 0.0, 0.16, True, 0.0, 0.0, 0.0, 0.04)], 0.0, 0.16, 1.0, 1, 0.0, waived_usd=0.04
    )
    text = panel(status_document(view(record(attempt(end="interrupted", ended=60))), free, with_cost=True))
    assert "cost: no charge yet" in text and "below on-demand" not in text
    assert "not charged: $0.04 of instance time EC2 interrupted within its first hour" in text
    assert "work lost to interruptions: 1 step redone" in text


def test_ids_are_never_cut_and_times_are_ages():
    document = status_document(view(record(attempt()), instance(), beat(step=40)))
    document["job_id"] = "quickstart-261125-fbe7"
    for width in (60, 80):
        narrow = printed(
            render.table(["job", "state", "instance", "progress"], [list_row(document)[:4]], ids=("job",)), width
        )
        assert "quickstart-261125-fbe7" in narrow, narrow
    assert render.age(document["created_at"], NOW) == "1h 00m ago"
    assert render.age((NOW - timedelta(seconds=190)).isoformat(), NOW) == "3m 10s ago"
    text = panel(document)
    assert "created " in text and " ago" in text.split("created ")[1].splitlines()[0]


def test_the_attempts_table_has_each_attempts_cost():
    figures = JobCost([AttemptCost(1, 600.0, 0.0734, 0.16, False, 0.07, 0.0034, 0.0)], 0.0734, 0.16, 0.54, 0, 0.0)
    text = panel(status_document(view(record(attempt(end="terminated", ended=60))), figures, with_cost=True))
    header = next(line for line in text.splitlines() if line.startswith("#"))
    assert header.split() == [
        "#",
        "type",
        "zone",
        "spot",
        "$/h",
        "instance",
        "started",
        "ended",
        "cost",
        "end",
        "/",
        "state",
    ]
    row = next(line for line in text.splitlines() if line.startswith("1 "))
    assert "$0.4000" in row and "$0.0734" in row and "i-1" in row


def test_a_finished_job_shows_no_price_per_hour():
    done = status_document(
        view(record(attempt(end="succeeded", ended=60)), instance("terminated", "Client.InstanceInitiatedShutdown"))
    )
    running = status_document(view(record(attempt()), instance(), beat(step=1)))
    assert list_row(done)[3] == "g5.xlarge us-east-1a"
    assert list_row(running)[3] == "g5.xlarge us-east-1a $0.4000/h"
