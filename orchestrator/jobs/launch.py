"""Launching: from a validated job spec to attempt 1 running on the best spot offer.

`plan_launch` does everything that costs nothing (offers, AMI, the wheel, user-data); `launch` then
writes the job's files and starts the instance, moving down the ranked offers while EC2 says a pool
has no capacity or the price is too low. `start_attempt` is the part shared with resume/watch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import botocore.exceptions

from orchestrator import __version__
from orchestrator.aws import infra, placement
from orchestrator.aws.amis import Image
from orchestrator.aws.clients import Cloud, ErrorKind, as_user_error, classify, describe, error_code
from orchestrator.aws.ec2 import (
    describe_image,
    describe_instance,
    live_instances,
    machines_of,
    node_machines,
    resolve_ami,
    retag_attempt,
    run_instance,
    terminate,
)
from orchestrator.aws.offers import Offer, Offers, find_offers, summarize_drops
from orchestrator.aws.prices import PriceSource
from orchestrator.aws.quotas import SpotQuota, spot_quota_of
from orchestrator.errors import UserError
from orchestrator.jobs import nodes as node_loss
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.state import stale_claim
from orchestrator.jobs.targets import store_targets
from orchestrator.jobs.userdata import Bootstrap, render
from orchestrator.jobs.wheel import build_wheel
from trainer.job import catalog, layout
from trainer.job.documents import Attempt, JobRecord, JobState, Node, now_iso
from trainer.job.rendezvous import plan_document, same_plan
from trainer.job.spec import ComputeSpec, JobSpec, is_weights_name
from trainer.job.spec_file import dump_spec
from trainer.job.storage import file_sha256

log = logging.getLogger(__name__)


@dataclass
class Plan:
    spec: JobSpec
    job_id: str
    offers: Offers
    ami: str
    wheel: Path
    wheel_sha256: str
    wheel_url: str
    user_data: str

    @property
    def best(self) -> Offer:
        return self.offers.ranked[0]


def new_job_id(name: str) -> str:
    """`<name>-<yymmdd>-<4 hex>`: readable, sortable by day, unique enough for one bucket."""
    return f"{name}-{datetime.now(timezone.utc):%y%m%d}-{secrets.token_hex(2)}"


def check_reachable_from_instance(spec: JobSpec, deployed: infra.Deployed | None = None) -> None:
    """Everything the instance reads must be a URL it can reach, not a path on this machine; and, for a
    job run with the `deployed` stack's role, under what that role may read."""
    if spec.is_local:
        raise UserError(
            f"storage is a local folder ({spec.storage}); an instance cannot write there",
            "use s3://bucket/prefix, or train here with `python -m trainer run --job FILE`",
        )
    if not spec.compute.instance_profile:
        raise UserError(
            "compute.instance_profile is not set: the instance would have no access to the job's storage",
            "run `spotctl infra deploy` once (job files then default to the profile it creates), or name an instance profile that can read and write under `storage`",
        )
    for field, value in (
        ("train.data.train", spec.train.data.train),
        ("train.data.val", spec.train.data.val),
        ("train.model.weights", spec.train.model.weights),
    ):
        if (
            value
            and not (field.endswith("weights") and is_weights_name(value))
            and urlparse(value).scheme in ("", "file")
        ):
            raise UserError(
                f"{field} is a local path ({value}); the instance cannot read it",
                "upload it (e.g. `aws s3 sync DIR s3://bucket/datasets/NAME`) and give its s3:// URL",
            )
    for warning in infra.data_outside_role(spec, deployed):
        log.warning("warning: %s", warning)


SPOT_NOTICE_S = 120.0  # EC2's two-minute warning: the save on the notice must be up before it ends


def checkpoint_bytes(spec: JobSpec) -> int | None:
    """About what one checkpoint of the job weighs: fp32 weights, plus the optimizer's state per
    weight (SGD momentum 1, AdamW 2). None: a model the catalog does not know."""
    info = catalog.load().get(spec.train.model.name)
    if info is None:
        return None
    optimizer = spec.train.optimizer
    slots = 2 if optimizer.name == "adamw" else (0 if optimizer.momentum == 0 else 1)
    return info.num_params * 4 * (1 + slots)


def save_time_notes(spec: JobSpec, offers: list[Offer]) -> list[str]:
    """A warning for each instance type whose baseline bandwidth would take more than half the spot
    notice to upload the checkpoint: the save on the notice could then be cut off."""
    size = checkpoint_bytes(spec)
    notes, seen = [], set()
    for offer in offers:
        gbps, name = offer.instance.network_gbps, offer.instance.name
        if size is None or not gbps or name in seen:
            continue
        seen.add(name)
        seconds = size * 8 / (gbps * 1e9)
        if seconds > SPOT_NOTICE_S / 2:
            notes.append(
                f"{name}: a checkpoint of {spec.train.model.name} (~{size / 1e9:.1f} GB) takes ~{seconds:.0f}s to upload "
                f"at its {gbps:g} Gbit/s baseline, more than half the {SPOT_NOTICE_S:.0f}s spot notice: the save on "
                "the notice may not finish; checkpoint more often (train.checkpoint.every_seconds) or choose a type with more bandwidth"
            )
    return notes


def nodes_notes(spec: JobSpec, offers: list[Offer]) -> list[str]:
    """compute.nodes > 1: each type that cannot join a cluster placement group (its nodes are then
    placed anywhere in the zone), and each with EFA that spotctl does not use yet."""
    nodes, notes, seen = spec.compute.nodes, [], set()
    for offer in offers:
        if nodes < 2 or offer.instance.name in seen:
            continue
        seen.add(offer.instance.name)
        if not offer.instance.cluster_placement:
            notes.append(
                f"{offer.instance.name} cannot join a cluster placement group: its {nodes} nodes share a zone, not a rack"
            )
        efa = placement.efa_note(nodes, offer.instance)
        if efa:
            notes.append(efa)
    return notes


def plan_launch(spec: JobSpec, cloud: Cloud, prices: PriceSource, job_id: str | None = None) -> Plan:
    # The deployed stack describes an AWS account; a cloud at an endpoint (the local one) is another.
    check_reachable_from_instance(spec, None if cloud.endpoint else infra.read_profile())
    job_id = job_id or new_job_id(spec.name)
    image = describe_image(cloud, spec.compute.ami)
    offers = find_offers(cloud, spec.compute, prices, image)
    offers.notes.extend(save_time_notes(spec, offers.ranked))
    offers.notes.extend(nodes_notes(spec, offers.ranked))
    if not offers.ranked:
        cap = (
            f" under max_price_per_hour ${spec.compute.max_price_per_hour:g}" if spec.compute.max_price_per_hour else ""
        )
        cheapest = ""
        if offers.over_cap:
            (name, zone), price = min(offers.over_cap.items(), key=lambda item: item[1])
            cheapest = f"; the cheapest is {name} in {zone} at ${price:.4f}/h"
        unmatched = (
            f"; compute.gpu dropped {len(offers.unmatched)} more types: {summarize_drops(offers.unmatched)}"
            if offers.unmatched
            else ""
        )
        raise UserError(
            f"no spot offer{cap} for this job ({len(offers.dropped)} pools dropped{cheapest}){unmatched}",
            "raise compute.max_price_per_hour or allow more instance types or zones; `spotctl offers JOB.yaml` lists them",
        )
    wheel = build_wheel()
    digest = file_sha256(wheel)
    wheel_url = f"{spec.storage.rstrip('/')}/{layout.wheel_key(digest, wheel.name)}"
    return Plan(spec, job_id, offers, image.id, wheel, digest, wheel_url, bootstrap_script(spec, job_id, 1, wheel_url))


def bootstrap_script(spec: JobSpec, job_id: str, attempt: int, wheel_url: str, node_rank: int = 0) -> str:
    return render(
        Bootstrap(
            job_id,
            attempt,
            spec.region,
            layout.job_url(spec.storage, job_id),
            layout.job_prefix(spec.storage, job_id),
            wheel_url,
            __version__,
            layout.wheel_sha256(wheel_url) or "",  # the bootstrap checks the wheel against it
            node_rank=node_rank,
            nodes=spec.compute.nodes,
        )
    )


def launch(plan: Plan, cloud: Cloud, store: JobStore) -> JobRecord:
    """Upload the wheel and the job's files, then start attempt 1."""
    store.check()
    store.upload_wheel(plan.wheel, plan.wheel_sha256)  # content-addressed: an unchanged spotctl is uploaded once
    record = JobRecord(
        plan.job_id,
        plan.spec.name,
        plan.spec.region,
        store.root,
        store.url(plan.job_id, layout.JOB_FILE),
        plan.wheel_url,
        plan.ami,
        budget_usd=plan.spec.budget.max_cost_usd,
    )
    try:
        store.write(plan.job_id, layout.JOB_FILE, dump_spec(plan.spec).encode(), create=True)
    except FileExistsError:
        raise UserError(
            f"job {plan.job_id} already exists under {store.root}",
            "launch again for a new job id, or `spotctl resume` it",
        ) from None
    store_targets(store, plan.job_id, plan.spec.notify)  # before the record: no driver sees the job without them
    store.write_record(record, create=True)
    try:
        start_attempt(record, plan.spec, plan.offers.ranked, cloud, store, plan.user_data)
    except NoCapacity as exc:
        reason = exc.reason
        store.update_record(record.job_id, lambda r: _set_outcome(r, JobState.NO_CAPACITY, reason))
        raise
    except QuotaExceeded as exc:
        reason = exc.reason
        store.update_record(record.job_id, lambda r: _set_outcome(r, JobState.FAILED, reason))
        raise
    return store.read_record(record.job_id)


class NoCapacity(UserError):
    """No offer could be started now (EC2 refused each, or none is under the price cap): try later."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(
            f"no offer could be started; {reason}", "try again later, or allow more instance types or zones"
        )


def _set_outcome(record: JobRecord, outcome: JobState, reason: str) -> None:
    record.outcome, record.outcome_reason = outcome, reason


def next_attempt_number(record: JobRecord) -> int:
    """The attempt to start: a claimed one EC2 never answered for, else a new one."""
    last = record.current
    return last.number if last is not None and last.instance_id is None else len(record.attempts) + 1


def start_attempt(
    record: JobRecord,
    spec: JobSpec,
    offers: list[Offer],
    cloud: Cloud,
    store: JobStore,
    user_data: str | None = None,
    image: Image | None = None,
) -> Attempt | None:
    """Start the next attempt on the first offer EC2 grants; capacity and price refusals move on.

    Exactly one instance per attempt, however many orchestrators try at once: the attempt is first
    claimed in the record by a conditional write (whoever loses the race returns None and starts
    nothing), and run_instances carries a ClientToken derived from the attempt and pool."""
    number = next_attempt_number(record)
    owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"  # this call: one claim, however many offers it tries
    abandoned = record.current if record.current is not None and record.current.number == number else None
    if abandoned is not None:
        # Taking over a claim whose orchestrator died: it may have started an instance before dying.
        # Adopt that one; else try its pool first (on AWS the same ClientToken returns the same instance).
        # Several nodes: _start_nodes adopts those it started, node by node, and starts the rest.
        adopted = _adopt(record, number, cloud, store, owner) if spec.compute.nodes == 1 else None
        if adopted is not None:
            return adopted
        offers = sorted(offers, key=lambda o: o.pool != (abandoned.instance_type, abandoned.zone))
    image = image or describe_image(cloud, record.ami)  # the caller's, if it has described it already
    if spec.compute.nodes > 1:
        return _start_nodes(record, spec, offers, cloud, store, image, number, owner, abandoned)
    user_data = user_data or bootstrap_script(spec, record.job_id, number, record.wheel_url)
    ami, root_device = image.id, image.root_device
    refusals = Refusals()
    for offer in offers:
        if refusals.quota_of(offer) is not None:
            continue  # its quota bucket refused already: every pool of the bucket would
        # The version is in it because the user-data names it: a takeover by another spotctl sends other
        # parameters, which under the same token EC2 would refuse (IdempotentParameterMismatch).
        token = hashlib.sha256(
            f"{record.job_id}/{number}/{offer.instance.name}/{offer.zone}/{__version__}".encode()
        ).hexdigest()[:40]
        if (
            store.update_record(
                record.job_id,
                lambda r, offer=offer, token=token: _claim(r, number, offer, token, owner, spec.compute),
            )
            is None
        ):
            log.info("launch: attempt %d of %s is another orchestrator's", number, record.job_id)
            return None
        try:
            instance_id = run_instance(cloud, spec, record.job_id, number, offer, ami, root_device, user_data, token)
        except botocore.exceptions.ClientError as exc:
            kind = classify(exc)
            if kind in (ErrorKind.CAPACITY, ErrorKind.QUOTA):
                log.info(
                    "launch: %s in %s refused (%s); trying the next offer",
                    offer.instance.name,
                    offer.zone,
                    describe(exc),
                )
                refusals.add(offer, kind, describe(exc))
                continue
            store.update_record(record.job_id, lambda r: _unclaim(r, number, owner))
            raise as_user_error(exc, f"starting {offer.instance.name} in {offer.zone}") from None
        except UserError as exc:  # this zone's network cannot be used (no subnet, no way out): the next offer
            log.info("launch: %s in %s skipped: %s", offer.instance.name, offer.zone, exc.message)
            refusals.add(offer, None, exc.message, exc.hint)
            continue
        except BaseException:
            # Whatever else stopped us (a bug, Ctrl-C), no instance came back: the claim must not stay
            # and make the job read "launching" until someone takes it over.
            store.update_record(record.job_id, lambda r: _unclaim(r, number, owner))
            raise
        written = store.update_record(
            record.job_id,
            lambda r, token=token, instance_id=instance_id: _started(r, number, token, instance_id, owner),
        )
        if written is None:  # our claim was taken over, or the job stopped, meanwhile: nobody wants this instance
            log.warning(
                "launch: attempt %d of %s was taken over or stopped meanwhile; terminating %s",
                number,
                record.job_id,
                instance_id,
            )
            terminate(cloud, [instance_id])
            return None
        record.attempts[:] = written.attempts
        return written.attempts[-1]
    store.update_record(record.job_id, lambda r: _unclaim(r, number, owner))
    raise refusals.error()


def node_token(job_id: str, number: int, rank: int, offer: Offer) -> str:
    """One node's RunInstances ClientToken: per job, attempt, node rank and pool (and version, as above)."""
    key = f"{job_id}/{number}/node{rank}/{offer.instance.name}/{offer.zone}/{__version__}"
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def _start_nodes(
    record: JobRecord,
    spec: JobSpec,
    offers: list[Offer],
    cloud: Cloud,
    store: JobStore,
    image: Image,
    number: int,
    owner: str,
    abandoned: Attempt | None = None,
) -> Attempt | None:
    """compute.nodes > 1: start every node of the attempt in one pool (one type, one zone), in the
    job's cluster placement group where the type may join one. All or nothing per pool: a node EC2
    refuses ends the ones already started there, and the next offer is tried for all of them. The
    claim is the attempt's, as for one instance; each node has its own ClientToken (node_token), so a
    repeated call starts no second machine for a node. Taking over an `abandoned` claim, the nodes
    its dead launcher started are adopted (jobs.nodes.adoption) and only the other ranks started."""
    nodes = spec.compute.nodes
    keep = survivors(record, number, nodes, offers, cloud)
    if keep is not None and not keep.whole and not keep.lost:
        # Every machine still runs (jobs.nodes.none_lost_yet; the Stepper waits before it comes here).
        log.info("launch: attempt %d of %s waits until its lost node's machine goes", number - 1, record.job_id)
        return None
    if keep is not None and not keep.whole:
        fits = node_loss.fitting(offers, keep)
        if fits:
            offers = fits
        else:  # no pool in the survivors' zone with their GPU count now: every node starts again elsewhere
            log.info("launch: no offer fits the kept nodes of %s; starting all %d nodes again", record.job_id, nodes)
            keep = None
    if keep is not None and keep.whole:
        keep = None
    ranks = keep.lost if keep else list(range(nodes))
    leftover = _left_by(abandoned, cloud, record.job_id, ranks, offers, keep)
    refusals = Refusals()
    for offer in offers:
        if refusals.quota_of(offer) is not None:
            continue
        # The dead launcher's machines count as started in their pool (always the first offer then):
        # refused there, they end with the rest of the gang.
        adopted = leftover.adopted if leftover.pool == offer.pool else {}
        tokens = {
            rank: (adopted[rank].client_token if rank in adopted else None)
            or node_token(record.job_id, number, rank, offer)
            for rank in ranks
        }
        claimed = store.update_record(
            record.job_id,
            lambda r, offer=offer, tokens=tokens: _claim_nodes(r, number, offer, tokens, owner, spec.compute, keep),
        )
        if claimed is None:
            log.info("launch: attempt %d of %s is another orchestrator's", number, record.job_id)
            return None
        if leftover.ended:  # only once the claim is ours: another taker's machines are never ended here
            _end_leftovers(cloud, leftover.ended, number, record.job_id)
        leftover = node_loss.Adoption({}, [])
        group = placement.ensure_group(cloud, record.job_id) if placement.wanted(nodes, offer.instance) else None
        started: dict[int, str] = {rank: machine.instance_id for rank, machine in adopted.items()}
        try:
            for rank in (r for r in ranks if r not in adopted):
                user_data = bootstrap_script(spec, record.job_id, number, record.wheel_url, node_rank=rank)
                started[rank] = run_instance(
                    cloud,
                    spec,
                    record.job_id,
                    number,
                    offer,
                    image.id,
                    image.root_device,
                    user_data,
                    tokens[rank],
                    node=rank,
                    placement_group=group,
                )
        except botocore.exceptions.ClientError as exc:
            if started:
                terminate(cloud, list(started.values()))  # a gang: part of one is worth nothing
            kind = classify(exc)
            if kind in (ErrorKind.CAPACITY, ErrorKind.QUOTA) or error_code(exc) == placement.IN_USE:
                log.info(
                    "launch: %d x %s in %s refused at node %d (%s); trying the next offer",
                    len(ranks),
                    offer.instance.name,
                    offer.zone,
                    len(started),
                    describe(exc),
                )
                refusals.add(offer, kind, describe(exc))
                continue
            store.update_record(record.job_id, lambda r: _unclaim(r, number, owner))
            raise as_user_error(exc, f"starting {len(ranks)} x {offer.instance.name} in {offer.zone}") from None
        except UserError as exc:
            if started:
                terminate(cloud, list(started.values()))
            log.info("launch: %s in %s skipped: %s", offer.instance.name, offer.zone, exc.message)
            refusals.add(offer, None, exc.message, exc.hint)
            continue
        except BaseException:
            if started:
                terminate(cloud, list(started.values()))
            store.update_record(record.job_id, lambda r: _unclaim(r, number, owner))
            raise
        instances = {**({n.rank: n.instance_id for n in keep.kept} if keep else {}), **started}
        launched = {rank: machine.launched_at for rank, machine in adopted.items()}
        written = store.update_record(
            record.job_id,
            lambda r, tokens=tokens, instances=instances, launched=launched: _started_nodes(
                r, number, tokens, instances, owner, launched
            ),
        )
        if written is None:
            log.warning(
                "launch: attempt %d of %s was taken over or stopped meanwhile; terminating %s",
                number,
                record.job_id,
                list(started.values()),
            )
            terminate(cloud, list(started.values()))
            return None
        record.attempts[:] = written.attempts
        if adopted:
            log.warning(
                "launch: adopted %s, started for attempt %d of %s by an orchestrator that stopped before recording them",
                ", ".join(f"{m.instance_id} (node {rank})" for rank, m in adopted.items()),
                number,
                record.job_id,
            )
        if keep:  # the survivors serve this attempt now: its tag, then the plan their bootstraps wait for
            retag_attempt(cloud, [n.instance_id for n in keep.kept], number)
        # Each node's bootstrap finds its rank here too: a kept node learns its next attempt and rank from it.
        try:
            store.write(record.job_id, layout.node_plan(number), plan_document(number, instances), create=True)
        except FileExistsError:  # written by the call this one repeats
            same_plan(store.read_bytes(record.job_id, layout.node_plan(number)) or b"", number, instances)
        return written.attempts[-1]
    store.update_record(record.job_id, lambda r: _unclaim(r, number, owner))
    raise refusals.error()


def _left_by(
    abandoned: Attempt | None,
    cloud: Cloud,
    job_id: str,
    ranks: list[int],
    offers: list[Offer],
    keep: node_loss.Replacement | None,
) -> node_loss.Adoption:
    """The node machines a dead launcher left for the `abandoned` (stale) claim: those this launch
    adopts, and those it ends once the claim is its own (another pool's, a second of one rank; all of
    them when their pool is no offer now, priced out or no longer fitting: a gang elsewhere does not
    need them)."""
    if abandoned is None or not stale_claim(abandoned):  # a live claim: its launcher records them
        return node_loss.Adoption({}, [])
    kept = {n.instance_id for n in keep.kept} if keep else set()  # survivors: never the leftovers' to end
    machines = [m for m in node_machines(cloud, job_id, abandoned.number) if m.instance_id not in kept]
    found = node_loss.adoption(abandoned, machines, ranks)
    if found.adopted and (not offers or offers[0].pool != found.pool):  # the caller orders the claim's pool first
        found = node_loss.Adoption({}, found.ended + [m.instance_id for m in found.adopted.values()])
    return found


def _end_leftovers(cloud: Cloud, instance_ids: list[str], number: int, job_id: str) -> None:
    log.warning(
        "launch: terminating %s, started for attempt %d of %s by an orchestrator that stopped before recording them",
        ", ".join(instance_ids),
        number,
        job_id,
    )
    terminate(cloud, instance_ids)


def survivors(
    record: JobRecord, number: int, nodes: int, offers: list[Offer], cloud: Cloud
) -> node_loss.Replacement | None:
    """What attempt `number` keeps of the one before (jobs.nodes.replacement), from EC2's view now;
    None when there is nothing to keep (no previous multi-node attempt of this size)."""
    previous = next((a for a in reversed(record.attempts) if a.number < number and a.instance_id), None)
    if previous is None or not previous.nodes or len(previous.nodes) != nodes:
        return None
    machines = {m.instance_id: m for m in machines_of(cloud, [record.job_id]).get(record.job_id, [])}
    gpus_of = {o.instance.name: o.instance.gpus for o in offers}
    return node_loss.replacement(previous, machines, gpus_of)


def _claim_nodes(
    record: JobRecord,
    number: int,
    offer: Offer,
    tokens: dict[int, str],
    owner: str,
    compute: ComputeSpec,
    keep: node_loss.Replacement | None = None,
) -> bool:
    """The attempt's claim (as `_claim`, on the first new node's token), listing its nodes by rank: the
    kept ones with their machines (billed in this attempt from the previous one's end), the new ones
    not started yet."""
    if not _claim(record, number, offer, next(iter(tokens.values())), owner, compute):
        return False
    previous_end = next((a.ended_at for a in reversed(record.attempts[:-1]) if a.instance_id), None) or now_iso()
    kept = [
        Node(
            n.rank,
            n.instance_type,
            n.zone,
            n.spot_price,
            n.client_token,
            n.instance_id,
            n.launched_at,
            n.running_at,
            since=previous_end,
            kept=True,
        )
        for n in (keep.kept if keep else [])
    ]
    new = [Node(rank, offer.instance.name, offer.zone, offer.spot_price, token) for rank, token in tokens.items()]
    record.attempts[-1].nodes = sorted(kept + new, key=lambda n: n.rank)
    return True


def _started_nodes(
    record: JobRecord,
    number: int,
    tokens: dict[int, str],
    instance_ids: dict[int, str],
    owner: str,
    launched: dict[int, str] | None = None,
) -> bool:
    """The attempt's nodes started: each new node's machine, serving (and billed) from its launch now,
    or an adopted one's own (`launched`, by rank: EC2's LaunchTime)."""
    if not _started(record, number, next(iter(tokens.values())), instance_ids[0], owner):
        return False
    attempt = record.attempts[-1]
    for node in attempt.nodes or []:
        if node.kept:
            continue
        node.instance_id = instance_ids[node.rank]
        node.launched_at = node.since = (launched or {}).get(node.rank) or attempt.launched_at
    return True


@dataclass
class Refusal:
    offer: Offer
    kind: ErrorKind | None  # CAPACITY, QUOTA, or None: the zone's network
    message: str
    hint: str | None = None


class Refusals:
    """Why each offer could not be started, and the error that sums them up."""

    def __init__(self) -> None:
        self.seen: list[Refusal] = []

    def add(self, offer: Offer, kind: ErrorKind | None, message: str, hint: str | None = None) -> None:
        self.seen.append(Refusal(offer, kind, message, hint))

    def quota_of(self, offer: Offer) -> SpotQuota | None:
        """The quota that already refused this offer's bucket, if one did."""
        bucket = spot_quota_of(offer.instance.name)
        return (
            bucket
            if any(r.kind is ErrorKind.QUOTA and spot_quota_of(r.offer.instance.name) == bucket for r in self.seen)
            else None
        )

    def error(self) -> UserError:
        """Capacity may come back (NoCapacity: try later); a quota or a network will not by itself."""
        said = "; ".join(f"{r.offer.instance.name}/{r.offer.zone}: {r.message}" for r in self.seen[:4])
        more = f" (and {len(self.seen) - 4} more)" if len(self.seen) > 4 else ""
        if not self.seen:
            return NoCapacity("no offer to try")
        if any(r.kind is ErrorKind.CAPACITY for r in self.seen):
            return NoCapacity(f"EC2 refused all {len(self.seen)} offers: {said}{more}")
        quotas = [r for r in self.seen if r.kind is ErrorKind.QUOTA]
        if len(quotas) == len(self.seen):
            return QuotaExceeded([r.offer for r in quotas])
        pools: dict[str, list[str]] = {}  # one network reason covers every type of its zone: said once
        for r in self.seen:
            pools.setdefault(r.message, []).append(f"{r.offer.instance.name}/{r.offer.zone}")
        said = "; ".join(
            f"{message} ({', '.join(where[:3])}{'...' if len(where) > 3 else ''})" for message, where in pools.items()
        )
        hints = dict.fromkeys(r.hint for r in self.seen if r.hint)
        return UserError(f"no offer could be started: {said}", "; or ".join(hints) or None)


class QuotaExceeded(UserError):
    """Every offer was refused by the account's Spot vCPU quota: not capacity, and waiting will not
    help (unless other spot instances of the account end); the quota must be raised."""

    def __init__(self, offers: list[Offer]):
        buckets: dict[SpotQuota, int] = {}
        for offer in offers:
            quota = spot_quota_of(offer.instance.name)
            buckets[quota] = min(buckets.get(quota, offer.instance.vcpus), offer.instance.vcpus)
        names = "; ".join(f"'{q.name}' ({q.code}): the smallest offer needs {v} vCPUs" for q, v in buckets.items())
        self.reason = f"the account's Spot vCPU quota refused every offer: {names}"
        super().__init__(
            self.reason,
            "request an increase (`spotctl doctor` shows each quota): "
            + " ; ".join(q.increase_command(v) for q, v in buckets.items()),
        )


def _adopt(record: JobRecord, number: int, cloud: Cloud, store: JobStore, owner: str) -> Attempt | None:
    live = live_instances(cloud, record.job_id, number)
    if not live:
        return None
    instance = describe_instance(cloud, live[0])
    zone = instance["Placement"]["AvailabilityZone"]

    def adopt(r: JobRecord) -> bool:
        last = r.current
        if (
            last is None
            or last.number != number
            or last.instance_id is not None
            or not stale_claim(last)
            or r.stop_requested_at
            or r.cancelled_at
        ):
            return False
        last.instance_type, last.zone, last.claimed_by = instance["InstanceType"], zone, owner
        last.instance_id, last.launched_at = (
            instance["InstanceId"],
            instance["LaunchTime"].isoformat(timespec="seconds"),
        )
        last.client_token = instance.get("ClientToken") or last.client_token
        return True

    written = store.update_record(record.job_id, adopt)
    if written is None:
        return None
    log.warning(
        "launch: adopted %s, started for attempt %d of %s by an orchestrator that stopped before recording it",
        instance["InstanceId"],
        number,
        record.job_id,
    )
    record.attempts[:] = written.attempts
    return written.attempts[-1]


def _claim(record: JobRecord, number: int, offer: Offer, token: str, owner: str, compute: ComputeSpec) -> bool:
    last = record.current
    if record.outcome or record.cancelled_at or record.stop_requested_at:
        return False  # finished, or someone asked it to stop: no new machine
    fresh = Attempt(
        number,
        offer.instance.name,
        offer.zone,
        offer.spot_price,
        offer.on_demand_price,
        token,
        requested_at=now_iso(),
        claimed_by=owner,
        disk_gib=compute.disk_gib,  # what the attempt pays besides its instance (jobs.cost)
        public_ip=compute.public_ip,
    )
    if len(record.attempts) == number - 1 and (last is None or last.instance_id is not None):
        record.attempts.append(fresh)
        return True
    # Our next offer after a refusal, or an abandoned claim: the claim is ours now.
    if (
        last is not None
        and last.number == number
        and last.instance_id is None
        and (last.claimed_by == owner or stale_claim(last))
    ):
        record.attempts[-1] = fresh
        return True
    return False


def _started(record: JobRecord, number: int, token: str, instance_id: str, owner: str) -> bool:
    last = record.current
    if last is None or last.number != number or last.client_token != token or last.claimed_by != owner:
        return False
    if record.cancelled_at or record.stop_requested_at or record.outcome:
        return False  # stopped while EC2 was starting it: the caller terminates it
    last.instance_id, last.launched_at = instance_id, now_iso()
    return True


def _unclaim(record: JobRecord, number: int, owner: str) -> bool:
    last = record.current
    if last is None or last.number != number or last.instance_id is not None or last.claimed_by != owner:
        return False
    record.attempts.pop()
    return True


def check_permissions(plan: Plan, cloud: Cloud) -> str:
    """Ask EC2 whether the launch would be allowed, without starting anything (DryRun=True)."""
    offer = plan.best
    _, root_device = resolve_ami(cloud, plan.ami)
    try:
        run_instance(
            cloud, plan.spec, plan.job_id, 1, offer, plan.ami, root_device, plan.user_data, "dry-run", dry_run=True
        )
    except botocore.exceptions.ClientError as exc:
        if describe(exc).startswith("DryRunOperation"):
            return "allowed"
        if classify(exc) is ErrorKind.AUTH:
            return f"refused: {describe(exc)}"
        raise as_user_error(exc, "checking the launch (DryRun)") from None
    return "unknown: EC2 gave no DryRun answer"
