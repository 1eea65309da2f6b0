"""How both planes write numbers for a person: money, prices per hour and counts with their noun.

One definition each, so the same figure prints the same in every message, table and log line
(`$0.003` in one place and `$0.0031` in another for one amount is how a reader learns to distrust
both). Documents (`--json`, heartbeats) keep the raw numbers; these are for text only.
"""

from __future__ import annotations

import math

SIGNIFICANT = 3  # digits kept below $1: $0.738, $0.0404, $0.004
MAX_SIGNIFICANT = 6  # `amounts` goes this far to tell two figures apart
RATE_DECIMALS = 4  # spot prices are quoted to the 1/100 of a cent per hour


def money(usd: float | None, significant: int = SIGNIFICANT) -> str:
    """$12.35 from $1 up; below that `significant` digits, trailing zeros dropped down to cents ($0.50,
    $0.004, $0.00395); $0 for nothing; "-" for unknown."""
    if usd is None:
        return "-"
    sign, usd = ("-" if usd < 0 else ""), abs(usd)
    if usd == 0:
        return "$0"
    if round(usd, 2) >= 1:
        return f"{sign}${usd:,.2f}"
    decimals = max(2, significant - 1 - math.floor(math.log10(usd)))
    text = f"{usd:.{decimals}f}"
    if round(float(text), 2) >= 1:  # 0.9996 rounds up to a dollar: cents, as any dollar amount
        return f"{sign}${usd:,.2f}"
    whole, fraction = text.split(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{sign}${whole}.{fraction}"


def amounts(*usd: float | None) -> tuple[str, ...]:
    """The amounts of one message, each as `money` writes it, with more digits (up to MAX_SIGNIFICANT)
    only where two different amounts would otherwise read the same ("cost $0.004 would pass the
    budget $0.004")."""
    for significant in range(SIGNIFICANT, MAX_SIGNIFICANT + 1):
        texts = tuple(money(v, significant) for v in usd)
        if all(texts[i] != texts[j] or usd[i] == usd[j] for i in range(len(usd)) for j in range(i)):
            return texts
    return texts


def price(usd_per_hour: float | None) -> str:
    """A price per hour without its unit, for a `$/h` column: $0.2100 (spot prices move in hundredths
    of a cent)."""
    if usd_per_hour is None:
        return "-"
    return "$0" if usd_per_hour == 0 else f"${usd_per_hour:,.{RATE_DECIMALS}f}"


def rate(usd_per_hour: float | None) -> str:
    """A price per hour in a sentence: $0.2100/h."""
    return "-" if usd_per_hour is None else f"{price(usd_per_hour)}/h"


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 job`, `2 jobs`, `0 jobs`; `many` for an irregular plural (`plural(n, "class", "classes")`)."""
    return f"{count} {word if count == 1 else many or word + 's'}"
