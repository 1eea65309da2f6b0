"""Valid job files: the examples validate, defaults are filled in, and the schema matches the model."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from testbed import REPO
from trainer.job.spec import DEFAULT_AMI, JobSpec, json_schema
from trainer.job.spec_file import dump_spec, load_spec, parse_spec

ALL_EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
EXAMPLES = [p for p in ALL_EXAMPLES if not p.name.startswith("sweep")]  # job files; a sweep file holds one

MINIMAL = """\
name: tiny
storage: s3://bucket-a/spotctl
train:
  model:
    name: resnet18
  data:
    train: s3://bucket-a/data/train
"""


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"quickstart.yaml", "aws-resnet50.yaml"}


@pytest.mark.parametrize("example", ALL_EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(example, spotctl):
    code, out, err = spotctl("validate", str(example))
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"{example}: valid"


def test_defaults_are_filled_in():
    spec = parse_spec(MINIMAL)
    assert spec.region == "us-east-1"
    assert spec.compute.gpu.count == 1 and spec.compute.instance_types is None
    assert spec.compute.ami == DEFAULT_AMI
    assert spec.train.model.weights == "DEFAULT"
    assert (spec.train.optimizer.name, spec.train.optimizer.momentum, spec.train.optimizer.betas) == ("sgd", 0.9, None)
    assert spec.train.early_stopping.mode == "max"
    assert spec.train.checkpoint.every_seconds == 600 and spec.train.checkpoint.keep == 3
    assert spec.is_local is False


def test_adamw_gets_betas_not_momentum():
    spec = parse_spec(MINIMAL + "  optimizer: {name: adamw, lr: 0.001}\n")
    assert (spec.train.optimizer.momentum, spec.train.optimizer.betas) == (None, (0.9, 0.999))


@pytest.mark.parametrize(("written", "meant"), [("true", "auto"), ("false", "off"), ("bf16", "bf16")])
def test_amp_accepts_booleans(written, meant):
    assert parse_spec(MINIMAL + f"  amp: {written}\n").train.amp == meant


def test_relative_paths_are_relative_to_the_job_file(tmp_path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "job.yaml").write_text(
        "name: local\nstorage: ../runs\ntrain:\n  model: {name: resnet18, weights: ./w/init.pt}\n  data: {train: data/train}\n"
    )
    spec = load_spec(folder / "job.yaml")
    assert spec.storage == str(tmp_path / "runs")
    assert spec.train.data.train == str(folder / "data" / "train")
    assert spec.train.model.weights == str(folder / "w" / "init.pt")
    assert spec.is_local


def test_urls_are_kept_as_written():
    spec = parse_spec(MINIMAL.replace("s3://bucket-a/data/train", "https://example.com/d.tar"), base_dir=Path("/x"))
    assert spec.train.data.train == "https://example.com/d.tar"
    assert spec.storage == "s3://bucket-a/spotctl"


def test_resolved_spec_round_trips_through_yaml():
    spec = load_spec(REPO / "examples" / "aws-resnet50.yaml")
    assert parse_spec(dump_spec(spec)) == spec


def test_validate_json_is_the_resolved_spec(spotctl):
    path = REPO / "examples" / "aws-resnet50.yaml"
    code, out, _ = spotctl("validate", "--json", str(path))
    document = json.loads(out)
    assert code == 0 and document["valid"] is True
    assert JobSpec.model_validate(document["spec"]) == load_spec(path)
    assert document["spec"]["train"]["optimizer"]["param_groups"][1] == {
        "prefixes": ["layer3"],
        "lr": 0.003,
        "weight_decay": None,
    }


def test_validate_shows_a_tree_marking_defaults(tmp_path, spotctl):
    job = tmp_path / "job.yaml"
    job.write_text(MINIMAL)
    code, out, _ = spotctl("validate", str(job))
    lines = out.splitlines()
    assert code == 0
    assert lines[:4] == [
        f"{job}: valid",
        "├── name: tiny",
        "├── storage: s3://bucket-a/spotctl",
        "├── region: us-east-1  (default)",
    ]
    assert "└── train" in lines and "    ├── model" in lines
    assert "    │   ├── name: resnet18" in lines
    assert "    │   ├── momentum: 0.9  (default)" in lines
    assert f"│   ├── ami: {DEFAULT_AMI}  (default)" in lines  # long values are not wrapped
    assert "    ├── epochs: 10  (default)" in lines


def test_schema_is_valid_json_schema_and_accepts_the_examples(spotctl):
    code, out, _ = spotctl("schema")
    schema = json.loads(out)
    assert code == 0 and schema == json.loads(json.dumps(json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for example in EXAMPLES:
        validator.validate(yaml.safe_load(example.read_text()))
    with pytest.raises(jsonschema.ValidationError, match="lrr"):
        validator.validate(yaml.safe_load(MINIMAL + "  optimizer: {lrr: 0.1}\n"))


def test_schema_documents_every_field():
    def walk(node, path):
        for name, prop in node.get("properties", {}).items():
            assert prop.get("description"), f"{path}{name} has no description"

    schema = json_schema()
    walk(schema, "")
    for name, definition in schema["$defs"].items():
        walk(definition, f"{name}.")


def test_a_spec_loads_from_s3_with_line_numbered_errors(s3_bucket):
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="jobs/a/job.yaml", Body=MINIMAL.encode())
    assert load_spec(f"s3://{s3_bucket}/jobs/a/job.yaml") == parse_spec(MINIMAL)
    s3.put_object(Bucket=s3_bucket, Key="jobs/b/job.yaml", Body=MINIMAL.replace("resnet18", "resnet81").encode())
    from trainer.job.spec_file import SpecError

    with pytest.raises(SpecError) as caught:
        load_spec(f"s3://{s3_bucket}/jobs/b/job.yaml")
    assert (
        str(caught.value)
        == f"s3://{s3_bucket}/jobs/b/job.yaml:5: train.model.name: unknown torchvision model 'resnet81'; did you mean 'resnet18'?"
    )
    with pytest.raises(SpecError, match="no such file"):
        load_spec(f"s3://{s3_bucket}/jobs/missing/job.yaml")


def test_a_resolved_example_reads_back_as_itself():
    """What launch writes next to a job (dump_spec) is what the trainer and resume read back."""
    from trainer.job.spec_file import dump_spec, parse_spec

    for path in EXAMPLES:
        text = dump_spec(load_spec(path))
        assert dump_spec(parse_spec(text)) == text, path.name


def test_launch_warns_when_a_checkpoint_cannot_be_uploaded_in_half_the_spot_notice():
    from orchestrator.aws.offers import InstanceType, Offer
    from orchestrator.jobs.launch import checkpoint_bytes, save_time_notes

    spec = parse_spec(
        "name: big\nstorage: s3://bucket/p\ntrain:\n  model: {name: vit_h_14}\n  data: {train: s3://bucket/d/train, image_size: 518}\n"
        "  optimizer: {name: adamw, lr: 0.001}\n"
    )
    assert checkpoint_bytes(spec) == 633_470_440 * 4 * 3  # weights and AdamW's two moments, fp32

    def offer(name: str, gbps: float) -> Offer:
        return Offer(InstanceType(name, 1, "A10G", 24.0, 4, 16.0, network_gbps=gbps), "us-east-1a", 0.4, 1.0, None)

    notes = save_time_notes(spec, [offer("slow.xlarge", 0.75), offer("fast.xlarge", 5.0)])
    assert notes == [
        "slow.xlarge: a checkpoint of vit_h_14 (~7.6 GB) takes ~81s to upload at its 0.75 Gbit/s baseline, more "
        "than half the 120s spot notice: the save on the notice may not finish; checkpoint more often "
        "(train.checkpoint.every_seconds) or choose a type with more bandwidth"
    ]


# ----------------------------------------------------------------------------- fields that apply
def test_validate_shows_only_the_fields_that_apply(tmp_path, spotctl):
    job = tmp_path / "job.yaml"
    job.write_text(MINIMAL + "  optimizer: {name: adamw}\n  scheduler: {name: cosine}\n")
    code, out, err = spotctl("validate", str(job))
    assert (code, err) == (0, "")
    shown = {line.lstrip("│├└─ ").split(":")[0] for line in out.splitlines()}
    assert {"betas", "min_lr", "warmup_epochs"} <= shown
    assert not {"momentum", "nesterov", "gamma", "step_epochs", "pct_start", "hard_max_price"} & shown
    assert not {"calibration_images", "agreement_images"} & shown  # export formats without int8
    job.write_text(MINIMAL + "  scheduler: {name: step}\n  export: {formats: [int8]}\n")
    code, out, _ = spotctl("validate", str(job))
    shown = {line.lstrip("│├└─ ").split(":")[0] for line in out.splitlines()}
    assert {"momentum", "nesterov", "gamma", "step_epochs", "calibration_images"} <= shown
    assert not {"betas", "min_lr", "pct_start"} & shown


def test_a_field_set_where_it_has_no_effect_is_a_warning_with_its_line(tmp_path, spotctl):
    job = tmp_path / "job.yaml"
    job.write_text(
        MINIMAL.replace(
            "    train: s3://bucket-a/data/train\n",
            "    train: s3://bucket-a/data/train\n    val: s3://bucket-a/data/val\n    val_fraction: 0.2\n",
        )
        + "  scheduler:\n    name: cosine\n    pct_start: 0.2\n"
    )
    code, out, err = spotctl("validate", str(job))
    assert code == 0
    assert err.splitlines() == [
        f"{job}:9: warning: train.data.val_fraction: has no effect with val: s3://bucket-a/data/val (it applies "
        "only with val: null); remove it",
        f"{job}:12: warning: train.scheduler.pct_start: has no effect with name: cosine (it applies only with "
        "name: onecycle); remove it",
    ]
    assert "    │   └── pct_start: 0.2  (no effect: applies only with name: onecycle)" in out.splitlines()
    code, out, _ = spotctl("validate", "--json", str(job))
    document = json.loads(out)
    assert code == 0 and document["valid"] is True
    assert [(w["line"], w["field"]) for w in document["warnings"]] == [
        (9, "train.data.val_fraction"),
        (12, "train.scheduler.pct_start"),
    ]


def test_the_interval_to_the_next_checkpoint_is_the_sooner_of_seconds_and_steps():
    checkpoint = parse_spec(MINIMAL + "  checkpoint: {every_seconds: 300, every_steps: 50}\n").train.checkpoint
    assert checkpoint.seconds_to_next() == 300  # the pace is not known: every_seconds alone
    assert checkpoint.seconds_to_next(seconds_per_step=2.0) == 100
    assert checkpoint.seconds_to_next(since_save_s=280, step=10, seconds_per_step=2.0) == 20
    assert checkpoint.seconds_to_next(since_save_s=10, step=140, seconds_per_step=2.0) == 20  # step 150 next
    steps_only = parse_spec(MINIMAL + "  checkpoint: {every_seconds: null, every_steps: 50}\n").train.checkpoint
    assert steps_only.seconds_to_next() is None and steps_only.seconds_to_next(seconds_per_step=0.5) == 25
