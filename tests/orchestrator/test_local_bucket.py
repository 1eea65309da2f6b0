"""The local cloud's bucket: what `local down` says it deletes, what `--keep` keeps and the next `up`
puts back, and `spotctl local data shapes` (the quickstart's dataset), against a real moto server.
The daemon's side of them runs in tests/e2e/test_local_cloud.py."""

from __future__ import annotations

import json

import boto3
import yaml

from orchestrator.local import bucket, datasets
from orchestrator.local.daemon import BUCKET, STORAGE_PREFIX
from testbed import REPO

WHEEL = f"{STORAGE_PREFIX}/wheels/{'ab' * 32}/spotctl-0.1.0-py3-none-any.whl"
OBJECTS = {
    f"{STORAGE_PREFIX}/jobs/quickstart-261125-fbe7/record.json": b'{"job_id": "quickstart-261125-fbe7"}',
    f"{STORAGE_PREFIX}/jobs/quickstart-261125-fbe7/status/final.json": b'{"outcome": "succeeded"}',
    f"{STORAGE_PREFIX}/jobs/quickstart-261125-0a1b/job.yaml": b"name: quickstart\n",
    WHEEL: b"PK" + bytes(2000),
    "datasets/shapes/train/circle/0000.png": b"\x89PNG",
    "datasets/shapes/val/circle/0000.png": b"\x89PNG",
    f"{STORAGE_PREFIX}/controller/tick.json": b"{}",  # spotctl's own bookkeeping: counted, not data
}


def _fill(s3) -> None:
    s3.create_bucket(Bucket=BUCKET)
    for key, body in OBJECTS.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def _objects(s3) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {e["Key"]: s3.get_object(Bucket=BUCKET, Key=e["Key"])["Body"].read() for e in listed}


def test_the_contents_are_told_apart_as_jobs_wheels_and_data(aws):
    s3 = boto3.client("s3")
    _fill(s3)
    found = bucket.contents(s3, BUCKET, STORAGE_PREFIX)
    assert (found.jobs, found.wheels, found.data, found.objects) == (
        ["quickstart-261125-0a1b", "quickstart-261125-fbe7"],
        1,
        {"datasets/shapes": 2},
        7,
    )
    assert found.describe() == ("2 jobs, 1 wheel and 2 objects of data (datasets/shapes); 7 objects, 2.0 KiB in all")
    assert bucket.Contents().describe() == "no objects"
    tick_only = bucket.Contents(objects=1, bytes=300)  # the controller's tick: no job, wheel or data
    assert tick_only.describe() == "only spotctl's bookkeeping; 1 object, 0.3 KiB in all"


def test_kept_objects_come_back_whole_in_a_new_bucket(aws, tmp_path):
    s3 = boto3.client("s3")
    _fill(s3)
    folder = tmp_path / bucket.KEPT
    assert bucket.save(s3, BUCKET, folder, {"seed": 7}) == len(OBJECTS)
    assert bucket.kept_settings(folder) == {"seed": 7}
    aws.reset()  # the cloud is gone: moto starts empty
    s3.create_bucket(Bucket=BUCKET)
    assert _objects(s3) == {}
    assert bucket.restore(s3, BUCKET, folder) == len(OBJECTS)
    assert _objects(s3) == OBJECTS
    assert not folder.exists() and bucket.kept_settings(folder) is None  # restored once, then forgotten
    assert bucket.restore(s3, BUCKET, folder) == 0


def test_keeping_again_replaces_what_was_kept(aws, tmp_path):
    s3 = boto3.client("s3")
    _fill(s3)
    folder = tmp_path / bucket.KEPT
    bucket.save(s3, BUCKET, folder, {"seed": 1})
    s3.delete_object(Bucket=BUCKET, Key=WHEEL)
    assert bucket.save(s3, BUCKET, folder, {"seed": 2}) == len(OBJECTS) - 1
    assert not (folder / bucket.OBJECTS / WHEEL).exists() and bucket.kept_settings(folder) == {"seed": 2}


def test_the_quickstart_reads_the_sample_the_data_command_uploads():
    spec = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
    url = datasets.QUICKSTART.url
    assert (spec["train"]["data"]["train"], spec["train"]["data"]["val"]) == (f"{url}/train", f"{url}/val")
    assert datasets.QUICKSTART.used_by == "examples/quickstart.yaml"
    assert datasets.upload_hint(spec["train"]["data"]["train"]) == "`spotctl local data shapes` uploads it"
    assert datasets.upload_hint("s3://spotctl-local/datasets/shapes2/train") is None


def test_the_data_command_draws_the_shapes_into_the_bucket_replacing_what_was_there(aws, spotctl):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    first = datasets.upload(aws.endpoint, "shapes", {"per_class": 4, "size": 16, "seed": 1})
    assert (first.url, first.images, first.classes) == (datasets.QUICKSTART.url, {"train": 20, "val": 10}, 5)
    again = datasets.upload(aws.endpoint, "shapes", {"per_class": 3, "size": 16})
    assert again.images == {"train": 15, "val": 10}  # the fourth image of each class is gone
    keys = [e["Key"] for e in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 25 and "datasets/shapes/train/ring/0002.png" in keys


def test_the_data_command_needs_a_running_cloud(spotctl):
    code, out, err = spotctl("local", "data", "shapes")
    assert (code, out) == (1, "")
    assert "the local cloud is not running" in err and "spotctl local up" in err


def test_local_status_of_a_stopped_cloud_says_what_was_kept(spotctl, tmp_path, monkeypatch):
    from orchestrator.local import client

    code, out, _ = spotctl("local", "status")
    assert code == 1 and out == f"no local cloud running (home {client.home()}); start one with `spotctl local up`\n"
    client.kept_folder().mkdir(parents=True)
    (client.kept_folder() / bucket.SETTINGS).write_text(json.dumps({"seed": 7}))
    code, out, _ = spotctl("local", "status")
    assert code == 1 and out.splitlines()[1] == (
        "`spotctl local down --keep` kept its jobs and data: `spotctl local up` puts them back"
    )
    code, out, _ = spotctl("local", "status", "--json")
    assert json.loads(out) == {"running": False, "kept": {"seed": 7}}


def test_the_local_trainer_role_reads_the_sample_datasets_and_writes_only_its_own(aws):
    """As a stack deployed with `--data-read s3://spotctl-local/datasets/`: `doctor --local` and
    `launch --local --dry-run` of the quickstart found its data out of the role's reach before."""
    from orchestrator.aws.policy_check import Request, allows, role_policies
    from orchestrator.local.daemon import INSTANCE_PROFILE, seed_trainer_role

    iam = boto3.client("iam")
    seed_trainer_role(iam)
    documents = role_policies(iam, INSTANCE_PROFILE)
    image = f"arn:aws:s3:::{BUCKET}/datasets/shapes/train/circle/0000.png"
    assert allows(documents, Request("s3:GetObject", image))
    assert allows(documents, Request("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", "datasets/shapes/train/"))
    assert not allows(documents, Request("s3:PutObject", image))
    assert not allows(documents, Request("s3:GetObject", f"arn:aws:s3:::{BUCKET}/elsewhere/x"))
