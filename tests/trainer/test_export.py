"""Export: a model trained briefly on a tiny dataset comes out in every format; each file is loaded back
with its own runtime (safetensors + torchvision, torch.jit.load, torch.export.load, onnxruntime, the
int8 TorchScript) and must agree with the original on the validation images within the tolerance the
manifest records. Re-export without training, and a format's failure costing no other format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision

from testbed.trainer_runs import write_job
from trainer import data as data_mod
from trainer import export, quantize
from trainer.__main__ import main as trainer_main
from trainer.checkpoint import Checkpointer
from trainer.job.spec_file import load_spec
from trainer.job.storage import Storage
from trainer.run import EXIT_FAILED, EXIT_SUCCEEDED, run

EVERY_FORMAT = ["state_dict", "torchscript", "exported", "onnx", "int8"]


@pytest.fixture
def trained(tmp_path, image_folder, trainer_in_process):
    """A resnet18 trained for two epochs on 60 shapes, exported in the formats asked for."""

    def train(formats: list[str], name: str = "export"):
        dataset = image_folder(per_class={"train": 20, "val": 10})
        job = write_job(
            tmp_path / f"{name}.yaml",
            "./runs",
            dataset.split("train"),
            dataset.split("val"),
            name=name,
            train__epochs=2,
            train__model__name="resnet18",
            train__export__formats=formats,
            train__export__calibration_images=40,
        )
        assert run(str(job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED
        return job, tmp_path / "runs" / "jobs" / name

    return train


def validation_images(job) -> torch.Tensor:
    spec = load_spec(str(job))
    data = data_mod.build(
        spec.train.data, spec.train.model, spec.train.seed, 64, Path(spec.train.data.train), Path(spec.train.data.val)
    )
    return torch.cat(list(data.validation_spread(10_000)))


def stored_files(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def best_model(prefix) -> tuple[torch.nn.Module, dict]:
    _, best = Checkpointer(Storage(str(prefix)), "best", keep=1).load_latest()
    model = torchvision.models.resnet18(num_classes=3).eval()
    model.load_state_dict(best["model"])
    return model, best


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_every_format_is_exported_and_each_loads_back_with_its_own_runtime_agreeing_within_its_tolerance(trained):
    import onnx
    import onnxruntime
    from safetensors.torch import load_file

    job, prefix = trained(EVERY_FORMAT)
    manifest = json.loads(
        (prefix / "artifacts/manifest.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"{c} in the manifest: not JSON"),
    )
    original, best = best_model(prefix)
    assert (
        manifest["job_id"] == "export"
        and manifest["torch"] == torch.__version__
        and manifest["torchvision"] == torchvision.__version__
    )
    assert manifest["source"] == f"best/ (epoch {best['epoch']})" and manifest["metrics"] == best["metrics"]
    assert (
        manifest["checkpoint_step"] == Checkpointer(Storage(str(prefix)), "best", keep=1).latest().step
    )  # where the model came from
    formats = manifest["formats"]
    assert {name: formats[name]["status"] for name in EVERY_FORMAT} == dict.fromkeys(EVERY_FORMAT, "ok"), formats
    assert {name: formats[name]["files"] for name in EVERY_FORMAT} == {
        "state_dict": ["model.safetensors", "model.json"],
        "torchscript": ["model.torchscript.pt"],
        "exported": ["model.pt2"],
        "onnx": ["model.onnx"],
        "int8": ["model.int8.pt"],
    }
    artifacts = prefix / "artifacts"
    assert sorted(stored_files(artifacts)) == sorted(
        ["manifest.json", *(e["path"] for e in manifest["files"].values())]
    )  # one .onnx, no .onnx.data
    assert {e["path"].split("/")[0] for e in manifest["files"].values()} == {
        manifest["export_id"]
    }  # this export's own folder
    for entry in manifest["files"].values():
        body = (artifacts / entry["path"]).read_bytes()
        assert (
            entry["sha256"] == hashlib.sha256(body).hexdigest()
            and entry["size"] == len(body)
            and entry["input_shape"] == [None, 3, 32, 32]
        )
    artifacts = artifacts / manifest["export_id"]

    # What a user does with each file, on every validation image, batch sizes other than the export's.
    images = validation_images(job)
    assert len(images) == 30
    info = json.loads((artifacts / "model.json").read_text())
    assert (
        info["classes"] == ["circle", "square", "triangle"]
        and info["input_size"] == 32
        and info["architecture"] == "resnet18"
    )
    rebuilt = getattr(torchvision.models, info["architecture"])(num_classes=info["num_classes"]).eval()
    rebuilt.load_state_dict(load_file(str(artifacts / "model.safetensors")))
    onnx.checker.check_model(str(artifacts / "model.onnx"), full_check=True)
    session = onnxruntime.InferenceSession(str(artifacts / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    runtimes = {
        "state_dict": rebuilt,
        "torchscript": torch.jit.load(str(artifacts / "model.torchscript.pt")),
        "exported": torch.export.load(str(artifacts / "model.pt2")).module(),
        "onnx": lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0]),
        "int8": torch.jit.load(str(artifacts / "model.int8.pt")),
    }
    with torch.no_grad():
        expected = original(images)
        for name, model in runtimes.items():
            got = torch.cat([model(images[:1]), model(images[1:])])  # batch 1, then 29: the batch dimension is dynamic
            tolerance = formats[name]["tolerance"]
            if name == "int8":
                agreement = float((got.argmax(1) == expected.argmax(1)).float().mean())
                assert agreement >= tolerance["min_top1_agreement"] == 0.9, (name, agreement)
            else:
                assert float((got - expected).abs().max()) <= tolerance["max_abs_diff"], name
                assert torch.equal(got.argmax(1), expected.argmax(1)), name

    quantized = formats["int8"]
    assert (
        quantized["calibration_images"] == 40
        and quantized["validation_set"]["images"] == 30
        and quantized["engine"] in ("x86", "qnnpack")
    )
    assert quantized["validation_set"]["sqnr_db"] > 15 and quantized["validation_set"]["top1_agreement"] >= 0.9
    assert quantized["size"]["int8_bytes"] == manifest["files"]["model.int8.pt"]["size"]
    assert (
        quantized["size"]["fp32_bytes"] / quantized["size"]["int8_bytes"] > 3.5
    )  # int8 weights: about a quarter of fp32
    assert (
        set(quantized["cpu_latency_ms"]["fp32"])
        == set(quantized["cpu_latency_ms"]["int8"])
        == set(quantized["speedup"])
        == set(quantized["speedup_spread"])
        == {"1", "8"}
    )
    # A median of interleaved pairs, or None with the reason (a shared CPU may not tell).
    for size, ratio in quantized["speedup"].items():
        spread = quantized["speedup_spread"][size]
        assert quantize.MIN_PAIRS <= spread["pairs"] <= quantize.MAX_PAIRS
        if ratio is None:
            assert f"batch {size}: " in quantized["speedup_note"]
        else:
            assert spread["iqr"][0] <= ratio <= spread["iqr"][1]
    assert (quantized["speedup_note"] is None) == (None not in quantized["speedup"].values())


def test_export_again_without_training_adds_formats_and_keeps_the_rest(trained, capsys):
    job, prefix = trained(["state_dict", "exported"], name="again")
    before = json.loads((prefix / "artifacts/manifest.json").read_text())
    heartbeat = (prefix / "status/heartbeat.json").read_bytes()
    kept = {part: stored_files(prefix / part) for part in ("checkpoints", "best", "metrics", "logs")}
    capsys.readouterr()

    assert trainer_main(["export", "--job", str(job), "--formats", "onnx", "torchscript", "exported"]) == EXIT_SUCCEEDED
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "onnx: ok, model.onnx",
        "torchscript: ok, model.torchscript.pt",
        "exported: ok, model.pt2",
        f"manifest: {prefix}/artifacts/manifest.json (checkpoint step {before['checkpoint_step']}, {before['source']})",
    ]
    after = json.loads((prefix / "artifacts/manifest.json").read_text())
    assert list(after["formats"]) == ["state_dict", "onnx", "torchscript", "exported"]
    assert after["formats"]["state_dict"] == before["formats"]["state_dict"]  # the same checkpoint: kept, not redone
    assert {k: v for k, v in after["files"].items() if v["format"] == "state_dict"} == {
        k: v for k, v in before["files"].items() if v["format"] == "state_dict"
    }
    assert (
        after["files"]["model.pt2"]["path"] == f"{after['export_id']}/model.pt2" != before["files"]["model.pt2"]["path"]
    )  # redone in a new folder
    assert after["checkpoint_step"] == before["checkpoint_step"] and after["metrics"] == before["metrics"]
    # Exactly the named files are stored: the old model.pt2 went with its folder once nothing named it.
    assert sorted(stored_files(prefix / "artifacts")) == sorted(
        ["manifest.json", *(e["path"] for e in after["files"].values())]
    )
    # Nothing else changed: no training, no heartbeat, checkpoints, metrics or logs touched.
    assert (prefix / "status/heartbeat.json").read_bytes() == heartbeat
    assert {part: stored_files(prefix / part) for part in kept} == kept

    assert trainer_main(["export", "--job", str(job), "--job-id", "never-trained"]) == EXIT_FAILED
    assert capsys.readouterr().err.strip() == (
        f"error: job never-trained has no checkpoint under {prefix.parent}/never-trained to export from; "
        f"train it first (python -m trainer run --job {job})"
    )


def test_a_failed_format_loses_no_other_and_one_outside_its_tolerance_is_not_uploaded(
    tmp_path, image_folder, monkeypatch
):
    dataset = image_folder(per_class={"train": 4, "val": 2})
    spec = load_spec(
        str(
            write_job(
                tmp_path / "job.yaml",
                str(tmp_path / "runs"),
                dataset.split("train"),
                dataset.split("val"),
                train__model__name="resnet18",
            )
        )
    )
    storage = Storage(str(tmp_path / "runs/jobs/j"))

    def broken(*args):
        raise RuntimeError("the exporter met an operator it does not know")

    monkeypatch.setitem(export.BUILDERS, "torchscript", broken)
    monkeypatch.setattr(export, "INT8_MIN_TOP1", 1.01)  # more than any agreement: int8 misses its tolerance
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    images = torch.randn(6, 3, 32, 32)
    data = export.ExportData(
        sample=images, calibration=lambda: [torch.randn(4, 3, 32, 32)], validation=lambda: [images]
    )
    normalization = data_mod.normalization(spec.train.model)
    manifest = export.export_artifacts(
        storage,
        spec.train,
        model,
        None,
        ["a", "b", "c"],
        normalization,
        "j",
        5,
        None,
        data,
        ["torchscript", "int8", "state_dict"],
    )

    formats = manifest["formats"]
    assert formats["torchscript"] == {
        "status": "failed",
        "reason": "RuntimeError: the exporter met an operator it does not know",
    }
    assert formats["int8"]["status"] == "failed" and formats["int8"]["files"] == []
    assert formats["int8"]["reason"].startswith("int8 picks the fp32 model's class for only ") and formats["int8"][
        "reason"
    ].endswith("of 6 validation images (at least 101% needed)")
    assert formats["state_dict"]["status"] == "ok" and manifest["source"] == "the final model"
    assert sorted(manifest["files"]) == ["model.json", "model.safetensors"]
    [folder] = [name for name in storage.list("artifacts") if name != "manifest.json"]
    assert storage.list(f"artifacts/{folder}") == ["model.json", "model.safetensors"]  # model.int8.pt never uploaded


def test_a_storage_failure_while_exporting_costs_the_formats_not_the_run(trained, monkeypatch):
    real = Storage.upload

    def refuse_artifacts(self, local_file, relative, move=False, tags=None):
        if relative.startswith("artifacts/") and relative.endswith(".onnx"):
            raise PermissionError(f"access denied writing {relative}")
        return real(self, local_file, relative, move, tags)

    monkeypatch.setattr(Storage, "upload", refuse_artifacts)
    _, prefix = trained(["onnx", "state_dict"], name="refused")  # the fixture asserts the run succeeded
    manifest = json.loads((prefix / "artifacts/manifest.json").read_text())
    assert manifest["formats"]["onnx"]["status"] == "failed" and manifest["formats"]["onnx"]["reason"].startswith(
        "PermissionError: access denied writing artifacts/"
    )
    assert (
        manifest["formats"]["state_dict"]["status"] == "ok"
        and json.loads((prefix / "status/final.json").read_text())["outcome"] == "succeeded"
    )


def test_a_model_with_nan_outputs_exports_nothing_and_says_why(tmp_path, image_folder):
    dataset = image_folder(per_class={"train": 4, "val": 2})
    spec = load_spec(
        str(
            write_job(
                tmp_path / "job.yaml",
                str(tmp_path / "runs"),
                dataset.split("train"),
                dataset.split("val"),
                train__model__name="resnet18",
            )
        )
    )
    storage = Storage(str(tmp_path / "runs/jobs/j"))
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():
        model.fc.bias[1] = float("nan")
    data = export.ExportData(
        sample=torch.randn(4, 3, 32, 32),
        calibration=lambda: [torch.randn(4, 3, 32, 32)],
        validation=lambda: [torch.randn(4, 3, 32, 32)],
    )
    export.export_artifacts(
        storage,
        spec.train,
        model,
        None,
        ["a", "b", "c"],
        data_mod.normalization(spec.train.model),
        "j",
        5,
        {"val_loss": float("nan")},
        data,
        ["state_dict", "int8"],
    )
    manifest = json.loads(
        storage.read_bytes("artifacts/manifest.json"),
        parse_constant=lambda c: pytest.fail(f"{c} in the manifest: not JSON"),
    )
    reason = (
        "the model's outputs on the validation batch are not finite (NaN or inf): nothing it exports could be checked"
    )
    assert manifest["formats"] == {
        "state_dict": {"status": "failed", "reason": reason},
        "int8": {"status": "failed", "reason": reason},
    }
    assert (
        manifest["metrics"] == {"val_loss": None}
        and manifest["files"] == {}
        and storage.list("artifacts") == ["manifest.json"]
    )
