"""Training data: fetching (local, S3, tar), ImageFolder indexes, transforms, and exact-resume sampling."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import fsspec
import pytest
import torch

from trainer import data
from trainer.fetch import DataError, fetch
from trainer.job.spec import DataSpec, ModelSpec


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def png_bytes(tmp_path: Path) -> bytes:
    folder = tmp_path / "one"
    from testbed.harness import make_image_folder

    made = make_image_folder(folder, classes=("a", "b"), per_class={"train": 1})
    return Path(made.files["train"][0]).read_bytes()


# ------------------------------------------------------------------------------------------- fetch
def test_a_local_folder_is_used_in_place(image_folder, tmp_path):
    made = image_folder()
    assert fetch(made.split("train"), "train.data.train", tmp_path / "cache") == Path(made.split("train"))
    assert not (tmp_path / "cache").exists()


def test_missing_local_data_names_the_field(tmp_path):
    with pytest.raises(DataError, match=r"^train.data.val: .*/nope does not exist; check the location"):
        fetch(str(tmp_path / "nope"), "train.data.val", tmp_path / "cache")


def test_a_tar_archive_is_extracted_once_into_the_cache(tmp_path):
    image = png_bytes(tmp_path)
    archive = make_tar(tmp_path / "flowers.tar", {"flowers/rose/1.png": image, "flowers/tulip/1.png": image})
    root = fetch(str(archive), "train.data.train", tmp_path / "cache")
    assert sorted(p.name for p in root.iterdir()) == ["rose", "tulip"]  # stepped into the lone top folder
    (root / "rose" / "1.png").write_bytes(b"changed")  # a second fetch reuses the extraction
    assert (fetch(str(archive), "train.data.train", tmp_path / "cache") / "rose" / "1.png").read_bytes() == b"changed"


@pytest.mark.parametrize(
    "members, links, message",
    [
        ({"../evil.png": b"x"}, None, "'../evil.png' points outside the dataset folder"),
        ({"/etc/evil.png": b"x"}, None, "'/etc/evil.png' points outside the dataset folder"),
        ({"a/1.png": b"x"}, {"a/link.png": "/etc/passwd"}, "'a/link.png' is a link"),
    ],
)
def test_unsafe_archives_are_refused_and_nothing_is_written_outside(tmp_path, members, links, message):
    archive = make_tar(tmp_path / "bad.tar", members, links)
    with pytest.raises(DataError, match=message):
        fetch(str(archive), "train.data.train", tmp_path / "cache")
    assert not (tmp_path / "evil.png").exists()
    assert not list((tmp_path / "cache").rglob("*.png"))


def test_an_s3_folder_is_downloaded_to_the_cache_and_synced(s3_bucket, image_folder, tmp_path):
    made = image_folder(f"s3://{s3_bucket}/datasets/shapes", per_class={"train": 3})
    seen = []
    root = fetch(
        made.split("train"),
        "train.data.train",
        tmp_path / "cache",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) == sorted(
        f.split("/train/")[1] for f in made.files["train"]
    )
    assert seen[-1] == (9, 9)

    fs = fsspec.filesystem("s3")
    fs.rm(made.files["train"][0])
    fs.pipe(f"{s3_bucket}/datasets/shapes/train/circle/new.png", Path(root / "square" / "0000.png").read_bytes())
    seen.clear()
    root = fetch(
        made.split("train"),
        "train.data.train",
        tmp_path / "cache",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(9, 9)]  # only the new file was downloaded
    assert not (root / "circle" / "0000.png").exists() and (root / "circle" / "new.png").exists()


def test_missing_s3_data_names_the_field(s3_bucket, tmp_path):
    with pytest.raises(DataError, match=f"^train.data.train: s3://{s3_bucket}/nothing/here does not exist"):
        fetch(f"s3://{s3_bucket}/nothing/here", "train.data.train", tmp_path / "cache")


# ----------------------------------------------------------------------------------------- indexes
def test_scan_orders_classes_and_samples(image_folder):
    made = image_folder(per_class={"train": 2})
    index = data.scan(Path(made.split("train")), "train.data.train")
    assert index.classes == ["circle", "square", "triangle"]
    assert [Path(p).name for p, _ in index.samples[:2]] == ["0000.png", "0001.png"] and [
        label for _, label in index.samples
    ] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "has no class folders; an ImageFolder holds one folder per class"),
        ({"cat/readme.txt": b"x", "dog/1.png": b"x"}, "class folder 'cat' in .* has no images"),
        ({"cat/1.png": b"x"}, "has only the class 'cat'; a classifier needs at least two class folders"),
    ],
)
def test_unusable_folders_are_explained(tmp_path, layout, message):
    root = tmp_path / "train"
    root.mkdir()
    for name, body in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    with pytest.raises(DataError, match=message):
        data.scan(root, "train.data.train")


def test_train_and_val_must_have_the_same_classes(image_folder, tmp_path):
    train = data.scan(Path(image_folder(classes=("a", "b", "c")).split("train")), "train.data.train")
    val = data.scan(Path(image_folder(tmp_path / "other", classes=("a", "b", "d")).split("val")), "train.data.val")
    with pytest.raises(DataError, match=r"different class folders \(missing in val: c; only in val: d\)"):
        data.check_same_classes(train, val)


def test_the_val_split_is_seeded_and_disjoint():
    train, val = data.split_indices(50, 0.2, seed=3)
    assert (train, val) == data.split_indices(50, 0.2, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(50))
    assert val != data.split_indices(50, 0.2, seed=4)[1]
    with pytest.raises(DataError, match="too few to hold out"):
        data.split_indices(1, 0.5, seed=0)


# ----------------------------------------------------------------------------------------- loading
def test_the_sampler_resumes_at_the_first_unconsumed_batch():
    sampler = data.ResumableBatchSampler(20, 3, seed=5)
    sampler.set_position(epoch=2)
    full = list(sampler)
    assert len(full) == len(sampler) == 6  # drop_last: a batch of two would be the odd one out
    sampler.set_position(epoch=2, start_batch=4)
    assert list(sampler) == full[4:]
    sampler.set_position(epoch=3)
    assert list(sampler) != full  # reshuffled each epoch...
    sampler.set_position(epoch=2)
    assert list(sampler) == full  # ...from seed + epoch only


def test_augmentation_follows_the_sample_not_the_loading_order(image_folder):
    made = image_folder(per_class={"train": 2})
    index = data.scan(Path(made.split("train")), "train.data.train")
    spec = DataSpec(train=made.split("train"), image_size=24, augmentation={"color_jitter": 0.3})
    dataset = data.ImageDataset(
        index.samples, data.train_transform(spec, data.normalization(ModelSpec(name="resnet18", weights=None))), seed=1
    )
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = dataset[(0, 3)][0]
    assert torch.equal(torch.get_rng_state(), before)  # the training process's generator is untouched
    dataset[(0, 1)]
    assert torch.equal(dataset[(0, 3)][0], first)
    assert not torch.equal(dataset[(1, 3)][0], first)  # a new epoch, new augmentation


def test_bad_images_are_returned_for_counting_and_left_out_of_the_batch(image_folder):
    made = image_folder(per_class={"train": 1}, corrupt=1)
    index = data.scan(Path(made.split("train")), "train.data.train")
    spec = DataSpec(train=made.split("train"), image_size=16)
    dataset = data.ImageDataset(
        index.samples, data.val_transform(spec, data.normalization(ModelSpec(name="resnet18", weights=None))), seed=0
    )
    images, labels, bad = data.collate([dataset[(0, i)] for i in range(len(dataset))])
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 1, 2]
    assert [Path(b.path).name for b in bad] == ["corrupt-0.png"] and "UnidentifiedImageError" in bad[0].reason


def test_normalisation_comes_from_the_weights():
    resnet = data.normalization(ModelSpec(name="resnet50", weights="IMAGENET1K_V2"))
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.resize_ratio == pytest.approx(232 / 224)
    vit = data.normalization(ModelSpec(name="vit_b_16", weights="IMAGENET1K_SWAG_E2E_V1"))
    assert vit.mean == (0.485, 0.456, 0.406) and vit.resize_ratio == 1.0
    custom = data.normalization(ModelSpec(name="resnet18", weights=None))
    assert custom.resize_ratio == pytest.approx(256 / 224)


def test_a_cache_reached_through_a_symlink_is_reused(s3_bucket, image_folder, tmp_path):
    made = image_folder(f"s3://{s3_bucket}/datasets/linked", per_class={"train": 2})
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fetch(made.split("train"), "train.data.train", tmp_path / "link")
    seen = []
    fetch(made.split("train"), "train.data.train", tmp_path / "link", progress=lambda done, total: seen.append(done))
    assert seen == []  # nothing downloaded again


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_the_ranks_shards_are_the_single_process_batches_from_any_position(world, shuffle):
    """Each rank's batch is its slice of the one process's batch, so the ranks together see the same
    samples in the same order (and, keyed by (seed, epoch, index), the same augmentations), also
    from a resumed position, and whichever number of ranks resumes a checkpoint."""
    count, batch, seed = 29, 7, 3
    one = data.ResumableBatchSampler(count, batch, seed, shuffle)
    ranks = [data.ResumableBatchSampler(count, batch, seed, shuffle, rank=r, world_size=world) for r in range(world)]
    for epoch, start in ((0, 0), (1, 2), (4, 3)):
        for sampler in (one, *ranks):
            sampler.set_position(epoch, start)
        shards, batches = [list(sampler) for sampler in ranks], list(one)
        assert all(len(s) == len(batches) for s in shards)  # every rank goes through as many batches
        assert [sum((s[i] for s in shards), []) for i in range(len(batches))] == batches
