"""The rendezvous of a multi-node attempt (compute.nodes > 1), kept in the job's storage: no node and
no spotctl server hosts it, so losing any one machine loses nothing of it.

Each node of attempt k registers itself once, create-only (`If-None-Match: *` on S3), at
`rendezvous/attempt-<k>/node-<r>.json` (trainer.job.layout): its node rank, the private address its
ranks listen on, its instance. Once all N have registered, node 0's address is torchrun's master and
every node starts `torchrun --nnodes N --node-rank R --master-addr A --master-port P` (a static
rendezvous: no c10d store on a node that may be the one interrupted, no etcd). Waiting for all N
first turns a node that never comes into one clear message naming it (`RendezvousTimeout`), within
`timeout_s`, instead of a collective that hangs.

Create-only makes the registration a fence: a rank registered by another instance is refused
(`RendezvousConflict`), and the same instance registering again (a bootstrap that restarted) reads
back its own. The orchestrator writes `plan.json` for each multi-node attempt (which instance is which
rank); a node kept from the previous attempt waits for the plan naming it (`wait_for_plan`) to learn
its next attempt and rank, instead of shutting down.

Torch-free (the bootstrap runs it before torchrun; tests run it without torch):
`python -m trainer.job.rendezvous join ...` prints torchrun's arguments, `... plan ...` the kept
node's next attempt and rank.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from trainer.job import layout
from trainer.job.documents import NodeJoin, NodePlan, now_iso
from trainer.job.settings import Settings
from trainer.job.storage import Storage

DEFAULT_PORT = 29500  # torchrun's own default master port
JOIN_TIMEOUT_S = 900.0  # a replaced node's boot and install take minutes (SPOTCTL_RENDEZVOUS_TIMEOUT_S)
POLL_S = 2.0


class RendezvousTimeout(RuntimeError):
    """Not every node registered in time (or no plan named this machine)."""


class RendezvousConflict(RuntimeError):
    """This node rank of the attempt is registered by another instance."""


@dataclass(frozen=True)
class Rendezvous:
    """What one node starts torchrun with."""

    attempt: int
    nodes: int
    rank: int
    master_host: str
    master_port: int

    def torchrun_args(self) -> list[str]:
        return [
            f"--nnodes={self.nodes}",
            f"--node-rank={self.rank}",
            f"--master-addr={self.master_host}",
            f"--master-port={self.master_port}",
        ]


def register(
    storage: Storage, attempt: int, rank: int, host: str, port: int, instance_id: str | None = None
) -> NodeJoin:
    """This node's registration, written once; the one already there if it is this instance's own."""
    key = layout.node_join(attempt, rank)
    fields = {
        "attempt": attempt,
        "rank": rank,
        "host": host,
        "port": port,
        "instance_id": instance_id,
        "joined_at": now_iso(),
    }
    try:
        storage.write_bytes(key, NodeJoin.dump(fields), create_only=True)
        return NodeJoin.of(**fields)
    except FileExistsError:
        there = NodeJoin.parse(storage.read_bytes(key))
        if there is not None and instance_id is not None and there.instance_id == instance_id:
            return there  # our own, from a bootstrap that ran before
        raise RendezvousConflict(
            f"attempt {attempt}: node rank {rank} is already registered by "
            f"{there.instance_id if there else 'an unreadable registration'} ({storage.url_of(key)})"
        ) from None


def joined(storage: Storage, attempt: int, nodes: int) -> dict[int, NodeJoin]:
    """The nodes of the attempt registered so far, by rank (unreadable ones left out)."""
    found = {}
    for rank in range(nodes):
        try:
            join = NodeJoin.parse(storage.read_bytes(layout.node_join(attempt, rank)))
        except FileNotFoundError:
            continue
        if join is not None and join.rank == rank and join.attempt == attempt:
            found[rank] = join
    return found


def join(
    storage: Storage,
    attempt: int,
    rank: int,
    nodes: int,
    host: str,
    port: int = DEFAULT_PORT,
    instance_id: str | None = None,
    timeout_s: float = JOIN_TIMEOUT_S,
    poll_s: float = POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Rendezvous:
    """Register, then wait (at most `timeout_s`) until all `nodes` have; node 0 is the master."""
    if not 0 <= rank < nodes:
        raise ValueError(f"node rank {rank} is not one of {nodes} nodes")
    register(storage, attempt, rank, host, port, instance_id)
    deadline = clock() + timeout_s
    while True:
        found = joined(storage, attempt, nodes)
        if len(found) == nodes:
            master = found[0]
            return Rendezvous(attempt, nodes, rank, master.host, master.port)
        if clock() >= deadline:
            missing = ", ".join(str(r) for r in range(nodes) if r not in found)
            raise RendezvousTimeout(
                f"attempt {attempt}: node{'s' * (nodes - len(found) > 1)} {missing} of {nodes} did not register "
                f"within {timeout_s:.0f} s ({storage.url_of(layout.rendezvous_of(attempt))}/)"
            )
        sleep(poll_s)


def write_plan(storage: Storage, attempt: int, instances: dict[int, str]) -> None:
    """The orchestrator's word on which instance is which node rank in `attempt` (create-only: a plan
    is never changed; a repeated write of the same plan is fine)."""
    body = plan_document(attempt, instances)
    try:
        storage.write_bytes(layout.node_plan(attempt), body, create_only=True)
    except FileExistsError:
        same_plan(storage.read_bytes(layout.node_plan(attempt)), attempt, instances)


def plan_document(attempt: int, instances: dict[int, str]) -> bytes:
    """plan.json's body: node rank -> instance id."""
    nodes = {str(r): i for r, i in sorted(instances.items())}
    return NodePlan.dump({"attempt": attempt, "nodes": nodes, "written_at": now_iso()})


def same_plan(there: bytes, attempt: int, instances: dict[int, str]) -> None:
    """A plan already written must be this one (RendezvousConflict otherwise)."""
    plan = NodePlan.parse(there)
    if plan is None or plan.nodes != {str(r): i for r, i in instances.items()}:
        raise RendezvousConflict(f"attempt {attempt} has another plan already")


def rank_in(storage: Storage, attempt: int, instance_id: str) -> int | None:
    """This instance's node rank in the attempt's plan; None: no plan yet, or it is not in it."""
    try:
        plan = NodePlan.parse(storage.read_bytes(layout.node_plan(attempt)))
    except FileNotFoundError:
        return None
    if plan is None:
        return None
    return next((int(r) for r, i in plan.nodes.items() if i == instance_id), None)


def wait_for_plan(
    storage: Storage,
    instance_id: str,
    after: int,
    timeout_s: float = JOIN_TIMEOUT_S,
    poll_s: float = POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, int]:
    """A kept node: (attempt, node rank) of the first attempt after `after` whose plan names this
    instance. A plan for the next attempt that leaves it out means it is not wanted: RendezvousTimeout
    at once (the machine shuts down), as when no plan comes within `timeout_s`."""
    deadline = clock() + timeout_s
    attempt = after + 1
    while True:
        try:
            plan = NodePlan.parse(storage.read_bytes(layout.node_plan(attempt)))
        except FileNotFoundError:
            plan = None
        if plan is not None:
            rank = next((int(r) for r, i in plan.nodes.items() if i == instance_id), None)
            if rank is not None:
                return attempt, rank
            raise RendezvousTimeout(f"attempt {attempt} goes on without {instance_id}")
        if clock() >= deadline:
            raise RendezvousTimeout(f"no attempt after {after} named {instance_id} within {timeout_s:.0f} s")
        sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.job.rendezvous", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    j = sub.add_parser("join", help="register this node and print torchrun's --nnodes/--node-rank/--master-* arguments")
    j.add_argument("--storage", required=True, help="the job's prefix URL")
    j.add_argument("--attempt", type=int, required=True)
    j.add_argument("--rank", type=int, required=True)
    j.add_argument("--nodes", type=int, required=True)
    j.add_argument("--address", required=True, help="HOST[:PORT] this node's ranks listen on")
    j.add_argument("--instance-id")
    j.add_argument("--timeout", type=float, default=Settings.from_env().rendezvous_timeout_s)
    w = sub.add_parser("plan", help="a kept node: wait for the next attempt naming this instance; print 'ATTEMPT RANK'")
    w.add_argument("--storage", required=True)
    w.add_argument("--instance-id", required=True)
    w.add_argument("--after", type=int, required=True)
    w.add_argument("--timeout", type=float, default=Settings.from_env().rendezvous_timeout_s)
    u = sub.add_parser("urls", help="a kept node: print its crash report's and bootstrap log's URLs in an attempt")
    u.add_argument("--storage", required=True)
    u.add_argument("--attempt", type=int, required=True)
    u.add_argument("--rank", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "urls":
        prefix = args.storage.rstrip("/")
        print(f"{prefix}/{layout.crash_of(args.attempt)} {prefix}/{layout.bootstrap_log(args.attempt, args.rank)}")
        return 0
    storage = Storage(args.storage)
    try:
        if args.command == "join":
            host, _, port = args.address.rpartition(":") if ":" in args.address else (args.address, "", "")
            found = join(
                storage,
                args.attempt,
                args.rank,
                args.nodes,
                host,
                int(port or DEFAULT_PORT),
                args.instance_id,
                args.timeout,
            )
            print(" ".join(found.torchrun_args()))
        else:
            attempt, rank = wait_for_plan(storage, args.instance_id, args.after, args.timeout)
            print(attempt, rank)
    except (RendezvousTimeout, RendezvousConflict) as exc:
        print(f"rendezvous: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
