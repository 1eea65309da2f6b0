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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.aws.instances import LIVE

if TYPE_CHECKING:
    from orchestrator.aws.instances import Instance
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


def fitting(offers: list[Offer], plan: Replacement) -> list[Offer]:
    """The offers a replacement may take, in the order given (empty: wait, or start everything again)."""
    if plan.whole:
        return list(offers)
    return [o for o in offers if o.zone == plan.zone and (plan.gpus is None or o.instance.gpus == plan.gpus)]
