"""Which nodes a multi-node job keeps and which it replaces when one is lost (orchestrator.jobs.nodes)."""

from __future__ import annotations

from orchestrator.aws.instances import Instance, NodeMachine
from orchestrator.aws.offers import InstanceType, Offer
from orchestrator.jobs.nodes import adoption, fitting, none_lost_yet, replacement, standing_for
from orchestrator.jobs.state import derive_state, settle
from tests.unit.jobs import attempt
from trainer.job.documents import JobRecord, JobState, Node

GPUS = {"g5.xlarge": 1, "g6.xlarge": 1, "g5.12xlarge": 4}


def three_nodes():
    made = attempt(1, ("g5.xlarge", "us-east-1a"))
    made.nodes = [
        Node(
            rank=r,
            instance_type="g5.xlarge",
            zone="us-east-1a",
            spot_price=0.4,
            client_token=f"t{r}",
            instance_id=f"i-{r}",
        )
        for r in range(3)
    ]
    return made


def machine(instance_id: str, state: str, reason: str | None = None) -> Instance:
    return Instance(instance_id, state, reason, None, 1)


def offer(name: str, zone: str) -> Offer:
    return Offer(InstanceType(name, GPUS[name], "A10G", 22.4, 4, 16.0), zone, 0.4, 1.0, None)


def test_one_node_interrupted_only_its_rank_is_replaced_the_others_keep_their_machines():
    machines = {
        "i-0": machine("i-0", "running"),
        "i-1": machine("i-1", "terminated", "Server.SpotInstanceTermination"),
        "i-2": machine("i-2", "running"),
    }
    plan = replacement(three_nodes(), machines, GPUS)
    assert [n.rank for n in plan.kept] == [0, 2] and plan.lost == [1]
    assert (plan.zone, plan.gpus, plan.whole) == ("us-east-1a", 1, False)


def test_a_machine_ec2_no_longer_lists_or_a_node_marked_lost_is_replaced():
    plan = replacement(three_nodes(), {"i-0": machine("i-0", "running"), "i-2": machine("i-2", "shutting-down")}, GPUS)
    assert [n.rank for n in plan.kept] == [0] and plan.lost == [1, 2]
    marked = three_nodes()
    marked.nodes[0].lost = True  # its trainer's collective timed out on it: gone, whatever EC2 says yet
    plan = replacement(marked, {f"i-{r}": machine(f"i-{r}", "running") for r in range(3)}, GPUS)
    assert plan.lost == [0] and [n.rank for n in plan.kept] == [1, 2]


def test_with_nothing_kept_everything_starts_again_anywhere():
    plan = replacement(three_nodes(), {}, GPUS)
    assert plan.whole and plan.lost == [0, 1, 2] and plan.zone is None
    offers = [offer("g5.xlarge", "us-east-1b"), offer("g6.xlarge", "us-east-1a")]
    assert fitting(offers, plan) == offers


def test_a_replacement_fits_the_kept_nodes_zone_and_gpu_count_in_failover_order():
    machines = {"i-0": machine("i-0", "running"), "i-2": machine("i-2", "running")}
    plan = replacement(three_nodes(), machines, GPUS)
    offers = [
        offer("g5.xlarge", "us-east-1b"),  # another zone: the placement group refuses it
        offer("g6.xlarge", "us-east-1a"),  # same zone, same GPU count: fits
        offer("g5.12xlarge", "us-east-1a"),  # 4 GPUs: another world size than the checkpoint's run
        offer("g5.xlarge", "us-east-1a"),
    ]
    assert [(o.instance.name, o.zone) for o in fitting(offers, plan)] == [
        ("g6.xlarge", "us-east-1a"),
        ("g5.xlarge", "us-east-1a"),
    ]


def test_a_kept_type_no_offer_names_now_is_replaced_by_that_type_only():
    plan = replacement(three_nodes(), {"i-0": machine("i-0", "running")}, {})  # priced out: its GPUs unknown
    offers = [offer("g6.xlarge", "us-east-1a"), offer("g5.xlarge", "us-east-1a")]
    assert [o.instance.name for o in fitting(offers, plan)] == ["g5.xlarge"]


def test_one_gone_node_stands_for_the_attempt_else_node_0():
    nodes = three_nodes()
    live = {f"i-{r}": machine(f"i-{r}", "running") for r in range(3)}
    assert standing_for(nodes, live, listed_by_now=True).instance_id == "i-0"
    gone = {**live, "i-2": machine("i-2", "terminated", "Server.SpotInstanceTermination")}
    assert standing_for(nodes, gone, listed_by_now=True).instance_id == "i-2"
    forgotten = {k: v for k, v in live.items() if k != "i-1"}
    assert standing_for(nodes, forgotten, listed_by_now=True) is None  # EC2 forgot it: lost
    assert standing_for(nodes, forgotten, listed_by_now=False).instance_id == "i-0"  # not listed yet: booting
    assert none_lost_yet(nodes, live) and not none_lost_yet(nodes, gone) and not none_lost_yet(nodes, forgotten)
    assert not none_lost_yet(attempt(1, ("g5.xlarge", "us-east-1a")), live)  # one instance: not this rule


def test_one_node_lost_ends_the_attempt_as_interrupted_and_marks_only_that_node_lost():
    record = JobRecord("j", "j", "us-east-1", "s3://b/p", "s3://b/p/job.yaml", "s3://b/w.whl", "ami-1")
    first = three_nodes()
    first.launched_at = "2026-12-01T10:00:00+00:00"
    record.attempts.append(first)
    lost = Instance(
        "i-1", "terminated", "Server.SpotInstanceTermination", None, 1, "Service initiated (2026-12-01 10:30:00 GMT)"
    )
    machines = {"i-0": machine("i-0", "running"), "i-1": lost, "i-2": machine("i-2", "running")}
    stands = standing_for(first, machines, listed_by_now=True)
    assert derive_state(record, None, None, stands) is JobState.INTERRUPTED  # two of three still run
    assert settle(record, {1: stands}, None, None, machines=machines)
    assert (first.end_reason, first.ended_at) == ("interrupted", "2026-12-01T10:30:00+00:00")
    assert [(n.lost, n.state_reason, n.ended_at) for n in first.nodes] == [
        (False, None, first.ended_at),
        (True, "Server.SpotInstanceTermination", first.ended_at),
        (False, None, first.ended_at),
    ]
    assert not settle(record, {1: stands}, None, None, machines=machines)  # idempotent


def test_a_dead_launchers_nodes_are_adopted_one_per_rank_in_its_pool_and_the_rest_ended():
    claim = three_nodes()  # claimed in g5.xlarge / us-east-1a, tokens t0..t2
    for node in claim.nodes:
        node.instance_id = None

    def left(instance_id, rank, token, pool=("g5.xlarge", "us-east-1a")):
        return NodeMachine(instance_id, rank, *pool, token, "2026-12-01T10:00:00+00:00")

    found = adoption(
        claim,
        [
            left("i-a", 0, "t0"),
            left("i-b", 2, "other-version"),  # started by another spotctl version: its rank all the same
            left("i-c", 2, "t2"),  # a second machine of rank 2: the one with the claim's token wins
            left("i-d", 1, "t1", ("g6.xlarge", "us-east-1b")),  # a pool the claim moved off
        ],
        ranks=[0, 1, 2],
    )
    assert {r: m.instance_id for r, m in found.adopted.items()} == {0: "i-a", 2: "i-c"}
    assert sorted(found.ended) == ["i-b", "i-d"] and found.pool == ("g5.xlarge", "us-east-1a")
    # A replacement starts rank 1 only: another machine of a kept rank is not this attempt's to adopt.
    found = adoption(claim, [left("i-a", 0, "t0"), left("i-e", 1, "t1")], ranks=[1])
    assert {r: m.instance_id for r, m in found.adopted.items()} == {1: "i-e"} and found.ended == ["i-a"]
    assert adoption(claim, [], ranks=[0, 1, 2]) == type(found)({}, [])
