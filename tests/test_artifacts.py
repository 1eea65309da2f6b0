"""`spotctl artifacts`: list a job's exported models, download them with every sha256 verified, and
refuse a corrupted one (against the moto server, the objects laid out as trainer.export writes them)."""

from __future__ import annotations

import hashlib
import json

import boto3

ROOT = "root"


def publish(bucket: str, job_id: str, files: dict[str, bytes]) -> dict:
    s3 = boto3.client("s3")
    manifest = {"job_id": job_id, "checkpoint_step": 96, "source": "best/ (epoch 8)", "formats": {"state_dict": {"status": "ok", "files": sorted(files)},
                "onnx": {"status": "failed", "reason": "this spotctl version does not export onnx yet"}}, "files": {}}
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"{ROOT}/jobs/{job_id}/artifacts/{name}", Body=body)
        manifest["files"][name] = {"format": "state_dict", "sha256": hashlib.sha256(body).hexdigest(), "size": len(body), "input_shape": [None, 3, 64, 64]}
    s3.put_object(Bucket=bucket, Key=f"{ROOT}/jobs/{job_id}/artifacts/manifest.json", Body=json.dumps(manifest).encode())
    return manifest


def test_artifacts_are_listed_downloaded_verified_and_a_corrupted_one_is_refused(s3_bucket, spotctl, tmp_path):
    storage = f"s3://{s3_bucket}/{ROOT}"
    weights, description = b"\x00weights" * 200_000, b'{"architecture": "resnet18"}'
    manifest = publish(s3_bucket, "j1", {"model.safetensors": weights, "model.json": description})

    code, out, _ = spotctl("artifacts", "j1", "--storage", storage)
    lines = out.splitlines()
    assert code == 0 and lines[0].rstrip() == "artifacts of j1 (from step 96, best/ (epoch 8))"
    assert lines[3].split() == ["model.json", "state_dict", "28", "B", manifest["files"]["model.json"]["sha256"][:16]]
    assert lines[4].split() == ["model.safetensors", "state_dict", "1.5", "MiB", manifest["files"]["model.safetensors"]["sha256"][:16]]
    assert lines[-1] == "onnx: not exported (this spotctl version does not export onnx yet)"
    code, out, _ = spotctl("artifacts", "j1", "--storage", storage, "--json")
    assert code == 0 and json.loads(out) == manifest

    code, out, err = spotctl("artifacts", "j1", "--storage", storage, "--download", str(tmp_path / "got"))
    assert code == 0, err
    assert (tmp_path / "got/model.safetensors").read_bytes() == weights and (tmp_path / "got/model.json").read_bytes() == description
    assert out.splitlines()[1].endswith(f"sha256 {manifest['files']['model.safetensors']['sha256'][:16]}... verified")

    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{ROOT}/jobs/j1/artifacts/model.safetensors", Body=weights[:-1] + b"!")  # one byte changed
    code, out, err = spotctl("artifacts", "j1", "--storage", storage, "--download", str(tmp_path / "again"))
    assert code == 1 and err.startswith("error: artifacts/model.safetensors: sha256 ")
    assert "does not match the manifest's" in err and "hint: the file changed after the export" in err
    assert not (tmp_path / "again/model.safetensors").exists() and [p.name for p in (tmp_path / "again").iterdir()] == ["model.json"]


def test_a_job_without_artifacts_says_so(s3_bucket, spotctl):
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{ROOT}/jobs/j2/record.json", Body=b"{}")
    code, _, err = spotctl("artifacts", "j2", "--storage", f"s3://{s3_bucket}/{ROOT}")
    assert code == 1 and err.splitlines()[0] == f"error: job j2 has no exported artifacts yet (s3://{s3_bucket}/{ROOT}/jobs/j2/artifacts/manifest.json is missing)"
