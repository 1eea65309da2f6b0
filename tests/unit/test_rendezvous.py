"""The rendezvous in storage (trainer.job.rendezvous), on a local folder (the same create-only rule
as S3's If-None-Match): every node registers once, node 0 is the master once all have, a node that
never comes is named within the timeout, a rank is never taken twice, a kept node finds its next rank."""

from __future__ import annotations

import threading

import pytest

from trainer.job import layout, rendezvous
from trainer.job.rendezvous import Rendezvous, RendezvousConflict, RendezvousTimeout
from trainer.job.storage import Storage


class Clock:
    """A clock that moves only when the code sleeps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def storage(tmp_path):
    return Storage(str(tmp_path / "job"))


def test_two_nodes_meet_and_node_0_is_the_master(storage):
    found = {}

    def node(rank, port):
        found[rank] = rendezvous.join(storage, 3, rank, 2, "127.0.0.1", port, f"i-{rank}", timeout_s=30, poll_s=0.01)

    threads = [threading.Thread(target=node, args=(r, 29500 + r)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found[0] == Rendezvous(3, 2, 0, "127.0.0.1", 29500)
    assert found[1] == Rendezvous(3, 2, 1, "127.0.0.1", 29500)  # every node gets node 0's address
    assert found[1].torchrun_args() == [
        "--nnodes=2",
        "--node-rank=1",
        "--master-addr=127.0.0.1",
        "--master-port=29500",
    ]
    assert sorted(storage.list(layout.rendezvous_of(3))) == ["node-0.json", "node-1.json"]


def test_a_node_that_never_registers_is_named_within_the_timeout(storage):
    clock = Clock()
    with pytest.raises(RendezvousTimeout) as caught:
        rendezvous.join(storage, 1, 0, 3, "10.0.0.5", instance_id="i-0", timeout_s=60, sleep=clock.sleep, clock=clock)
    assert str(caught.value).startswith("attempt 1: nodes 1, 2 of 3 did not register within 60 s (")
    assert 60 <= clock.now <= 62


def test_a_rank_is_registered_once_and_a_restarted_bootstrap_reads_back_its_own(storage):
    rendezvous.register(storage, 2, 1, "10.0.0.6", 29500, "i-a")
    assert rendezvous.register(storage, 2, 1, "10.0.0.6", 29500, "i-a").instance_id == "i-a"
    with pytest.raises(RendezvousConflict, match="node rank 1 is already registered by i-a"):
        rendezvous.register(storage, 2, 1, "10.0.0.7", 29500, "i-b")
    # Another attempt is another rendezvous: the replaced node's rank is free there.
    assert rendezvous.register(storage, 3, 1, "10.0.0.7", 29500, "i-b").host == "10.0.0.7"


def test_a_kept_node_learns_its_next_attempt_and_rank_from_the_plan(storage):
    clock = Clock()
    rendezvous.write_plan(storage, 5, {0: "i-kept", 1: "i-new"})
    rendezvous.write_plan(storage, 5, {0: "i-kept", 1: "i-new"})  # the same plan again: fine
    with pytest.raises(RendezvousConflict):
        rendezvous.write_plan(storage, 5, {0: "i-other", 1: "i-new"})
    assert rendezvous.wait_for_plan(storage, "i-kept", after=4, sleep=clock.sleep, clock=clock) == (5, 0)
    assert rendezvous.rank_in(storage, 5, "i-new") == 1 and rendezvous.rank_in(storage, 6, "i-new") is None
    with pytest.raises(RendezvousTimeout, match="attempt 5 goes on without i-lost"):
        rendezvous.wait_for_plan(storage, "i-lost", after=4, sleep=clock.sleep, clock=clock)
    with pytest.raises(RendezvousTimeout, match="no attempt after 5 named i-kept within 30 s"):
        rendezvous.wait_for_plan(storage, "i-kept", after=5, timeout_s=30, sleep=clock.sleep, clock=clock)


def test_the_command_prints_torchruns_arguments(storage, capsys):
    rendezvous.register(storage, 1, 0, "127.0.0.1", 29611, "i-0")
    code = rendezvous.main(
        [
            "join",
            "--storage",
            storage.url,
            "--attempt",
            "1",
            "--rank",
            "1",
            "--nodes",
            "2",
            "--address",
            "127.0.0.1:29612",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out == "--nnodes=2 --node-rank=1 --master-addr=127.0.0.1 --master-port=29611\n"
    code = rendezvous.main(
        [
            "join",
            "--storage",
            storage.url,
            "--attempt",
            "2",
            "--rank",
            "0",
            "--nodes",
            "2",
            "--address",
            "h",
            "--timeout",
            "0",
        ]
    )
    assert code == 1 and capsys.readouterr().err.startswith(
        "rendezvous: attempt 2: node 1 of 2 did not register within 0 s"
    )
