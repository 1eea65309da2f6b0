"""`spotctl artifacts`: list a job's exported models, download them with every sha256 verified, and
refuse a corrupted one (against the moto server, the objects laid out as trainer.export writes them)."""

from __future__ import annotations

import hashlib
import json

import boto3

ROOT = "root"


INT8 = {
    "status": "ok",
    "files": ["model.int8.pt"],
    "validation": {"batch": 8, "max_abs_diff": 0.21, "top1_agreement": 1.0},
    "validation_set": {"images": 400, "sqnr_db": 31.4, "top1_agreement": 0.9925},
    "size": {"fp32_bytes": 44_800_000, "int8_bytes": 11_400_000, "ratio": 3.93},
    "cpu_latency_ms": {"fp32": {"1": 4.8, "8": 14.6}, "int8": {"1": 0.8, "8": 2.9}, "threads": 2},
    "speedup": {"1": 6.0, "8": 5.03},
    "speedup_spread": {
        "1": {"pairs": 15, "iqr": [5.7, 6.3], "range": [4.9, 6.6]},
        "8": {"pairs": 15, "iqr": [4.8, 5.2], "range": [4.1, 5.6]},
    },
    "speedup_note": None,
    "tolerance": {"min_top1_agreement": 0.9},
}


def publish(bucket: str, job_id: str, files: dict[str, tuple[str, bytes]]) -> dict:
    """Artifacts laid out as trainer.export writes them: `files` maps each name to (format, body)."""
    s3 = boto3.client("s3")
    manifest = {
        "job_id": job_id,
        "checkpoint_step": 96,
        "source": "best/ (epoch 8)",
        "formats": {
            "state_dict": {
                "status": "ok",
                "files": ["model.safetensors", "model.json"],
                "validation": {"batch": 8, "max_abs_diff": 0.0, "top1_agreement": 1.0},
            },
            "onnx": {"status": "failed", "reason": "ModuleNotFoundError: No module named 'onnxscript'"},
            "int8": INT8,
        },
        "files": {},
    }
    for name, (fmt, body) in files.items():
        s3.put_object(Bucket=bucket, Key=f"{ROOT}/jobs/{job_id}/artifacts/{name}", Body=body)
        manifest["files"][name] = {
            "format": fmt,
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": len(body),
            "input_shape": [None, 3, 64, 64],
        }
    s3.put_object(
        Bucket=bucket, Key=f"{ROOT}/jobs/{job_id}/artifacts/manifest.json", Body=json.dumps(manifest).encode()
    )
    return manifest


def test_artifacts_are_listed_downloaded_verified_and_a_corrupted_one_is_refused(s3_bucket, spotctl, tmp_path):
    storage = f"s3://{s3_bucket}/{ROOT}"
    weights, description, quantized = b"\x00weights" * 200_000, b'{"architecture": "resnet18"}', b"\x01int8" * 1000
    manifest = publish(
        s3_bucket,
        "j1",
        {
            "model.safetensors": ("state_dict", weights),
            "model.json": ("state_dict", description),
            "model.int8.pt": ("int8", quantized),
        },
    )

    code, out, _ = spotctl("artifacts", "j1", "--storage", storage)
    lines = out.splitlines()
    assert code == 0 and lines[0].rstrip() == "artifacts of j1 (from step 96, best/ (epoch 8))"
    assert lines[3].split() == [
        "model.int8.pt",
        "int8",
        "4.9",
        "KiB",
        manifest["files"]["model.int8.pt"]["sha256"][:16],
    ]
    assert lines[4].split() == ["model.json", "state_dict", "28", "B", manifest["files"]["model.json"]["sha256"][:16]]
    assert lines[5].split() == [
        "model.safetensors",
        "state_dict",
        "1.5",
        "MiB",
        manifest["files"]["model.safetensors"]["sha256"][:16],
    ]
    assert lines[-3:] == [
        "state_dict: matches the model on 8 validation images (max abs diff 0, top-1 agreement 100%)",
        "onnx: not exported (ModuleNotFoundError: No module named 'onnxscript')",
        "int8: 3.9x smaller than fp32, 5.0x faster at batch 8, 6.0x faster at batch 1 on 2 CPU threads; top-1 agreement 99.2%, SQNR 31.4 dB on 400 "
        "validation images",
    ]
    code, out, _ = spotctl("artifacts", "j1", "--storage", storage, "--json")
    assert code == 0 and json.loads(out) == manifest

    code, out, err = spotctl("artifacts", "j1", "--storage", storage, "--download", str(tmp_path / "got"))
    assert code == 0, err
    assert (tmp_path / "got/model.safetensors").read_bytes() == weights and (
        tmp_path / "got/model.json"
    ).read_bytes() == description
    assert (tmp_path / "got/model.int8.pt").read_bytes() == quantized
    assert out.splitlines()[2].endswith(f"sha256 {manifest['files']['model.safetensors']['sha256'][:16]}... verified")

    boto3.client("s3").put_object(
        Bucket=s3_bucket, Key=f"{ROOT}/jobs/j1/artifacts/model.safetensors", Body=weights[:-1] + b"!"
    )  # one byte changed
    code, out, err = spotctl("artifacts", "j1", "--storage", storage, "--download", str(tmp_path / "again"))
    assert code == 1 and err.startswith("error: artifacts/model.safetensors: sha256 ")
    assert "does not match the manifest's" in err and "hint: the file changed after the export" in err
    assert not (tmp_path / "again/model.safetensors").exists() and sorted(
        p.name for p in (tmp_path / "again").iterdir()
    ) == ["model.int8.pt", "model.json"]


def test_a_job_without_artifacts_says_so(s3_bucket, spotctl):
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{ROOT}/jobs/j2/record.json", Body=b"{}")
    code, _, err = spotctl("artifacts", "j2", "--storage", f"s3://{s3_bucket}/{ROOT}")
    assert (
        code == 1
        and err.splitlines()[0]
        == f"error: job j2 has no exported artifacts yet (s3://{s3_bucket}/{ROOT}/jobs/j2/artifacts/manifest.json is missing)"
    )


def test_status_sums_up_the_formats_in_one_line():
    from orchestrator.jobs.artifacts import summary

    manifest = {"formats": {"state_dict": {"status": "ok"}, "onnx": {"status": "failed", "reason": "x"}, "int8": INT8}}
    assert (
        summary(manifest)
        == "state_dict, int8 (3.9x smaller, 5.0x faster, top-1 99%); failed: onnx (`spotctl artifacts JOB` says why)"
    )
    assert summary({"formats": {"state_dict": manifest["formats"]["state_dict"]}}) == "state_dict"


def test_an_int8_speed_that_could_not_be_measured_is_not_given_as_a_number():
    """trainer.quantize leaves the ratio None when its interleaved timings cannot tell; a slowdown
    reads as slower, never as "0.7x faster"."""
    from orchestrator.jobs.artifacts import describe, summary

    noisy = {
        **INT8,
        "speedup": {"1": 0.7, "8": None},
        "speedup_note": "batch 8: per-pair ratios 0.90x to 5.10x (interquartile) lie on both sides of 1",
    }
    assert summary({"formats": {"int8": noisy}}) == "int8 (3.9x smaller, speed not measured reliably, top-1 99%)"
    assert describe("int8", noisy) == (
        "int8: 3.9x smaller than fp32, speed not measured reliably at batch 8, 1.4x slower at batch 1 on 2 CPU threads; "
        "top-1 agreement 99.2%, SQNR 31.4 dB on 400 validation images; why the speed is unknown: batch 8: per-pair "
        "ratios 0.90x to 5.10x (interquartile) lie on both sides of 1"
    )
    assert summary({"formats": {"int8": {**INT8, "speedup": {"8": 1.02}}}}) == (
        "int8 (3.9x smaller, as fast as fp32, top-1 99%)"
    )
