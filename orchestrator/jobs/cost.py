"""What a job really cost: spot prices integrated over each attempt's running time, its root volume
and public IPv4 address, the on-demand equivalent, savings, the work lost to interruptions, and what
it costs now.

AWS's rules applied (Linux spot):
- The instance is billed per second from `running` (not from the RunInstances call: `pending` is
  free), with a minimum of one minute. One that EC2 interrupts within its first hour is not charged
  at all; one stopped by its user or by itself is.
- The first-hour rule waives instance usage only. The root gp3 volume (GiB-months, prorated) and a
  public IPv4 address ($/h) are charged from the launch, when they are created, to the end, however
  the attempt ended. Data transfer and S3 requests are not counted.

`cost_of` applies them to a job: an attempt runs from when it was first seen `running`
(Attempt.running_at, jobs.state.settle; the launch for records without one) until its recorded end,
or until now while its instance runs, or until its last heartbeat when the instance is gone and no
end was recorded yet. EC2's state reason `Server.SpotInstanceTermination` marks an interruption by
EC2 (the first-hour rule applies). The rest is pure arithmetic on price series (PriceSource.history)
and the list rates of aws.prices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from orchestrator.aws.instances import LIVE, SPOT_TERMINATION
from orchestrator.aws.prices import PricePoint, ebs_gp3_rate, public_ipv4_rate
from orchestrator.jobs.state import eta_left_s, settled
from trainer.job.documents import EndReason
from trainer.job.units import money

if TYPE_CHECKING:
    from orchestrator.aws.prices import PriceSource
    from orchestrator.jobs.state import JobView
    from trainer.job.documents import Attempt

FREE_IF_INTERRUPTED_WITHIN_S = 3600.0
MINIMUM_BILLED_S = 60.0
# EBS prorates a GB-month by the seconds of the calendar month (720 to 744 h); 730 h is the month of
# AWS's own calculator, within 2.5 % of every month.
HOURS_PER_MONTH = 730.0
EBS_FALLBACK_REGION = "us-east-1"  # whose gp3 rate prices a volume in a region the table lacks


@dataclass(frozen=True)
class Extras:
    """What an attempt pays per hour besides its instance, from its launch to its end."""

    ebs_usd_per_hour: float | None = 0.0  # its root volume; None: unknown (the record has no disk size)
    public_ipv4_usd_per_hour: float = 0.0  # its public IPv4 address, if it had one

    @property
    def usd_per_hour(self) -> float:
        return (self.ebs_usd_per_hour or 0.0) + self.public_ipv4_usd_per_hour


@dataclass(frozen=True)
class AttemptCost:
    number: int
    seconds: float  # the instance's billed time: from `running` to the end
    usd: float  # all of it: instance + EBS + public IPv4
    on_demand_usd: float | None  # the same attempt with an on-demand instance (same volume and address)
    free_by_first_hour_rule: bool  # the instance was free: EC2 interrupted it within its first hour
    instance_usd: float
    ebs_usd: float | None  # None: unknown (recorded before spotctl priced the volume)
    public_ipv4_usd: float
    waived_usd: float = 0.0  # the instance usage the first-hour rule waived (what it would have cost)


def integrate(prices: Sequence[PricePoint], start: datetime, end: datetime) -> float:
    """USD for running from `start` to `end` under a price series (each price holds until the next
    change; before the first known change, the first price holds)."""
    if end <= start:
        return 0.0
    if not prices:
        raise ValueError("no price known for this pool")
    points = sorted(prices, key=lambda p: p.at)
    total, now = 0.0, start
    current = next((p.usd_per_hour for p in reversed(points) if p.at <= start), points[0].usd_per_hour)
    for point in points:
        if point.at <= start:
            continue
        if point.at >= end:
            break
        total += (point.at - now).total_seconds() * current / 3600
        now, current = point.at, point.usd_per_hour
    return total + (end - now).total_seconds() * current / 3600


def attempt_cost(
    number: int,
    prices: Sequence[PricePoint],
    start: datetime,
    end: datetime,
    interrupted_by_ec2: bool,
    on_demand_usd_per_hour: float | None = None,
    extras: Extras = Extras(),
    launched: datetime | None = None,
    first_running: datetime | None = None,
) -> AttemptCost:
    """One attempt whose instance ran from `start` (`running`) to `end`; its volume and address exist
    from `launched` (default: `start`) to `end`. `first_running`: when the instance itself started
    running, if before `start` (a node kept from the previous attempt): its minute was billed there, and
    the first-hour rule counts from it."""
    seconds = max(0.0, (end - start).total_seconds())
    held_h = max(0.0, (end - min(launched or start, start)).total_seconds()) / 3600
    ebs = None if extras.ebs_usd_per_hour is None else extras.ebs_usd_per_hour * held_h
    ipv4 = extras.public_ipv4_usd_per_hour * held_h
    besides = (ebs or 0.0) + ipv4  # charged however the attempt ended: the first-hour rule waives instance usage only
    minimum = MINIMUM_BILLED_S if first_running is None else 0.0
    on_demand = (
        None if on_demand_usd_per_hour is None else max(seconds, minimum) * on_demand_usd_per_hour / 3600 + besides
    )
    lived = seconds if first_running is None else max(0.0, (end - first_running).total_seconds())
    free = interrupted_by_ec2 and lived < FREE_IF_INTERRUPTED_WITHIN_S
    billed_until = max(end, start + timedelta(seconds=minimum))  # a started instance bills a minute at least
    usage = integrate(prices, start, billed_until)
    instance = 0.0 if free else usage
    return AttemptCost(
        number, seconds, instance + besides, on_demand, free, instance, ebs, ipv4, waived_usd=usage if free else 0.0
    )


@dataclass(frozen=True)
class JobCost:
    attempts: list[AttemptCost]
    total_usd: float
    on_demand_usd: float | None  # the same running time at on-demand prices, same volumes and addresses
    savings: float | None  # share of the on-demand cost saved, 0..1
    lost_steps: int  # steps trained twice because an interruption came after them and before a checkpoint
    lost_usd: float
    current_usd_per_hour: float | None = (
        None  # what the running attempt costs an hour now (spot + EBS + IPv4; None: nothing runs)
    )
    projected_total_usd: float | None = None  # the cost so far plus the trainer's ETA at that rate
    instance_usd: float = 0.0  # the line items of total_usd
    ebs_usd: float = 0.0
    public_ipv4_usd: float = 0.0
    # The instance usage the first-hour rule waived. While an attempt runs, its usage is counted (a stop
    # or a failure pays it); when EC2 then interrupts it within its first hour, that usage moves here,
    # so total_usd falls by it and total_usd + waived_usd never falls: a view shows both, never a
    # total that drops without a word.
    waived_usd: float = 0.0
    savings_unknown: str | None = (
        None  # why there is no savings figure, e.g. "no on-demand price for g5.xlarge in eu-west-1"
    )
    notes: tuple[str, ...] = field(default=())  # where a figure is an estimate, or leaves something out

    def as_dict(self) -> dict:
        money = lambda v: None if v is None else round(v, 6)  # noqa: E731
        return {
            "total_usd": round(self.total_usd, 6),
            "instance_usd": round(self.instance_usd, 6),
            "ebs_usd": round(self.ebs_usd, 6),
            "public_ipv4_usd": round(self.public_ipv4_usd, 6),
            "on_demand_usd": money(self.on_demand_usd),
            "savings": None if self.savings is None else round(self.savings, 4),
            "savings_unknown": self.savings_unknown,
            "lost_steps": self.lost_steps,
            "lost_usd": round(self.lost_usd, 6),
            "waived_usd": round(self.waived_usd, 6),
            "attempts": [
                {
                    "number": a.number,
                    "seconds": round(a.seconds, 1),
                    "usd": round(a.usd, 6),
                    "instance_usd": round(a.instance_usd, 6),
                    "ebs_usd": money(a.ebs_usd),
                    "public_ipv4_usd": round(a.public_ipv4_usd, 6),
                    "on_demand_usd": money(a.on_demand_usd),
                    "free_by_first_hour_rule": a.free_by_first_hour_rule,
                    "waived_usd": round(a.waived_usd, 6),
                }
                for a in self.attempts
            ],
            "current_usd_per_hour": None if self.current_usd_per_hour is None else round(self.current_usd_per_hour, 6),
            "projected_total_usd": money(self.projected_total_usd),
            "notes": list(self.notes),
        }


def job_cost(
    attempts: list[AttemptCost], steps_reached: Sequence[int | None] = (), resumed_from: Sequence[int | None] = ()
) -> JobCost:
    """Sum the attempts; lost work from the step each attempt reached and the step the next resumed from.

    The steps between where attempt k stopped and where attempt k+1 resumed were paid for twice; their
    cost is attempt k's cost per step (its volume and address only when its instance was free under
    the first-hour rule)."""
    total = sum(a.usd for a in attempts)
    known = [a.on_demand_usd for a in attempts]
    on_demand = None if any(v is None for v in known) or not attempts else sum(known)
    savings = None if not on_demand else 1 - total / on_demand
    lost_steps, lost_usd = 0, 0.0
    for k, attempt in enumerate(attempts[:-1]):
        reached = steps_reached[k] if k < len(steps_reached) else None
        restart = resumed_from[k + 1] if k + 1 < len(resumed_from) else None
        started = (resumed_from[k] if k < len(resumed_from) else None) or 0
        if reached is None or restart is None or reached <= restart:
            continue
        lost = reached - restart
        lost_steps += lost
        done = reached - started
        if done > 0:
            lost_usd += attempt.usd * lost / done
    return JobCost(
        attempts,
        total,
        on_demand,
        savings,
        lost_steps,
        lost_usd,
        instance_usd=sum(a.instance_usd for a in attempts),
        ebs_usd=sum(a.ebs_usd or 0.0 for a in attempts),
        public_ipv4_usd=sum(a.public_ipv4_usd for a in attempts),
        waived_usd=sum(a.waived_usd for a in attempts),
    )


def extras_of(attempt: Attempt, region: str) -> tuple[Extras, list[str]]:
    """An attempt's hourly charges besides its instance, from what its record says it was launched
    with, and a note for each figure that is an estimate or missing."""
    notes = []
    rate = ebs_gp3_rate(region)
    if rate is None:
        rate = ebs_gp3_rate(EBS_FALLBACK_REGION)
        notes.append(
            f"root volumes priced at {EBS_FALLBACK_REGION}'s gp3 rate ({money(rate.usd)}/GiB-month, {rate.as_of}): "
            f"spotctl has no rate for {region}"
        )
    if attempt.disk_gib is None:
        notes.append(f"attempt {attempt.number}: its root volume and public address are not counted (not recorded)")
        return Extras(None, 0.0), notes
    return extras_for(attempt.disk_gib, bool(attempt.public_ip), rate.usd), notes


def extras_for(disk_gib: int, public_ip: bool, gp3_usd_per_gib_month: float) -> Extras:
    """The hourly charges of a root volume of `disk_gib` and, if asked for, a public IPv4 address."""
    ipv4 = public_ipv4_rate().usd if public_ip else 0.0
    return Extras(disk_gib * gp3_usd_per_gib_month / HOURS_PER_MONTH, ipv4)


def spec_extras(disk_gib: int, public_ip: bool, region: str) -> Extras:
    """What a new attempt will pay besides its instance (the launch's compute section), before it starts."""
    rate = ebs_gp3_rate(region) or ebs_gp3_rate(EBS_FALLBACK_REGION)
    return extras_for(disk_gib, public_ip, rate.usd)


def cost_of(view: JobView, prices: PriceSource, now: datetime | None = None) -> JobCost | None:
    if view.record is None or not view.record.attempts:
        return None
    now = now or datetime.now(timezone.utc)
    # Attempts closed as settle would close them (a no-op after watch's own settle): an ended attempt
    # nobody recorded yet has its end from EC2, instead of dropping out of the sum.
    view = settled(view, now)
    record = view.record
    instances = view.instances or ({record.attempts[-1].number: view.instance} if view.instance else {})
    costs, counted, notes, savings_unknown = [], [], [], None
    for attempt in record.attempts:
        launched = datetime.fromisoformat(attempt.launched_at) if attempt.launched_at else None
        instance = instances.get(attempt.number)
        end = _end_of(attempt, instance, attempt is record.attempts[-1], view, now)
        if launched is None or end is None:
            continue
        # Billing starts at `running`; a record that never saw it (older spotctl, nobody watching) bills
        # from the launch: a little high, never low.
        if attempt.running_at:
            start = min(max(datetime.fromisoformat(attempt.running_at), launched), end)
        elif instance is not None and instance.state == "pending" and not attempt.ended_at:
            start = end  # not running yet: nothing of the instance is billed so far (its minute will be)
        else:
            start = launched
        # EC2's reason once it has one; until then the trainer's word that a spot notice came.
        reason = attempt.state_reason or (instance.reason_code if instance else None)
        by_ec2 = reason == SPOT_TERMINATION if reason else attempt.end_reason == EndReason.INTERRUPTED
        extras, said = extras_of(attempt, record.region)
        notes += [n for n in said if n not in notes]
        if attempt.nodes:
            costs.append(_nodes_cost(attempt, prices, start, end, by_ec2, extras))
        else:
            history = prices.history((attempt.instance_type, attempt.zone), start, end) or [
                _launch_price(attempt, start)
            ]
            costs.append(
                attempt_cost(attempt.number, history, start, end, by_ec2, attempt.on_demand_price, extras, launched)
            )
        counted.append(attempt)
        if attempt.on_demand_price is None and savings_unknown is None:
            savings_unknown = f"no on-demand price for {attempt.instance_type} in {record.region}"
    total = job_cost(costs, [a.end_step for a in counted], [a.start_step for a in counted])
    current = record.attempts[-1]
    running = view.instance is not None and view.instance.state in LIVE
    rate = None
    if running:
        spot = prices.spot_prices([(current.instance_type, current.zone)]).get(
            (current.instance_type, current.zone), current.spot_price
        )
        rate = (spot + extras_of(current, record.region)[0].usd_per_hour) * live_nodes(current)
    eta = eta_left_s(view.heartbeat, now) if view.heartbeat else None
    projected = total.total_usd + eta / 3600 * rate if running and eta is not None and rate is not None else None
    return replace(
        total,
        current_usd_per_hour=rate,
        projected_total_usd=projected,
        savings_unknown=savings_unknown if total.savings is None else None,
        notes=tuple(notes),
    )


def live_nodes(attempt: Attempt) -> int:
    """The machines an attempt pays for now: every node not yet ended (1 for a single instance)."""
    if not attempt.nodes:
        return 1
    return sum(1 for node in attempt.nodes if node.ended_at is None) or len(attempt.nodes)


def _nodes_cost(
    attempt: Attempt, prices: PriceSource, start: datetime, end: datetime, by_ec2: bool, extras: Extras
) -> AttemptCost:
    """A multi-node attempt: each node billed over its own part of the attempt (a replaced node from
    its launch, a kept one from `since`), to its own end or the attempt's; the sum of them as one
    attempt's cost. A kept node's minute and first hour count from its instance's first `running`."""
    parts = []
    for node in attempt.nodes or []:
        node_end = min(datetime.fromisoformat(node.ended_at), end) if node.ended_at else end
        since = datetime.fromisoformat(node.since or node.launched_at) if (node.since or node.launched_at) else start
        running = datetime.fromisoformat(node.running_at) if node.running_at else None
        node_start = min(max(since, running or start), node_end)
        first = running if node.kept and running is not None else None
        interrupted = node.state_reason == SPOT_TERMINATION if node.state_reason else (by_ec2 and node.lost)
        history = prices.history((node.instance_type, node.zone), node_start, node_end) or [
            PricePoint(node_start, node.spot_price)
        ]
        parts.append(
            attempt_cost(
                attempt.number,
                history,
                node_start,
                node_end,
                interrupted,
                attempt.on_demand_price,
                extras,
                since,
                first_running=first,
            )
        )
    ebs = [p.ebs_usd for p in parts]
    on_demand = [p.on_demand_usd for p in parts]
    return AttemptCost(
        attempt.number,
        max((p.seconds for p in parts), default=0.0),
        sum(p.usd for p in parts),
        None if any(v is None for v in on_demand) else sum(on_demand),
        any(p.free_by_first_hour_rule for p in parts),
        sum(p.instance_usd for p in parts),
        None if any(v is None for v in ebs) else sum(ebs),
        sum(p.public_ipv4_usd for p in parts),
        waived_usd=sum(p.waived_usd for p in parts),
    )


def _end_of(attempt, instance, is_current: bool, view: JobView, now: datetime) -> datetime | None:
    if attempt.ended_at:
        return datetime.fromisoformat(attempt.ended_at)
    if instance is not None and instance.state in ("pending", "running", "shutting-down"):
        return now  # still billed
    beat = view.heartbeat
    if is_current and beat and beat.updated_at:
        return datetime.fromisoformat(beat.updated_at)
    return None


def _launch_price(attempt, start: datetime) -> PricePoint:
    """No history for the pool (a market that forgot it, or older than its 90 days): the price recorded at launch."""
    return PricePoint(start, attempt.spot_price)
