"""compute.nodes > 1 on the (strict) local cloud: every node of an attempt in one pool and one
cluster placement group, each tagged with its rank and started under its own ClientToken, recorded
by rank; a pool that refuses one node ends the nodes it started and the next pool takes them all."""

from __future__ import annotations

import json

from orchestrator.aws.instances import TAG_ATTEMPT, TAG_JOB, TAG_NODE
from orchestrator.jobs.record import JobStore
from tests.cloud import EXAMPLE, STORAGE, hook_run_instances, launched_id, settled_ec2
from trainer.job import layout
from trainer.job.documents import NodePlan


def nodes_job(tmp_path, nodes: int = 2) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(EXAMPLE.read_text().replace("  disk_gib: 120\n", f"  disk_gib: 120\n  nodes: {nodes}\n"))
    return str(path)


def instances() -> list[dict]:
    pages = settled_ec2().get_paginator("describe_instances").paginate()
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def tags_of(instance: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def test_two_nodes_start_in_one_pool_and_one_cluster_group_recorded_by_rank(account, aws, spotctl, tmp_path):
    code, out, err = spotctl("launch", nodes_job(tmp_path))
    assert code == 0, err
    job = launched_id(out)
    assert f"launched {job}: 2 x g4dn.xlarge in us-east-1a at $0.2100/h spot each ($0.4200/h for all 2)" in out
    attempt = JobStore(STORAGE).read_record(job).attempts[-1]
    assert [(n.rank, n.instance_type, n.zone, n.kept, n.lost) for n in attempt.nodes] == [
        (0, "g4dn.xlarge", "us-east-1a", False, False),
        (1, "g4dn.xlarge", "us-east-1a", False, False),
    ]
    assert attempt.instance_id == attempt.nodes[0].instance_id  # rank 0 stands for the attempt
    assert len({n.client_token for n in attempt.nodes}) == 2  # a token per node
    live = {i["InstanceId"]: i for i in instances()}
    assert set(live) == {n.instance_id for n in attempt.nodes}
    for node in attempt.nodes:
        machine = live[node.instance_id]
        assert tags_of(machine)[TAG_JOB] == job and tags_of(machine)[TAG_ATTEMPT] == "1"
        assert tags_of(machine)[TAG_NODE] == str(node.rank)
        assert machine["Placement"]["AvailabilityZone"] == "us-east-1a"
        assert aws.strict.placement_groups.group_of("us-east-1", node.instance_id) == f"spotctl-{job}"
    assert aws.calls()["ec2:CreatePlacementGroup"] == 1
    # The rendezvous' plan: which instance is which node rank (a kept node reads its next rank there).
    store = JobStore(STORAGE)
    plan = NodePlan.parse(store.read_bytes(job, layout.node_plan(1)))
    assert plan.attempt == 1 and plan.nodes == {str(n.rank): n.instance_id for n in attempt.nodes}
    # status shows every node, by rank.
    code, out, err = spotctl("status", job, "--storage", STORAGE, "--json")
    assert code == 0, err
    [shown] = json.loads(out)["attempts"]
    assert [(n["rank"], n["instance_id"], n["kept"], n["lost"]) for n in shown["nodes"]] == [
        (n.rank, n.instance_id, False, False) for n in attempt.nodes
    ]
    code, out, err = spotctl("status", job, "--storage", STORAGE)
    ids = ", ".join(f"{n.rank} {n.instance_id}" for n in attempt.nodes)
    assert code == 0 and f"attempt 1 nodes: {ids}" in out


def test_a_pool_refusing_one_node_ends_the_started_ones_and_the_next_pool_takes_all(
    account, aws, spotctl, tmp_path, monkeypatch
):
    seen = []

    def refuse(params):  # us-east-1a has room for one g4dn.xlarge only
        seen.append(params["SubnetId"] if "SubnetId" in params else params["NetworkInterfaces"][0]["SubnetId"])
        first_zone = seen[0]
        return "InsufficientInstanceCapacity" if len(seen) == 2 and seen[1] == first_zone else None

    hook_run_instances(monkeypatch, refuse)
    code, out, err = spotctl("launch", nodes_job(tmp_path), "--json")
    assert code == 0, err
    found = json.loads(out)
    attempt = JobStore(STORAGE).read_record(found["job_id"]).attempts[-1]
    assert attempt.zone == "us-east-1b" and [n.rank for n in attempt.nodes] == [0, 1]
    assert found["nodes"] == [{"rank": n.rank, "instance_id": n.instance_id} for n in attempt.nodes]
    states = {i["InstanceId"]: (i["Placement"]["AvailabilityZone"], i["State"]["Name"]) for i in instances()}
    ended = [zone for zone, state in states.values() if state in ("shutting-down", "terminated")]
    assert ended == ["us-east-1a"]  # the one node started in the refusing pool, ended
    assert {states[n.instance_id][0] for n in attempt.nodes} == {"us-east-1b"}
    assert {states[n.instance_id][1] for n in attempt.nodes} <= {"pending", "running"}


def test_rm_force_terminates_every_node_and_deletes_the_placement_group(account, aws, spotctl, tmp_path):
    code, out, err = spotctl("launch", nodes_job(tmp_path))
    assert code == 0, err
    job = launched_id(out)
    attempt = JobStore(STORAGE).read_record(job).attempts[-1]
    code, out, err = spotctl("rm", job, "--force", "--json")
    assert code == 0, err
    [removed] = json.loads(out)["removed"]
    assert sorted(removed["terminated"]) == sorted(n.instance_id for n in attempt.nodes)
    assert removed["groups_left"] == []
    assert settled_ec2().describe_placement_groups()["PlacementGroups"] == []
