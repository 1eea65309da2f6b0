"""The harness itself: the moto server, its reset, the network guard, and the image datasets."""

from __future__ import annotations

import socket
from importlib.metadata import version
from pathlib import Path

import boto3
import fsspec
import pytest
from PIL import Image


def test_moto_server_listens_on_loopback_only(moto_server):
    assert moto_server.endpoint.startswith("http://127.0.0.1:")
    # The socket it really bound, not just the address we asked for (moto's default is 0.0.0.0).
    assert moto_server.bound_address() == ("127.0.0.1", moto_server.port)


def test_state_is_reset_between_tests(aws):
    s3 = boto3.client("s3")
    assert s3.list_buckets()["Buckets"] == []
    s3.create_bucket(Bucket="left-behind")
    aws.reset()
    assert s3.list_buckets()["Buckets"] == []


def test_clients_reach_moto_not_aws(aws):
    sts = boto3.client("sts")
    assert sts.meta.endpoint_url == aws.endpoint
    assert sts.get_caller_identity()["Account"] == "123456789012"  # moto's account


def test_network_guard_refuses_outside_addresses():
    with pytest.raises(ConnectionRefusedError, match="must not reach the network"):
        socket.create_connection(("203.0.113.7", 443), timeout=1)


def test_pinned_s3fs_is_current_and_talks_to_the_server(s3_bucket):
    major = int(version("s3fs").split(".")[0])
    assert major >= 2024, f"s3fs {version('s3fs')} is the 2019 fallback; check constraints.txt"
    with fsspec.open(f"s3://{s3_bucket}/probe.txt", "w") as handle:
        handle.write("hello")
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="probe.txt")["Body"].read()
    assert body == b"hello"


def test_local_image_folder_has_decodable_pngs_per_class(image_folder):
    data = image_folder(classes=("circle", "square"), per_class={"train": 3, "val": 2}, size=24)
    for split, expected in (("train", 6), ("val", 4)):
        assert len(data.files[split]) == expected
        for path in data.files[split]:
            with Image.open(path) as image:
                assert image.format == "PNG" and image.size == (24, 24)
    assert sorted(p.name for p in (data.root_path / "train").iterdir()) == ["circle", "square"]


def test_image_folder_on_s3_reads_back_through_s3fs(s3_bucket, image_folder):
    data = image_folder(f"s3://{s3_bucket}/datasets/shapes", per_class=2, corrupt=1)
    fs = fsspec.filesystem("s3")
    listed = sorted(fs.find(f"{s3_bucket}/datasets/shapes/train"))
    assert listed == sorted(data.files["train"])
    decodable = 0
    for path in listed:
        with fs.open(path, "rb") as handle:
            try:
                Image.open(handle).load()
                decodable += 1
            except OSError:
                assert "corrupt" in path
    assert decodable == 2 * len(data.classes)


def test_same_seed_same_images(tmp_path, image_folder):
    first = image_folder(tmp_path / "a", per_class=2, seed=3)
    second = image_folder(tmp_path / "b", per_class=2, seed=3)
    for a, b in zip(first.files["train"], second.files["train"], strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
