"""Recovering a job: recording how its attempts ended (`settle_view`), starting its next attempt on the
pool the policy orders first (`start_next`), and `spotctl resume` (`resume`). What to do and when is
jobs.policy's; this module does it.
"""

from __future__ import annotations

from datetime import datetime

from orchestrator.aws.clients import Cloud
from orchestrator.aws.ec2 import describe_image, resolve_ami
from orchestrator.aws.offers import find_offers
from orchestrator.aws.prices import Pool, PriceSource
from orchestrator.errors import UserError
from orchestrator.jobs.cost import cost_of
from orchestrator.jobs.launch import NoCapacity, start_attempt
from orchestrator.jobs.nodes import none_lost_yet
from orchestrator.jobs.policy import failover_order
from orchestrator.jobs.record import JobStore, Unreadable
from orchestrator.jobs.state import JobView, settle, unfinished_claim
from orchestrator.jobs.trust import check_launch_inputs
from trainer.job import layout
from trainer.job.documents import Attempt, Final, JobRecord, JobState
from trainer.job.problems import Problem
from trainer.job.spec import JobSpec
from trainer.job.spec_file import SpecError, parse_spec
from trainer.job.units import amounts, plural


def job_spec(store: JobStore, job_id: str) -> JobSpec:
    """The spec the job was launched with (jobs/<id>/job.yaml); `Unreadable` when it is gone or is no
    valid job file (nothing of the job can be started without it)."""
    url = store.url(job_id, layout.JOB_FILE)
    body = store.object_of(job_id, layout.JOB_FILE)
    if body is None:
        raise Unreadable(job_id, Problem(url, "missing: the job file spotctl launch wrote is gone"))
    try:
        return parse_spec(body.decode("utf-8"), source=url)
    except UnicodeDecodeError as exc:
        raise Unreadable(job_id, Problem(url, f"not UTF-8 text (at byte {exc.start})")) from None
    except SpecError as exc:
        first = exc.problems[0] if exc.problems else None
        said = f"line {first.line}: " if first and first.line else ""
        said += f"{first.path}: {first.message}" if first and first.path else (first.message if first else "")
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        raise Unreadable(job_id, Problem(url, " ".join(f"not a valid job file: {said}{more}".split()))) from None


def start_next(
    view: JobView,
    spec: JobSpec,
    store: JobStore,
    cloud: Cloud,
    prices: PriceSource,
    avoid: dict[Pool, datetime] | None = None,
) -> Attempt | None:
    """Start the job's next attempt on the best pool by failover order; None if another orchestrator
    claimed it first. Raises launch.NoCapacity when EC2 refuses every offer."""
    # record.json is in the bucket: the AMI and wheel it names are checked, not trusted, before anything
    # reads them. Offers are then filtered by that AMI (the one the attempt boots), not by what
    # compute.ami resolves to now.
    check_launch_inputs(cloud, spec, view.record, resolve_ami)
    image = describe_image(cloud, view.record.ami)
    offers = find_offers(cloud, spec.compute, prices, image)
    if not offers.ranked:  # e.g. every pool's price is above max_price_per_hour now: it may come down
        raise NoCapacity(
            f"no spot offer matches the job's compute section now ({plural(len(offers.dropped), 'pool')} dropped; `spotctl offers` on its job.yaml shows why)"
        )
    return start_attempt(
        view.record, spec, failover_order(offers.ranked, view.record, avoid), cloud, store, image=image
    )


def set_aside_final(store: JobStore, view: JobView) -> None:
    """Keep the previous attempt's final word as status/final-attempt-K.json: a new attempt of a
    stopped or failed job must not read as already over."""
    body = store.read_bytes(view.job_id, layout.FINAL)
    if body is None:
        return
    said = Final.parse(body)
    number = (said.attempt if said else None) or (
        view.record.current.number if view.record and view.record.current else 0
    )
    store.write(view.job_id, layout.final_of(number), body)
    store.delete(view.job_id, layout.FINAL)


def settle_view(store: JobStore, view: JobView) -> None:
    """Record how the job's ended attempts ended (jobs.state.settle), if that changed."""
    if view.record is None:
        return
    if settle(view.record, view.instances or {}, view.final, view.heartbeat, crash=view.crash, machines=view.machines):
        written = store.update_record(
            view.job_id,
            lambda r: settle(
                r, view.instances or {}, view.final, view.heartbeat, crash=view.crash, machines=view.machines
            ),
        )
        if written is not None:
            view.record = written


def resume(
    store: JobStore, view: JobView, cloud: Cloud, prices: PriceSource, force: bool = False, budget: float | None = None
) -> Attempt:
    """`spotctl resume`: start attempt k+1 of a job that is not running and not done."""
    settle_view(store, view)
    state, job_id = view.state, view.job_id
    if state.resume_refusal and not (state is JobState.LAUNCHING and unfinished_claim(view.record)):
        current = view.record.current
        where = (
            f" (attempt {current.number} on {current.instance_id})"
            if state is not JobState.SUCCEEDED and current
            else ""
        )
        raise UserError(
            f"job {job_id}: not resumed, {state.resume_refusal}{where}",
            "`spotctl status JOB` shows it; `spotctl stop JOB` stops it",
        )
    if state is JobState.CANCELLED and not force:
        raise UserError(
            f"job {job_id}: not resumed, it was cancelled (spotctl stop)",
            "`spotctl resume JOB --force` continues it from its last checkpoint",
        )
    if state is JobState.BUDGET_EXCEEDED:
        cost = cost_of(view, prices)
        spent = cost.total_usd if cost else 0.0
        if budget is None or budget <= spent:
            spent_text, budget_text = amounts(spent, view.record.budget_usd or 0.0)
            raise UserError(
                f"job {job_id}: not resumed, it has spent {spent_text} of its budget {budget_text}",
                f"`spotctl resume JOB --budget NEW` with NEW above {spent_text}",
            )
    if none_lost_yet(view.record.current, view.machines):
        # A multi-node attempt is replaced node by node, and which node goes is not known while every
        # machine still runs (jobs.nodes): nothing to start yet, so nothing is reopened or set aside.
        current = view.record.current
        machines = ", ".join(n.instance_id or "?" for n in sorted(current.nodes or [], key=lambda n: n.rank))
        raise UserError(
            f"job {job_id}: not resumed, it is running (attempt {current.number} on {machines})",
            "every node's machine still runs: `spotctl resume JOB` again once one is gone (a spot notice's goes "
            "within two minutes); `spotctl status JOB` shows it; `spotctl stop JOB` stops it",
        )
    spec = job_spec(store, job_id)

    def reopen(record: JobRecord) -> None:
        record.cancelled_at = record.outcome = record.outcome_reason = record.stop_requested_at = None
        if budget is not None:
            record.budget_usd = budget

    view.record = store.update_record(job_id, reopen)
    store.delete(job_id, layout.CONTROL_STOP)  # or the trainer would stop again at once
    set_aside_final(store, view)
    view.final = None
    attempt = start_next(view, spec, store, cloud, prices)
    if attempt is None:
        raise UserError(
            f"job {job_id}: another spotctl is starting its next attempt right now", "`spotctl status JOB` shows it"
        )
    return attempt
