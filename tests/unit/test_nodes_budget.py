"""The budget check before a launch counts every node (compute.nodes)."""

from __future__ import annotations

import pytest

from orchestrator.aws.offers import InstanceType, Offer
from orchestrator.jobs.preflight import _what, budget_need
from trainer.job.spec_file import parse_spec

JOB = """name: demo
storage: s3://bucket-a/spotctl
compute:
  nodes: {nodes}
  disk_gib: 100
train:
  model:
    name: resnet18
  data:
    train: s3://bucket-a/data/train
  checkpoint:
    every_seconds: 540
"""
OFFER = Offer(InstanceType("g5.xlarge", 1, "A10G", 22.4, 4, 16.0), "us-east-1a", 0.4, 1.0, None)


def test_the_first_checkpoint_of_three_nodes_costs_three_times_one():
    one = budget_need(parse_spec(JOB.format(nodes=1)), OFFER)
    three = budget_need(parse_spec(JOB.format(nodes=3)), OFFER)
    assert three.usd == pytest.approx(3 * one.usd) and three.usd_per_hour == pytest.approx(3 * one.usd_per_hour)
    assert three.seconds == one.seconds == 600
    assert "on 3 x g5.xlarge ($0.4000/h spot + $0.0110/h volume and address each)" in _what(three, OFFER)
    assert "on g5.xlarge ($0.4000/h spot + $0.0110/h volume and address)" in _what(one, OFFER)


def test_a_multi_node_launch_says_which_types_lack_a_cluster_group_and_which_have_efa():
    from dataclasses import replace

    from orchestrator.jobs.launch import nodes_notes

    efa = replace(OFFER, instance=replace(OFFER.instance, name="p4d.24xlarge", efa=True))
    loose = replace(OFFER, instance=replace(OFFER.instance, name="t3.large", cluster_placement=False))
    assert nodes_notes(parse_spec(JOB.format(nodes=1)), [efa, loose]) == []
    assert nodes_notes(parse_spec(JOB.format(nodes=2)), [OFFER, efa, efa, loose]) == [
        "p4d.24xlarge has EFA, but spotctl launches its nodes with ENA only: NCCL between nodes runs over TCP "
        "(correct, slower for large models)",
        "t3.large cannot join a cluster placement group: its 2 nodes share a zone, not a rack",
    ]
