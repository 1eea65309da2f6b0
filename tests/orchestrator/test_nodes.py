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
    # No stack's group: spotctl's group for several nodes admits its own members, nothing else.
    groups = {g["GroupId"] for i in live.values() for g in i["NetworkInterfaces"][0]["Groups"]}
    [group] = settled_ec2().describe_security_groups(GroupIds=list(groups))["SecurityGroups"]
    assert group["GroupName"] == "spotctl-own-nodes-only"
    [rule] = group["IpPermissions"]
    assert rule["IpProtocol"] == "-1" and [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [group["GroupId"]]
    assert not rule.get("IpRanges") and not rule.get("Ipv6Ranges") and not rule.get("PrefixListIds")
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


def watcher(job_id: str):
    from orchestrator.cli import context
    from orchestrator.jobs.watch import Watcher, WatchOptions
    from trainer.job.settings import Settings

    return Watcher(
        JobStore(STORAGE),
        [job_id],
        context.App(Settings.from_env()).clouds(None),
        context.aws_prices,
        WatchOptions(),
    )


def heartbeat(job_id: str, attempt: int, phase: str) -> None:
    from datetime import datetime, timezone

    body = {"attempt": attempt, "phase": phase, "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    JobStore(STORAGE).write(job_id, layout.HEARTBEAT, json.dumps(body).encode())


def test_one_lost_node_of_two_is_replaced_alone_and_the_survivor_keeps_its_machine(account, aws, spotctl, tmp_path):
    code, out, err = spotctl("launch", nodes_job(tmp_path))
    assert code == 0, err
    job = launched_id(out)
    store = JobStore(STORAGE)
    first = store.read_record(job).attempts[-1]
    survivor, lost = first.nodes[0].instance_id, first.nodes[1].instance_id
    # The spot notice on node 1: both ranks checkpoint and exit 75 (rank 0 says so); EC2 has not taken it yet.
    heartbeat(job, 1, "interrupted")
    before = aws.calls().get("ec2:RunInstances:sent", 0)
    watcher(job).poll()
    assert len(store.read_record(job).attempts) == 1  # which node to replace is not known until one goes
    assert aws.calls().get("ec2:RunInstances:sent", 0) == before

    aws.interrupt(lost)
    watcher(job).poll()
    record = store.read_record(job)
    ended, attempt = record.attempts
    assert [(n.rank, n.lost, n.kept) for n in ended.nodes] == [(0, False, False), (1, True, False)]
    assert ended.nodes[1].state_reason == "Server.SpotInstanceTermination" and ended.ended_at
    assert ended.nodes[0].ended_at == ended.ended_at  # the survivor served attempt 1 until it ended
    assert aws.calls()["ec2:RunInstances:sent"] == before + 1  # the lost rank only
    assert [(n.rank, n.kept) for n in attempt.nodes] == [(0, True), (1, False)]
    assert attempt.nodes[0].instance_id == survivor == attempt.instance_id and attempt.nodes[0].since == ended.ended_at
    replaced = attempt.nodes[1].instance_id
    assert replaced not in (survivor, lost) and attempt.nodes[1].zone == ended.nodes[1].zone
    live = {i["InstanceId"]: i for i in instances()}
    assert tags_of(live[survivor])[TAG_ATTEMPT] == "2" and tags_of(live[replaced])[TAG_ATTEMPT] == "2"
    assert tags_of(live[replaced])[TAG_NODE] == "1"
    assert aws.strict.placement_groups.group_of("us-east-1", replaced) == f"spotctl-{job}"
    plan = NodePlan.parse(store.read_bytes(job, layout.node_plan(2)))
    assert plan.nodes == {"0": survivor, "1": replaced}  # where the survivor's bootstrap learns it goes on

    # A second driver (another watch, the controller) starts nothing more.
    watcher(job).poll()
    assert aws.calls()["ec2:RunInstances:sent"] == before + 1 and len(store.read_record(job).attempts) == 2
    code, out, err = spotctl("status", job, "--storage", STORAGE, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert [(n["rank"], n["instance_id"], n["kept"], n["lost"]) for n in shown["attempts"][1]["nodes"]] == [
        (0, survivor, True, False),
        (1, replaced, False, False),
    ]
    code, out, err = spotctl("status", job, "--storage", STORAGE)
    assert code == 0, err
    assert f"attempt 1 nodes: 0 {survivor}, 1 {lost} (lost)" in out
    assert f"attempt 2 nodes: 0 {survivor} (kept), 1 {replaced}" in out


def test_a_dead_launchers_half_started_gang_is_adopted_node_by_node_and_completed(account, aws, spotctl, tmp_path):
    """A spotctl that died mid-launch left attempt 2 claimed with its nodes' tokens, ranks 0 and 2
    started, rank 1 not: the resume adopts the two (found by their tags, no RunInstances for them) and
    starts rank 1 only."""
    from datetime import datetime, timedelta, timezone

    from orchestrator.aws import placement
    from orchestrator.aws.ec2 import describe_image, run_instance
    from orchestrator.aws.offers import find_offers
    from orchestrator.cli import context
    from orchestrator.jobs.launch import _claim_nodes, bootstrap_script, node_token
    from orchestrator.jobs.recover import job_spec, settle_view
    from orchestrator.jobs.views import read_views
    from trainer.job.settings import Settings

    code, out, err = spotctl("launch", nodes_job(tmp_path, nodes=3))
    assert code == 0, err
    job, store = launched_id(out), JobStore(STORAGE)
    for node in store.read_record(job).attempts[-1].nodes:
        aws.interrupt(node.instance_id)  # the whole gang lost: attempt 2 starts all three again
    clouds = context.App(Settings.from_env()).clouds(None)
    settle_view(store, read_views(store, [job], clouds)[0])
    # The dead launcher, with spotctl's own steps: its claim, then RunInstances for ranks 0 and 2.
    record, spec, cloud = store.read_record(job), job_spec(store, job), clouds("us-east-1")
    image = describe_image(cloud, record.ami)
    offer = find_offers(cloud, spec.compute, context.aws_prices(cloud), image).ranked[0]
    tokens = {rank: node_token(job, 2, rank, offer) for rank in range(3)}
    store.update_record(job, lambda r: _claim_nodes(r, 2, offer, tokens, "gone/1/x", spec.compute))
    group = placement.ensure_group(cloud, job)
    orphans = {
        rank: run_instance(
            cloud,
            spec,
            job,
            2,
            offer,
            image.id,
            image.root_device,
            bootstrap_script(spec, job, 2, record.wheel_url, node_rank=rank),
            tokens[rank],
            node=rank,
            placement_group=group,
        )
        for rank in (0, 2)
    }

    def died_long_ago(r):
        r.attempts[-1].requested_at = (datetime.now(timezone.utc) - timedelta(minutes=6)).isoformat(timespec="seconds")

    store.update_record(job, died_long_ago)
    settled_ec2()  # minutes later: EC2 lists the machines it left
    before = aws.calls()["ec2:RunInstances:sent"]
    code, out, err = spotctl("resume", job, "--storage", STORAGE, "--json")
    assert code == 0, err
    assert aws.calls()["ec2:RunInstances:sent"] == before + 1  # rank 1's machine, the one never started
    attempt = store.read_record(job).attempts[-1]
    assert attempt.number == 2 and attempt.instance_id == orphans[0] == attempt.nodes[0].instance_id
    assert attempt.nodes[2].instance_id == orphans[2] and attempt.nodes[1].instance_id not in orphans.values()
    live = [i for i in instances() if tags_of(i)[TAG_ATTEMPT] == "2" and i["State"]["Name"] in ("pending", "running")]
    assert sorted((tags_of(i)[TAG_NODE], i["InstanceId"]) for i in live) == [
        (str(n.rank), n.instance_id) for n in attempt.nodes
    ]  # exactly one machine per rank: none doubled, none orphaned
    plan = NodePlan.parse(store.read_bytes(job, layout.node_plan(2)))
    assert plan.nodes == {str(n.rank): n.instance_id for n in attempt.nodes}


def test_resume_while_every_node_still_runs_refuses_as_for_a_running_job_and_changes_nothing(
    account, aws, spotctl, tmp_path
):
    code, out, err = spotctl("launch", nodes_job(tmp_path))
    assert code == 0, err
    job, store = launched_id(out), JobStore(STORAGE)
    nodes = store.read_record(job).attempts[-1].nodes
    code, _, err = spotctl("resume", job, "--storage", STORAGE)
    assert code == 1 and err.splitlines() == [
        f"error: job {job}: not resumed, it is running (attempt 1 on {nodes[0].instance_id})",
        "hint: `spotctl status JOB` shows it; `spotctl stop JOB` stops it",
    ]  # what a single-node job says
    # The spot notice reached one node (every rank checkpointed and said so); EC2 has not taken it yet.
    heartbeat(job, 1, "interrupted")
    code, _, err = spotctl("resume", job, "--storage", STORAGE)
    ids = ", ".join(n.instance_id for n in nodes)
    assert code == 1 and err.splitlines() == [
        f"error: job {job}: not resumed, it is running (attempt 1 on {ids})",
        "hint: every node's machine still runs: `spotctl resume JOB` again once one is gone (a spot notice's goes "
        "within two minutes); `spotctl status JOB` shows it; `spotctl stop JOB` stops it",
    ]
    assert len(store.read_record(job).attempts) == 1 and aws.calls()["ec2:RunInstances:sent"] == 2  # nothing started
    aws.interrupt(nodes[1].instance_id)  # now it is known which node to replace
    code, out, err = spotctl("resume", job, "--storage", STORAGE)
    assert code == 0 and out.startswith(f"resumed {job}: attempt 2 "), err
