"""Losing one node of a multi-node job (compute.nodes > 1): which machines the next attempt keeps and
which node ranks it replaces, and where a replacement may go. Pure: the driver (jobs.step) reads EC2
and the record, this decides.

- A node whose machine EC2 lists as pending or running is **kept**: its bootstrap is waiting for the
  next attempt's plan (trainer.job.rendezvous.wait_for_plan) instead of shutting down, and it keeps
  its node rank. Every other node (interrupted, crashed, terminated, no longer listed) is **lost**, and
  only its rank gets a new machine. With no node kept, the next attempt is an ordinary gang launch
  (jobs.launch), on any pool.
- A replacement **fits** a pool of the kept nodes' zone (the job's cluster placement group lies in one
  zone: EC2 refuses another while the group holds a machine, `InvalidPlacementGroup.InUse`) whose type
  has the kept nodes' GPU count (the world size, and so the batch split, stays that of the checkpoint's
  run). The order among them is the failover order the caller gives.
- Taking over a launch whose spotctl died after starting some nodes (a stale claim, jobs.launch):
  the machines it left in the claim's pool are **adopted**, one per rank the attempt starts (the one
  with the claim's token for that rank first); any other (another pool's, a second of one rank) is
  **ended**, so the attempt has exactly one machine per rank and nothing is left billing unrecorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.aws.instances import GONE, LIVE

if TYPE_CHECKING:
    from orchestrator.aws.instances import Instance, NodeMachine
    from orchestrator.aws.offers import Offer
    from trainer.job.documents import Attempt, Node


@dataclass(frozen=True)
class Replacement:
    """The next attempt of a multi-node job, as far as its machines go."""

    kept: list[Node]  # the survivors, by rank: their machines carry on
    lost: list[int]  # the node ranks that need a new machine
    zone: str | None  # where the replacements must go (the kept nodes'); None: anywhere (nothing kept)
    gpus: int | None  # the GPU count a replacement's type must have; None: any

    @property
    def whole(self) -> bool:
        """Nothing survived: start every node again."""
        return not self.kept


def replacement(attempt: Attempt, instances: dict[str, Instance], gpus_of: dict[str, int]) -> Replacement:
    """What the attempt after `attempt` keeps and replaces, from EC2's view of each node's machine
    (`instances` by instance id; a machine EC2 no longer lists is lost) and each type's GPU count."""
    kept, lost = [], []
    for node in sorted(attempt.nodes or [], key=lambda n: n.rank):
        machine = instances.get(node.instance_id or "")
        if machine is not None and machine.state in LIVE and not node.lost:
            kept.append(node)
        else:
            lost.append(node.rank)
    if not kept:
        return Replacement([], lost, None, None)
    zone = kept[0].zone
    return Replacement(kept, lost, zone, gpus_of.get(kept[0].instance_type))


def standing_for(attempt: Attempt, machines: dict[str, Instance], listed_by_now: bool) -> Instance | None:
    """The one instance that tells a multi-node attempt's state (jobs.state reads one per attempt): the
    first node whose machine is gone, or no longer listed once `listed_by_now` (the attempt is older
    than EC2's listing grace): one node lost ends the attempt for all, with that node's reason and
    time; else node 0's machine. None: nothing of it is listed (yet, or any more)."""
    first = None
    for node in sorted(attempt.nodes or [], key=lambda n: n.rank):
        machine = machines.get(node.instance_id or "")
        if machine is None:
            if listed_by_now and node.instance_id:
                return None  # EC2 has forgotten it: lost (jobs.state settles it from the last heartbeat)
            continue
        if machine.state in GONE:
            return machine
        first = first or machine
    return first


def none_lost_yet(attempt: Attempt | None, machines: dict[str, Instance] | None) -> bool:
    """A multi-node attempt every machine of which EC2 still lists live: after the trainer's
    `interrupted` (a spot notice reached one node) the noticed machine has not gone yet, so which rank
    to replace is not known; EC2 takes it within two minutes. The next attempt waits until then."""
    if attempt is None or not attempt.nodes or machines is None:
        return False
    listed = [machines.get(n.instance_id or "") for n in attempt.nodes]
    return all(m is not None and m.state in LIVE for m in listed)


def fitting(offers: list[Offer], plan: Replacement) -> list[Offer]:
    """The offers a replacement may take, in the order given (empty: wait, or start everything again)."""
    if plan.whole:
        return list(offers)
    # A kept type no offer names now (priced out): only that type is known to have the same GPU count.
    same = (
        (lambda o: o.instance.gpus == plan.gpus)
        if plan.gpus is not None
        else (lambda o: o.instance.name == plan.kept[0].instance_type)
    )
    return [o for o in offers if o.zone == plan.zone and same(o)]


@dataclass(frozen=True)
class Adoption:
    """What a takeover of a dead launcher's claim does with the node machines it left."""

    adopted: dict[int, NodeMachine]  # by rank: the machine that serves that rank now
    ended: list[str]  # instance ids to terminate: not wanted by this attempt

    @property
    def pool(self) -> tuple[str, str] | None:
        """(type, zone) of the adopted machines; None: nothing adopted."""
        first = next(iter(self.adopted.values()), None)
        return (first.instance_type, first.zone) if first else None


def adoption(claim: Attempt, machines: list[NodeMachine], ranks: list[int]) -> Adoption:
    """Which of `machines` (the live nodes tagged with the claimed attempt) the takeover adopts: in the
    claim's pool, one per rank among `ranks` (the ranks this attempt starts), the claim's token first."""
    tokens = {n.rank: n.client_token for n in claim.nodes or []}
    adopted: dict[int, NodeMachine] = {}
    for machine in sorted(machines, key=lambda m: (m.rank, m.client_token != tokens.get(m.rank))):
        pool = (machine.instance_type, machine.zone)
        if machine.rank in ranks and machine.rank not in adopted and pool == (claim.instance_type, claim.zone):
            adopted[machine.rank] = machine
    taken = {m.instance_id for m in adopted.values()}
    return Adoption(adopted, [m.instance_id for m in machines if m.instance_id not in taken])
