"""The pure part of multi-GPU training: who a process is, how the global batch splits into ranks'
shares and micro-batches, and the loss scale that makes the micro-batches' gradients the batch's."""

from __future__ import annotations

import pytest

from trainer.distributed import BatchPlan, Ranks, loss_share, shard, split_batch


def test_ranks_come_from_torchruns_environment_and_default_to_one_process():
    assert Ranks.from_env({}) == Ranks(0, 0, 1) and Ranks.from_env({}).is_main
    ranks = Ranks.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (ranks.rank, ranks.local_rank, ranks.world_size, ranks.is_main, ranks.distributed) == (3, 1, 4, False, True)
    with pytest.raises(ValueError, match="RANK=4 LOCAL_RANK=0 WORLD_SIZE=4"):
        Ranks.from_env({"RANK": "4", "WORLD_SIZE": "4"})


@pytest.mark.parametrize(
    "global_batch, world, cap, plan",
    [
        (32, 1, None, BatchPlan(32, 32, 1)),  # one process, no cap: as before
        (32, 2, None, BatchPlan(16, 16, 1)),
        (32, 2, 8, BatchPlan(16, 8, 2)),
        (32, 4, 8, BatchPlan(8, 8, 1)),  # the share fits: no accumulation
        (256, 8, 12, BatchPlan(32, 11, 3)),  # 32 in 3 forwards of at most 11 (under the cap of 12)
        (30, 4, None, BatchPlan(8, 8, 1)),  # uneven: shares of 8, 8, 7, 7
        (32, 1, 5, BatchPlan(32, 5, 7)),  # one GPU too small for the batch: 7 micro-batches
    ],
)
def test_split_batch_gives_each_rank_its_share_in_micro_batches_under_the_cap(global_batch, world, cap, plan):
    assert split_batch(global_batch, world, cap) == plan
    shares = [len(shard(list(range(global_batch)), r, world)) for r in range(world)]
    assert sum(shares) == global_batch and max(shares) - min(shares) <= 1 and max(shares) == plan.per_rank
    for share in shares:  # every rank runs the same number of forwards, none empty, none above the cap
        sizes = plan.micro_batches(share)
        assert len(sizes) == plan.accumulation and sum(sizes) == share and min(sizes) >= 1
        assert max(sizes) <= plan.micro


def test_split_batch_refuses_fewer_images_than_ranks_and_a_cap_below_one():
    with pytest.raises(ValueError, match="train.batch_size 2 is smaller than the 4 training processes"):
        split_batch(2, 4)
    with pytest.raises(ValueError, match="max_batch_per_gpu must be at least 1"):
        split_batch(8, 2, 0)


def test_shards_are_contiguous_slices_that_rebuild_the_global_batch_in_order():
    batch = list("abcdefg")
    assert [shard(batch, r, 3) for r in range(3)] == [list("abc"), list("de"), list("fg")]
    assert shard(batch, 0, 1) == batch
    assert [shard(["x"], r, 2) for r in range(2)] == [["x"], []]  # a short last (validation) batch


@pytest.mark.parametrize("world, micro_sizes", [(1, [32]), (1, [11, 11, 10]), (2, [8, 8]), (4, [3, 3, 2])])
def test_the_scaled_micro_batch_losses_weigh_every_image_as_the_global_mean_does(world, micro_sizes):
    """DDP divides the ranks' summed gradients by the world size; each image must end with weight
    1 / global batch, as in the global batch's mean loss."""
    global_batch = sum(micro_sizes) * world
    per_image = [loss_share(n, world, global_batch) / n / world for n in micro_sizes]
    assert all(w == pytest.approx(1 / global_batch) for w in per_image)
