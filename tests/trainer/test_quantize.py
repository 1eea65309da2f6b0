"""int8's speed against fp32: interleaved timings and the decision on what they can say (pure, on
given timings), so the manifest never carries a precise-looking random number."""

from __future__ import annotations

import pytest

from trainer import quantize
from trainer.quantize import MIN_PAIRS, paired_timings, speedup_estimate


def test_steady_pairs_give_their_median_ratio_and_spread():
    fp32 = [10.0, 10.2, 9.8, 10.1, 9.9, 10.0, 10.3, 9.7]
    int8 = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert speedup_estimate(fp32, int8) == {
        "pairs": 8,
        "ratio": 5.0,
        "note": None,
        "iqr": [4.94, 5.06],
        "range": [4.85, 5.15],
    }


def test_a_steady_slowdown_is_a_ratio_below_one():
    estimate = speedup_estimate([1.0] * 8, [1.4, 1.45, 1.4, 1.38, 1.42, 1.4, 1.41, 1.39])
    assert estimate["ratio"] == 0.71 and estimate["note"] is None


def test_pairs_on_both_sides_of_one_cannot_tell_faster_from_slower():
    """The five runs of the issue, as pairs: 28.4x, 1.0x, 0.7x, 1.3x, 5.1x."""
    fp32 = [28.4, 1.0, 0.7, 1.3, 5.1, 0.8, 3.0, 1.1]
    estimate = speedup_estimate(fp32, [1.0] * 8)
    assert estimate["ratio"] is None and estimate["range"] == [0.7, 28.4]
    assert estimate["note"] == "per-pair ratios 0.95x to 3.52x (interquartile) lie on both sides of 1"


def test_a_spread_wider_than_the_threshold_is_not_a_measurement():
    fp32 = [2.0, 8.0, 3.0, 7.0, 2.5, 6.0, 4.0, 9.0]  # all faster, but from 2x to 9x
    estimate = speedup_estimate(fp32, [1.0] * 8)
    assert estimate["ratio"] is None and estimate["iqr"] == [2.88, 7.25]
    assert estimate["note"] == (
        "per-pair ratios 2.88x to 7.25x (interquartile) spread 88% of their median, more than 50%: "
        "the CPU was too busy to tell"
    )


def test_too_few_pairs_say_so():
    estimate = speedup_estimate([2.0] * (MIN_PAIRS - 1), [1.0] * (MIN_PAIRS - 1))
    assert estimate == {"pairs": MIN_PAIRS - 1, "ratio": None, "note": f"too few timings (5 pairs, {MIN_PAIRS} needed)"}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_timings_interleave_after_a_warm_up_and_stop_at_the_budget():
    clock, calls = FakeClock(), []

    def model(name: str, seconds: float):
        def call(batch):
            calls.append(name)
            clock.now += seconds

        return call

    fp32_s, int8_s = paired_timings(
        model("fp32", 1.0), model("int8", 0.25), None, max_pairs=50, budget_s=9.0, clock=clock
    )
    assert calls[: 2 * quantize.WARMUP_CALLS] == ["fp32", "int8"] * quantize.WARMUP_CALLS
    timed = calls[2 * quantize.WARMUP_CALLS :]
    assert timed[:4] == ["fp32", "int8", "int8", "fp32"]  # the order alternates: drift meets both
    assert len(fp32_s) == len(int8_s) == 8  # 1.25 s a pair: the pair that passed 9 s is the last
    assert fp32_s == [1.0] * 8 and int8_s == [0.25] * 8


@pytest.mark.parametrize("budget_s", [0.0, 100.0])
def test_timings_take_at_least_min_pairs_and_at_most_max_pairs(budget_s):
    clock = FakeClock()

    def call(batch):
        clock.now += 1.0

    fp32_s, _ = paired_timings(call, call, None, max_pairs=10, budget_s=budget_s, clock=clock)
    assert len(fp32_s) == (MIN_PAIRS if budget_s == 0 else 10)
