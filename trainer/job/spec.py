"""The job spec: every field of job.yaml, shared by the orchestrator and the trainer.

Torch-free on purpose (pydantic only), so `spotctl validate` runs on a laptop without torch. Each field
is documented by the docstring under it; those texts become the JSON Schema descriptions that editors
show and the README's job.yaml reference.

Validation has two layers. Pydantic checks each field on its own (types, ranges, formats, unknown
keys). `JobSpec.problems()` then checks what needs several fields or the model catalog (weights that
belong to the model, module prefixes the model has, zones inside the region...). Always go through
`trainer.job.spec_file.load_spec()` / `parse_spec()`, which run both and report every problem with its line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError, PydanticKnownError

from trainer.job import catalog as model_catalog
from trainer.job import layout
from trainer.job.secret import Secret, masked

DEFAULT_AMI = "ssm:/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.12-ubuntu-24.04/latest/ami-id"
"""The AWS Deep Learning AMI (OSS NVIDIA driver, PyTorch 2.12, Ubuntu 24.04), resolved per region through
its SSM public parameter. Bump it before its end of patch (orchestrator/aws/amis.py PYTORCH_END_OF_PATCH)."""

STORAGE_SCHEMES = ("s3", "file")
DATA_SCHEMES = ("s3", "file", "gs", "gcs", "az", "abfs", "http", "https")
GPU_MODELS = ("T4", "T4g", "A10G", "L4", "L40S", "A100", "H100", "H200", "B200", "V100", "K80", "M60")
LEGACY_GPU_MODELS = ("V100", "K80", "M60")
"""Pre-Turing GPUs: the open-source NVIDIA driver (the default AMI's) cannot drive them. A GPU
requirement matches them only when `models` names them (for an AMI with NVIDIA's proprietary driver)."""
LOSS_METRICS = ("val_loss", "train_loss")
MAX_NODES = 64
"""The most instances one job trains on together (compute.nodes): a cluster placement group's
practical size for one instance type, and the most one RunInstances per node keeps track of."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (a path into the YAML), what, and how to fix it."""

    loc: tuple[str | int, ...]
    message: str


@dataclass(frozen=True)
class AppliesWhen:
    """Field metadata (`Annotated[type, AppliesWhen(...)]`): the field has an effect only when its
    sibling `field` is one of `values`, or holds `contains`, or (`given`) is not null. `spotctl
    validate` leaves a field out where it does not apply, and warns when the file sets it there."""

    field: str
    values: tuple = ()
    contains: str | None = None
    given: bool = False

    def holds(self, section: BaseModel) -> bool:
        value = getattr(section, self.field)
        if self.given:
            return value is not None
        if self.contains is not None:
            return self.contains in (value or ())
        return value in self.values

    def describe(self) -> str:
        """Where the field applies: "with name: onecycle", "when formats lists int8"."""
        if self.given:
            return f"when {self.field} is set"
        if self.contains is not None:
            return f"when {self.field} lists {self.contains}"
        return f"with {self.field}: {' or '.join(_plain(v) for v in self.values)}"


def applies_when(section: type[BaseModel], name: str) -> AppliesWhen | None:
    """The field's condition, if it has one."""
    return next((m for m in section.model_fields[name].metadata if isinstance(m, AppliesWhen)), None)


def inapplicable(section: BaseModel, loc: tuple = ()) -> list[Problem]:
    """Fields the file set that have no effect where they are (pct_start with a cosine schedule),
    in this section and the sections inside it."""
    found = []
    for name in type(section).model_fields:
        value, condition = getattr(section, name), applies_when(type(section), name)
        if condition is not None and name in section.model_fields_set and not condition.holds(section):
            current = getattr(section, condition.field)
            found.append(
                Problem(
                    (*loc, name),
                    f"has no effect with {condition.field}: {_plain(current)} (it applies only {condition.describe()}); remove it",
                )
            )
        if isinstance(value, BaseModel):
            found += inapplicable(value, (*loc, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found += inapplicable(item, (*loc, name, i))
    return found


def _plain(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def close_match(value: str, choices, cutoff: float = 0.6) -> str | None:
    """The choice `value` was most likely meant to be, for "did you mean" hints."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return lowered[value.lower()]
    found = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[found[0]] if found else None


def did_you_mean(value: str, choices, cutoff: float = 0.6) -> str:
    match = close_match(value, choices, cutoff)
    return f"; did you mean '{match}'?" if match else ""


def _spec_error(message: str, **ctx: Any) -> PydanticCustomError:
    # Our own error type keeps the message free of pydantic's "Value error, " prefix.
    return PydanticCustomError("spec", message, ctx)


def _resolve_local(value: str, info: ValidationInfo) -> str:
    """Relative local paths are relative to the job file's folder, as in docker-compose."""
    base = (info.context or {}).get("base_dir")
    parsed = urlparse(value)
    if parsed.scheme or base is None or Path(value).is_absolute():
        return value
    return str((Path(base) / value).resolve())


def _check_url(value: str, schemes: tuple[str, ...], what: str) -> str:
    value = value.strip()
    if not value:
        raise _spec_error(f"{what} is empty; give an s3:// URL or a local path")
    scheme = urlparse(value).scheme
    # A one-letter "scheme" is a Windows drive (C:\data), not a URL.
    if scheme and len(scheme) > 1 and scheme not in schemes:
        raise _spec_error(
            f"'{scheme}://' is not supported for {what}{did_you_mean(scheme, schemes, cutoff=0.5)} "
            f"(use one of: {', '.join(s + '://' for s in schemes)} or a local path)"
        )
    if scheme == "s3":
        _check_bucket(urlparse(value).netloc)
    return value


def _check_bucket(bucket: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or ".." in bucket:
        raise _spec_error(
            f"'{bucket}' is not a valid S3 bucket name: 3-63 characters of lowercase letters, digits, '.' and '-'"
        )


class Section(BaseModel):
    # Unknown keys are errors: a typo must never be silently ignored.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


# --------------------------------------------------------------------------------------------- compute
def _gpu_model(model: str) -> str:
    match = close_match(model, GPU_MODELS)
    if match is None or match.lower() != model.lower():
        raise _spec_error(
            f"unknown GPU model '{model}'{did_you_mean(model, GPU_MODELS)} (known: {', '.join(GPU_MODELS)})"
        )
    return match  # EC2's spelling


def _instance_type(itype: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9-]+", itype):
        raise _spec_error(f"'{itype}' is not an EC2 instance type; write it like g5.xlarge")
    return itype


def _zone(zone: str) -> str:
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+[a-z]", zone):
        raise _spec_error(f"'{zone}' is not an availability zone; write it like us-east-1a")
    return zone


# Item types, so an error points at the bad item (instance_types[1]), not at the whole list.
GpuModel = Annotated[str, AfterValidator(_gpu_model)]
InstanceType = Annotated[str, AfterValidator(_instance_type)]
AvailabilityZone = Annotated[str, AfterValidator(_zone)]


class GpuRequirement(Section):
    count: int = Field(1, ge=1, le=16)
    """GPUs per instance."""
    min_memory_gib: float | None = Field(None, gt=0, le=1024, examples=[16, 22])
    """Minimum memory of each GPU, in GiB as EC2 reports it (a "24 GB" A10G or L4 has 22.4 GiB); any if
    omitted. `spotctl offers` names the types it drops."""
    models: list[GpuModel] | None = Field(None, min_length=1, examples=[["A10G", "L4"]])
    """Acceptable GPU models as EC2 names them (T4, A10G, L4, L40S, A100, H100, ...). If omitted, any
    but the pre-Turing V100, K80 and M60, which the default AMI's open-source driver cannot drive."""


class ComputeSpec(Section):
    instance_types: list[InstanceType] | None = Field(None, min_length=1, examples=[["g5.xlarge", "g6.xlarge"]])
    """EC2 instance types to choose from. Give these or `gpu`, not both."""
    gpu: GpuRequirement | None = None
    """A GPU requirement, resolved to instance types at launch. Default when neither this nor
    `instance_types` is given: one GPU of any model."""
    availability_zones: list[AvailabilityZone] | None = Field(
        None, min_length=1, examples=[["us-east-1a", "us-east-1b"]]
    )
    """Zones to launch in, all inside `region`; every zone of the region if omitted."""
    max_price_per_hour: float | None = Field(None, gt=0, le=1000, examples=[1.5])
    """Highest spot price to pay, in USD per instance-hour; offers above it are never used."""
    hard_max_price: Annotated[bool, AppliesWhen("max_price_per_hour", given=True)] = False
    """Also send `max_price_per_hour` to EC2 as the instance's MaxPrice. Off by default: AWS then
    interrupts the instance whenever the pool's price crosses it (interrupted more often); without
    it a running instance pays the spot price, never above on-demand."""
    ami: str = DEFAULT_AMI
    """An AMI id (ami-...), or `ssm:/parameter/name` resolved at launch. Default: the AWS Deep Learning AMI."""
    disk_gib: int = Field(100, ge=20, le=16384)
    """Size of the root volume, in GiB."""
    instance_profile: str | None = Field(None, examples=["spotctl-trainer"])
    """IAM instance profile (name or ARN) that gives the instance access to `storage`."""
    subnets: dict[AvailabilityZone, str] | None = Field(
        None, examples=[{"us-east-1a": "subnet-0123456789abcdef0", "us-east-1b": "subnet-0fedcba9876543210"}]
    )
    """The subnet to launch in, per zone (for a VPC of your own, or an account without a default
    VPC). Only these zones are used. Default: each zone's default subnet."""
    security_group: str | None = Field(None, examples=["sg-0123456789abcdef0"])
    """Security group id; default: one with no inbound rules, created at launch (several nodes: one
    that admits only its own members)."""
    public_ip: bool = False
    """Give the instance a public IPv4 address. Off by default: the subnet then needs a route to S3
    and to the package index (a NAT gateway, or an S3 gateway endpoint and a mirror). Turn it on in a
    default VPC without one; with no inbound rules the address only carries outbound traffic."""
    nodes: int = Field(1, ge=1, le=MAX_NODES, examples=[2])
    """Instances to train on together (multi-node DDP through torchrun, met through the job's storage):
    all of one instance type, in one zone, in a cluster placement group where the type supports it.
    Prices, budgets and costs count every node; `train.batch_size` stays the global batch. A lost node
    ends the attempt for all (every rank checkpoints on a notice; without one the others' collective
    times out) and the next attempt resumes from the checkpoint. Their machines need to reach each
    other: see the README's multi-node notes."""

    @field_validator("ami")
    @classmethod
    def _ami_format(cls, ami: str) -> str:
        if re.fullmatch(r"ami-[0-9a-f]{8}([0-9a-f]{9})?", ami) or re.fullmatch(r"ssm:/[\w./-]+", ami):
            return ami
        raise _spec_error(f"'{ami}' is neither an AMI id (ami-0123456789abcdef0) nor an SSM parameter (ssm:/path/name)")

    @field_validator("instance_profile")
    @classmethod
    def _profile_format(cls, profile: str | None) -> str | None:
        if profile is None or re.fullmatch(r"[\w+=,.@-]{1,128}", profile):
            return profile
        if re.fullmatch(r"arn:aws[\w-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]+", profile):
            return profile
        raise _spec_error(
            f"'{profile}' is not an instance profile name or ARN (arn:aws:iam::123456789012:instance-profile/NAME)"
        )

    @field_validator("security_group")
    @classmethod
    def _sg_format(cls, group: str | None) -> str | None:
        if group is None or re.fullmatch(r"sg-[0-9a-f]{8}([0-9a-f]{9})?", group):
            return group
        raise _spec_error(f"'{group}' is not a security group id; write it like sg-0123456789abcdef0")

    @field_validator("subnets")
    @classmethod
    def _subnet_format(cls, subnets: dict[str, str] | None) -> dict[str, str] | None:
        for zone, subnet in (subnets or {}).items():
            if not re.fullmatch(r"subnet-[0-9a-f]{8}([0-9a-f]{9})?", subnet):
                raise _spec_error(f"{zone}: '{subnet}' is not a subnet id; write it like subnet-0123456789abcdef0")
        return subnets

    @property
    def zones(self) -> list[str] | None:
        """The zones to launch in: `availability_zones`, narrowed to `subnets`' zones when given."""
        if self.subnets is None:
            return self.availability_zones
        return [z for z in (self.availability_zones or list(self.subnets)) if z in self.subnets]

    def problems(self, region: str) -> list[Problem]:
        found = []
        if self.instance_types is not None and self.gpu is not None:
            found.append(Problem(("gpu",), "give either instance_types or gpu, not both; remove one of them"))
        for where, zones in (("availability_zones", self.availability_zones or []), ("subnets", self.subnets or {})):
            for i, zone in enumerate(zones):
                if not zone.startswith(region + "-") and zone.rstrip("abcdefghijklmnopqrstuvwxyz") != region:
                    found.append(
                        Problem(
                            (where, zone if where == "subnets" else i),
                            f"'{zone}' is not in region {region}; use zones like {region}a",
                        )
                    )
        if self.subnets is not None and self.availability_zones and not self.zones:
            found.append(
                Problem(
                    ("subnets",), "no zone of availability_zones has a subnet here; add one, or drop availability_zones"
                )
            )
        return found


# ----------------------------------------------------------------------------------- recovery, budget
class RecoverySpec(Section):
    max_interruptions: int = Field(20, ge=0, le=1000)
    """Spot interruptions to recover from before the job is given up."""
    retries_on_error: int = Field(0, ge=0, le=10)
    """Times to relaunch after the trainer itself fails (a bug rarely fixes itself: default 0)."""
    max_crashes: int = Field(3, ge=0, le=100)
    """Times to recover, from the last checkpoint, a trainer that died without a word (killed by the
    out-of-memory killer or another signal, a native crash) before the job is given up: a model that
    runs out of memory every time must not loop."""


class BudgetSpec(Section):
    max_cost_usd: float | None = Field(None, gt=0, le=1_000_000, examples=[25])
    """Stop the job gracefully (final checkpoint kept) before its cost passes this many USD."""


# ------------------------------------------------------------------------------------------------ train
class ModelSpec(Section):
    name: str = Field(examples=["resnet50", "efficientnet_b0", "vit_b_16"])
    """A torchvision classification model (`torchvision.models.list_models()`)."""
    weights: str | None = Field("DEFAULT", examples=["DEFAULT", "IMAGENET1K_V2", "s3://bucket/weights.pt"])
    """Starting weights: null (random init), a torchvision weights name (DEFAULT, IMAGENET1K_V2, ...) or
    the URL of a state dict (s3://, https://, a local path...)."""
    weights_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    )
    """sha256 of the weights file at a URL: the trainer refuses a file that does not match (torchvision's
    named weights are checked by torchvision itself)."""
    num_classes: int | None = Field(None, ge=2, le=100_000)
    """Classes of the new head; default: the number of class folders in the training data."""
    freeze: Literal["none", "backbone"] | list[str] = Field("none", examples=["backbone", ["conv1", "layer1"]])
    """Parameters not trained: none, everything but the classifier head (backbone), or a list of
    module-name prefixes."""

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        catalog = model_catalog.load()
        if name not in catalog:
            hint = (
                did_you_mean(name, catalog)
                or f"; torchvision has {len(catalog)}, e.g. resnet50, efficientnet_v2_s, convnext_tiny, vit_b_16"
            )
            raise _spec_error(f"unknown torchvision model '{name}'{hint}")
        return name

    @field_validator("weights")
    @classmethod
    def _weights_location(cls, weights: str | None, info: ValidationInfo) -> str | None:
        if weights is None or is_weights_name(weights):
            return weights
        return _resolve_local(_check_url(weights, DATA_SCHEMES, "weights"), info)

    @model_validator(mode="after")
    def _hash_needs_a_url(self) -> ModelSpec:
        if self.weights_sha256 is not None and (self.weights is None or is_weights_name(self.weights)):
            raise _spec_error(
                "weights_sha256 checks weights given as a URL; set weights to the file's URL, or remove weights_sha256"
            )
        return self

    @field_validator("freeze")
    @classmethod
    def _non_empty_prefixes(cls, freeze):
        if isinstance(freeze, list) and not all(p.strip() for p in freeze):
            raise _spec_error("an empty module prefix would freeze everything; use freeze: backbone or name modules")
        return freeze

    def problems(self) -> list[Problem]:
        info = model_catalog.load()[self.name]
        found = []
        if self.weights is not None and is_weights_name(self.weights):
            known = ["DEFAULT", *info.weights]
            if self.weights not in known:
                found.append(
                    Problem(
                        ("weights",),
                        f"'{self.weights}' is not one of {self.name}'s weights{did_you_mean(self.weights, known)} (known: {', '.join(known)})",
                    )
                )
        if isinstance(self.freeze, list):
            found += _prefix_problems(self.freeze, info, ("freeze",))
        if self.freeze == "backbone" and self.weights is None:
            found.append(
                Problem(
                    ("freeze",),
                    "freeze: backbone with weights: null trains only a head on random features; set weights or freeze: none",
                )
            )
        return found


def is_weights_name(weights: str) -> bool:
    """A torchvision weights enum name (DEFAULT, IMAGENET1K_V2) rather than a URL or path."""
    return re.fullmatch(r"[A-Z][A-Z0-9_]*", weights) is not None


def _prefix_problems(prefixes: list[str], info: model_catalog.ModelInfo, loc: tuple) -> list[Problem]:
    found = []
    for i, prefix in enumerate(prefixes):
        if not info.has_module_prefix(prefix):
            depth = prefix.count(".") + 1
            same_depth = [m for m in info.modules if m.count(".") + 1 == min(depth, model_catalog.MODULE_DEPTH)]
            tops = sorted({m.split(".")[0] for m in info.modules})
            hint = did_you_mean(prefix, same_depth) or f" (its top-level modules: {', '.join(tops)})"
            found.append(Problem((*loc, i), f"'{prefix}' names no module of {info.name}{hint}"))
    return found


class AugmentationSpec(Section):
    random_resized_crop: bool = True
    """Random-resized-crop training images (else resize and center-crop them like validation)."""
    crop_scale: Annotated[tuple[float, float], AppliesWhen("random_resized_crop", (True,))] = (0.08, 1.0)
    """Area range of the random crop, as fractions of the image."""
    horizontal_flip: bool = True
    """Flip training images left-right at random."""
    color_jitter: float = Field(0.0, ge=0, le=1)
    """Strength of random brightness/contrast/saturation changes; 0 turns it off."""
    policy: Literal["none", "trivialaugment", "randaugment", "autoaugment"] = "none"
    """An automatic augmentation policy after the crop and flip, as torchvision's reference recipe's
    `--auto-augment`: trivialaugment (`ta_wide`, TrivialAugmentWide), randaugment (`ra`, magnitude 9),
    autoaugment (`imagenet`, the ImageNet policy); none: off. Each image's draw is seeded by (seed,
    epoch, index), so a resumed run sees the same images."""
    random_erasing: float = Field(0.0, ge=0, le=1)
    """Probability of erasing a random rectangle of each training image (after normalisation), as the
    reference's `--random-erase`; 0 turns it off."""
    mixup_alpha: float = Field(0.0, ge=0, le=10)
    """Mixup: blend each batch with itself rolled by one, weight drawn from Beta(alpha, alpha) (the
    reference recipe uses 0.2); 0 turns it off. With cutmix also on, each batch gets one of the two at
    random. Targets become soft; train accuracy is measured against each mixed image's dominant label."""
    cutmix_alpha: float = Field(0.0, ge=0, le=10)
    """CutMix: paste a box of the batch rolled by one, its area drawn from Beta(alpha, alpha) (the
    reference recipe uses 1.0); 0 turns it off. Each batch's draw is seeded by (seed, epoch, batch)."""

    @field_validator("crop_scale")
    @classmethod
    def _scale_order(cls, scale: tuple[float, float]) -> tuple[float, float]:
        low, high = scale
        if not 0 < low <= high <= 1:
            raise _spec_error(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got [{low}, {high}]")
        return scale


class DataSpec(Section):
    train: str = Field(examples=["s3://my-bucket/datasets/flowers/train", "./data/train"])
    """Training images: an ImageFolder (one folder per class) or a .tar of one, at a URL or local path."""
    val: str | None = Field(None, examples=["s3://my-bucket/datasets/flowers/val"])
    """Validation images, same layout; default: a seeded `val_fraction` split of the training images."""
    val_fraction: Annotated[float, AppliesWhen("val", (None,))] = Field(0.1, gt=0, lt=1)
    """Share of the training images held out for validation when `val` is not given."""
    image_size: int = Field(224, ge=16, le=1024)
    """Side of the square images fed to the model."""
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    """Random transforms of training images."""
    workers: int = Field(4, ge=0, le=64)
    """Data-loading worker processes (0 loads in the training process)."""
    max_bad_images: float = Field(0.01, ge=0, le=1)
    """Share of images that may fail to decode (skipped, counted and logged) before the run fails."""
    decode: Literal["cpu", "gpu"] = "cpu"
    """Where JPEGs are decoded. cpu: in the data workers (torchvision.io, PIL for other formats). gpu:
    whole batches by nvJPEG on the training GPU, for machines whose few CPUs cannot keep the GPU fed
    (CUDA only; the run fails at once without it)."""

    @field_validator("train", "val")
    @classmethod
    def _data_location(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        return _resolve_local(_check_url(value, DATA_SCHEMES, f"data.{info.field_name}"), info)


class ParamGroupSpec(Section):
    prefixes: list[str] = Field(min_length=1, examples=[["layer4"], ["fc"]])
    """Module-name prefixes whose parameters get this group's settings."""
    lr: float = Field(gt=0, le=10, examples=[0.001])
    """Learning rate of this group (its schedule follows the main one)."""
    weight_decay: float | None = Field(None, ge=0, le=1)
    """Weight decay of this group; default: the optimizer's."""


class OptimizerSpec(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    """sgd (with momentum) or adamw."""
    lr: float = Field(0.01, gt=0, le=10)
    """Peak learning rate of parameters in no `param_groups` entry."""
    momentum: Annotated[float | None, AppliesWhen("name", ("sgd",))] = Field(None, ge=0, lt=1)
    """SGD momentum; default 0.9. sgd only."""
    nesterov: Annotated[bool, AppliesWhen("name", ("sgd",))] = False
    """Nesterov momentum. sgd only."""
    betas: Annotated[tuple[float, float] | None, AppliesWhen("name", ("adamw",))] = None
    """AdamW betas; default [0.9, 0.999]. adamw only."""
    weight_decay: float = Field(1e-4, ge=0, le=1)
    """Weight decay (decoupled for adamw)."""
    param_groups: list[ParamGroupSpec] = []
    """Parameter groups with their own lr (discriminative fine-tuning); the rest use `lr`."""
    norm_weight_decay: float | None = Field(None, ge=0, le=1, examples=[0.0])
    """Weight decay of normalisation layers' parameters (BatchNorm, LayerNorm, GroupNorm, InstanceNorm),
    as the reference's `--norm-weight-decay` (its recipe: 0.0); null: the group's weight decay."""
    bias_weight_decay: float | None = Field(None, ge=0, le=1, examples=[0.0])
    """Weight decay of every parameter named `bias` (normalisation layers' too), as the reference's
    `--bias-weight-decay`; null: the group's weight decay."""

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, betas):
        if betas is not None and not all(0 <= b < 1 for b in betas):
            raise _spec_error(f"betas must both be in [0, 1), got {list(betas)}; the usual values are [0.9, 0.999]")
        return betas

    @model_validator(mode="after")
    def _fill_defaults(self) -> OptimizerSpec:
        # The resolved spec shows the values actually used.
        if self.name == "sgd" and self.momentum is None:
            self.momentum = 0.9
            self.__pydantic_fields_set__.discard("momentum")  # still a default, not the user's choice
        if self.name == "adamw" and self.betas is None:
            self.betas = (0.9, 0.999)
            self.__pydantic_fields_set__.discard("betas")
        return self

    def problems(self, info: model_catalog.ModelInfo) -> list[Problem]:
        found = []
        if self.name == "adamw" and "momentum" in self.model_fields_set and self.momentum is not None:
            found.append(
                Problem(("momentum",), "momentum applies to sgd only; for adamw set betas (e.g. [0.9, 0.999])")
            )
        if self.name == "adamw" and self.nesterov:
            found.append(Problem(("nesterov",), "nesterov applies to sgd only; remove it"))
        if self.name == "sgd" and self.betas is not None:
            found.append(Problem(("betas",), "betas apply to adamw only; for sgd set momentum"))
        if self.name == "sgd" and self.nesterov and not self.momentum:
            found.append(Problem(("nesterov",), "nesterov needs a momentum above 0"))
        claimed: dict[str, int] = {}
        for g, group in enumerate(self.param_groups):
            found += _prefix_problems(group.prefixes, info, ("param_groups", g, "prefixes"))
            for p, prefix in enumerate(group.prefixes):
                if prefix in claimed:
                    found.append(
                        Problem(
                            ("param_groups", g, "prefixes", p),
                            f"'{prefix}' is already in param_groups[{claimed[prefix]}]; a module belongs to one group",
                        )
                    )
                claimed.setdefault(prefix, g)
        return found


class SchedulerSpec(Section):
    name: Literal["cosine", "step", "onecycle", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_epochs: Annotated[float, AppliesWhen("name", ("cosine", "step", "constant"))] = Field(0.0, ge=0, le=1000)
    """Linear warm-up from lr/100, in epochs (fractions allowed). Not for onecycle, which warms up itself."""
    step_epochs: Annotated[int, AppliesWhen("name", ("step",))] = Field(30, ge=1, le=10000)
    """step: multiply the lr by `gamma` every this many epochs."""
    gamma: Annotated[float, AppliesWhen("name", ("step",))] = Field(0.1, gt=0, le=1)
    """step: the factor applied every `step_epochs`."""
    min_lr: Annotated[float, AppliesWhen("name", ("cosine",))] = Field(0.0, ge=0)
    """cosine: the lr reached at the last step."""
    pct_start: Annotated[float, AppliesWhen("name", ("onecycle",))] = Field(0.3, gt=0, lt=1)
    """onecycle: share of the run spent increasing the lr."""


class EarlyStoppingSpec(Section):
    metric: Literal["val_acc1", "val_acc5", "val_loss", "train_loss"] = "val_acc1"
    """Metric that picks the best model (kept under best/) and drives early stopping. Losses are minimised, accuracies maximised."""
    patience: int | None = Field(None, ge=1, le=10000)
    """Stop after this many epochs without improvement; null never stops early."""
    min_delta: float = Field(0.0, ge=0)
    """Smallest change that counts as an improvement."""

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric in LOSS_METRICS else "max"


class CheckpointSpec(Section):
    every_seconds: float | None = Field(600, ge=5, le=86400)
    """Save at the first step boundary after this many seconds since the last save; null: no timed saves."""
    every_steps: int | None = Field(None, ge=1)
    """Save every this many optimizer steps; null: no step-count saves. Epoch ends and spot notices always save."""
    keep: int = Field(3, ge=1, le=1000)
    """Committed checkpoints kept, besides best/ and the one a run resumed from."""

    def seconds_to_next(
        self, since_save_s: float = 0.0, step: int | None = None, seconds_per_step: float | None = None
    ) -> float | None:
        """Seconds until the next periodic save: the sooner of `every_seconds` (counted from the last
        save, `since_save_s` ago) and `every_steps` (the trainer saves at each multiple of it; `step`:
        the step reached, None: a save just happened) at `seconds_per_step` when the pace is known.
        With the defaults, the interval between two saves. None: no periodic save is known to come
        (epoch ends only, or steps at a pace not measured yet)."""
        due = []
        if self.every_seconds:
            due.append(max(0.0, self.every_seconds - since_save_s))
        if self.every_steps and seconds_per_step:
            left = self.every_steps - (step % self.every_steps if step is not None else 0)
            due.append(left * seconds_per_step)
        return min(due) if due else None


EXPORT_FORMATS = ("state_dict", "torchscript", "exported", "onnx", "int8")


class ExportSpec(Section):
    formats: list[Literal[EXPORT_FORMATS]] = ["state_dict", "onnx"]
    """Artifacts exported from the best model when training ends: `state_dict` (safetensors + model.json),
    `torchscript` (traced), `exported` (torch.export .pt2), `onnx` (one file, dynamic batch), `int8`
    (statically quantized for CPU inference). Each is loaded back and checked against the model."""
    calibration_images: Annotated[int, AppliesWhen("formats", contains="int8")] = Field(256, ge=1, le=100_000)
    """Training images (a seeded choice, without augmentation) that int8 quantization is calibrated on."""
    agreement_images: Annotated[int, AppliesWhen("formats", contains="int8")] = Field(1000, ge=1, le=1_000_000)
    """Validation images int8's agreement with the fp32 model (SQNR, top-1) is measured on: the first N."""

    @field_validator("formats")
    @classmethod
    def _unique(cls, formats: list[str]) -> list[str]:
        repeated = sorted({f for f in formats if formats.count(f) > 1})
        if repeated:
            raise _spec_error(f"{', '.join(repeated)} listed more than once; list each format once")
        return formats


class EmaSpec(Section):
    decay: float = Field(0.99998, gt=0, lt=1)
    """Decay per update before the adjustment below (the reference's `--model-ema-decay`)."""
    every_steps: int = Field(32, ge=1, le=100_000)
    """Update the average at every this many batches of an epoch (the reference's `--model-ema-steps`)."""
    adjust: bool = True
    """Adjust the decay for batch size and epochs as the reference does, so the averaging horizon does
    not depend on them: alpha = min(1, (1 - decay) * batch_size * every_steps / epochs), decay = 1 - alpha."""
    warmup_epochs: float | None = Field(None, ge=0, le=1000)
    """Epochs during which the average only copies the weights (the reference: the lr warm-up's);
    null: `scheduler.warmup_epochs`."""

    def effective_decay(self, batch_size: int, epochs: int) -> float:
        if not self.adjust:
            return self.decay
        return 1.0 - min(1.0, (1.0 - self.decay) * batch_size * self.every_steps / epochs)


RECIPES: dict[str, dict] = {
    "torchvision-v2": {
        "label_smoothing": 0.1,
        "data": {
            "augmentation": {"policy": "trivialaugment", "random_erasing": 0.1, "mixup_alpha": 0.2, "cutmix_alpha": 1.0}
        },
        "optimizer": {"weight_decay": 0.00002, "norm_weight_decay": 0.0},
        "ema": {"decay": 0.99998, "every_steps": 32},
    }
}
"""What each `train.recipe` sets (https://github.com/pytorch/vision/pull/5201, the ResNet-50 V2 recipe's
flags); fields the file sets win."""


def _under_recipe(recipe: dict, given: dict) -> dict:
    """`given` with the recipe's values filled in where the file left a field out (nested sections too)."""
    merged = dict(given)
    for key, value in recipe.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _under_recipe(value, merged[key])
    return merged


class TensorBoardSpec(Section):
    enabled: bool = True
    """Write TensorBoard event files (losses, accuracies, lr, images/s, data wait, GPU utilisation,
    memory and power) and upload them under the job's `tensorboard/` as closed segments, each once;
    `spotctl tensorboard JOB` shows them. On by default: a few KB and one upload per segment."""
    segment_seconds: float = Field(300, ge=10, le=86400)
    """Close and upload the open segment after this many seconds: the most of the plot a crash can
    lose (a spot notice, a stop and the end of the run close it at once)."""
    segment_mib: float = Field(8, gt=0, le=1024)
    """Close and upload the open segment once it holds this many MiB."""


def _teacher_job(job: str | None) -> str | None:
    if job is None:
        return None
    job = job.strip()
    if "://" in job or job.startswith(("/", ".")):
        return _check_url(job.rstrip("/"), STORAGE_SCHEMES, "teacher.job")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", job):
        raise _spec_error(
            f"'{job[:80]}' is neither a job id (like flowers-resnet50-250101-ab12) nor a job's URL (s3://bucket/spotctl/jobs/<id>)"
        )
    return job


class TeacherSpec(Section):
    """The model distilled from: exactly one of `job` (a finished spotctl job), or `model` + `weights`."""

    job: Annotated[str | None, AfterValidator(_teacher_job)] = Field(
        None, examples=["flowers-resnet152-250101-ab12", "s3://bucket/spotctl/jobs/flowers-resnet152-250101-ab12"]
    )
    """A finished spotctl job whose best model (its best/) teaches: its job id under this job's storage,
    or its prefix URL. It must have been trained on the same class folders."""
    model: str | None = Field(None, examples=["resnet152"])
    """With `weights`: the teacher's torchvision architecture."""
    weights: str | None = Field(None, examples=["s3://bucket/teachers/resnet152-flowers.pt"])
    """With `model`: the URL of the teacher's whole state dict (head included, trained for this job's
    classes, in the order of their folder names)."""
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """sha256 of the `weights` file: the trainer refuses a file that does not match."""

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str | None) -> str | None:
        return None if name is None else ModelSpec._known_model(name)

    @field_validator("weights")
    @classmethod
    def _weights_location(cls, weights: str | None, info: ValidationInfo) -> str | None:
        if weights is None:
            return None
        if is_weights_name(weights):
            raise _spec_error(
                f"'{weights}' is a torchvision weights name: those heads know ImageNet's classes, not this job's; "
                "give the URL of a teacher fine-tuned on these classes, or teacher.job"
            )
        return _resolve_local(_check_url(weights, DATA_SCHEMES, "teacher.weights"), info)

    @model_validator(mode="after")
    def _one_teacher(self) -> TeacherSpec:
        if self.job is not None and (self.model or self.weights or self.weights_sha256):
            raise _spec_error("give teacher.job or teacher.model + teacher.weights, not both")
        if self.job is None and not (self.model and self.weights):
            raise _spec_error(
                "name the teacher: job: <a finished job id> or model: <torchvision name> with weights: <state dict URL>"
            )
        return self

    def job_prefix(self, storage: str) -> str:
        """The URL of the teacher job's prefix: a job id is under this job's `storage`."""
        return self.job if "/" in self.job else layout.job_prefix(storage, self.job)


class DistillSpec(Section):
    teacher: TeacherSpec
    """The model distilled from. It runs online on every training batch (eval mode, no gradients, the
    run's AMP), on the same augmented images the student sees; nothing of it is saved but its identity."""
    temperature: float = Field(4.0, gt=0, le=100)
    """Softmax temperature T of both models' logits in the distillation term."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of the distillation term: loss = alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE.
    1 learns from the teacher alone (function matching); 0.5 keeps the labels' say when the teacher errs."""


class AutoBatch(Section):
    """`batch_size: auto` (no cap) or `batch_size: {auto: N}`."""

    auto: int | None = Field(None, ge=1, le=65536)
    """The largest batch auto may choose; null: as large as fits (and the training images allow)."""


def _batch_size_form(value):
    """auto / {auto: N} / a number; anything else is one message naming the three forms."""
    if value == "auto" or value == {"auto": None}:
        return AutoBatch()
    if isinstance(value, dict) and set(value) == {"auto"}:
        cap = value["auto"]
        if not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap <= 65536:
            raise _spec_error(f"auto's cap is the largest batch it may choose, 1 to 65536 images, not {str(cap)[:40]}")
        return AutoBatch(auto=cap)
    # The union would report a number's range once per form; checked here, it is one message.
    if isinstance(value, float) and not value.is_integer():
        raise PydanticKnownError("int_from_float")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 1:
            raise PydanticKnownError("greater_than_equal", {"ge": 1})
        if value > 65536:
            raise PydanticKnownError("less_than_equal", {"le": 65536})
        return int(value)
    raise _spec_error(
        f"'{str(value)[:40]}' is no batch size: give a number of images (64), auto (the largest that fits the GPU) "
        "or auto with a cap ({auto: 256})"
    )


class TrainSpec(Section):
    model: ModelSpec
    """What to fine-tune."""
    data: DataSpec
    """Where the images are and how they are loaded."""
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    """Optimizer and its parameter groups."""
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    """Learning-rate schedule."""
    epochs: int = Field(10, ge=1, le=10000)
    """Passes over the training data."""
    batch_size: Annotated[int, Field(ge=1, le=65536)] | AutoBatch = Field(32, examples=[32, "auto", {"auto": 256}])
    """Images per optimizer step: the global batch, split across the GPUs of a multi-GPU machine. `auto`:
    the largest batch the first attempt's GPUs train (a probe, with a 5 % margin), kept for the whole run
    (a recovery on a GPU holding less accumulates gradients); `{auto: N}`: the same, at most N."""
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    """Mixed precision. auto: bf16 on GPUs that support it, else fp16 with a grad scaler; off on CPU."""
    grad_clip_norm: float | None = Field(None, gt=0)
    """Clip the gradient norm to this value; null: no clipping."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Label smoothing of the cross-entropy loss."""
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    """Best-model metric and early stopping."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """When to save and how many checkpoints to keep."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of every random choice: shuffling, augmentation, the val split, the new head's init."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """Deployable artifacts."""
    max_batch_per_gpu: int | None = Field(None, ge=1, le=65536)
    """The most images one GPU processes in one forward; a GPU's share of batch_size above it is
    trained in micro-batches whose gradients add up to the whole batch's (gradient accumulation).
    null: a GPU's whole share at once."""
    ema: EmaSpec | None = None
    """Keep an exponential moving average of the weights (the reference's `--model-ema`): validated
    beside the raw model each epoch (`ema_val_*` metrics), it picks and is the best model (best/ and the
    exported artifacts hold the averaged weights). null: off."""
    compile: bool = False
    """Run the training forward and backward through `torch.compile` (opt-in: compiling takes minutes
    for a large model and needs a C++ compiler on CPU). Checkpoints and exports hold the plain model."""
    recipe: Literal["torchvision-v2"] | None = None
    """A shorthand for a published recipe's settings; any field set in the file overrides it.
    torchvision-v2 (torchvision's ResNet-50 "V2" recipe, its regularisation part): label_smoothing 0.1,
    augmentation policy trivialaugment, random_erasing 0.1, mixup_alpha 0.2, cutmix_alpha 1.0,
    optimizer weight_decay 0.00002 and norm_weight_decay 0.0, ema {decay 0.99998, every_steps 32}.
    It leaves lr, epochs, batch size and the schedule to you (the recipe's 600 epochs at lr 0.5 train
    from scratch); `spotctl validate` shows the expanded values."""

    tensorboard: TensorBoardSpec = Field(default_factory=TensorBoardSpec)
    """TensorBoard event files under the job's prefix (never part of the checkpoint's identity)."""

    distill: DistillSpec | None = None
    """Knowledge distillation from a teacher model; null: plain fine-tuning on the labels."""

    @model_validator(mode="before")
    @classmethod
    def _expand_recipe(cls, data):
        if isinstance(data, dict) and isinstance(data.get("recipe"), str) and data["recipe"] in RECIPES:
            return _under_recipe(RECIPES[data["recipe"]], data)
        return data

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size_forms(cls, value):
        return _batch_size_form(value)

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_bool(cls, amp):
        # `amp: true` / `amp: false` read naturally; they mean auto / off.
        return {True: "auto", False: "off"}.get(amp, amp) if isinstance(amp, bool) else amp

    def problems(self) -> list[Problem]:
        info = model_catalog.load()[self.model.name]
        found = [Problem(("model", *p.loc), p.message) for p in self.model.problems()]
        found += [Problem(("optimizer", *p.loc), p.message) for p in self.optimizer.problems(info)]
        if self.scheduler.name == "onecycle" and self.scheduler.warmup_epochs > 0:
            found.append(
                Problem(("scheduler", "warmup_epochs"), "onecycle warms up by itself (pct_start); set warmup_epochs: 0")
            )
        if self.scheduler.warmup_epochs >= self.epochs:
            found.append(
                Problem(
                    ("scheduler", "warmup_epochs"),
                    f"warm-up of {self.scheduler.warmup_epochs:g} epochs leaves nothing of a {self.epochs}-epoch run; use fewer warm-up epochs",
                )
            )
        if self.scheduler.min_lr >= self.optimizer.lr and self.scheduler.name == "cosine":
            found.append(
                Problem(
                    ("scheduler", "min_lr"),
                    f"min_lr {self.scheduler.min_lr:g} is not below lr {self.optimizer.lr:g}; lower it",
                )
            )
        found += self._image_size_problems(info)
        return found

    def _image_size_problems(self, info: model_catalog.ModelInfo) -> list[Problem]:
        weights = self.model.weights if self.model.weights and is_weights_name(self.model.weights) else None
        if weights is not None and info.resolve_weights(weights) not in info.weights:
            return []  # reported as unknown weights already
        size, loc = self.data.image_size, ("data", "image_size")
        required = info.required_image_size(weights)
        if required is not None:
            if size == required:
                return []
            with_weights = f" with {info.resolve_weights(weights)} weights" if weights else ""
            return [
                Problem(
                    loc,
                    f"{info.name} takes exactly {required}x{required} images{with_weights}; set image_size: {required}",
                )
            ]
        minimum = info.min_image_size(weights)
        if size < minimum:
            return [
                Problem(
                    loc, f"{info.name} needs images of at least {minimum}x{minimum}; set image_size: {minimum} or more"
                )
            ]
        return []


# ----------------------------------------------------------------------------------------------- notify
NOTIFY_EVENTS = ("notice", "checkpoint", "attempt_started", "work_lost", "budget_stop", "failed", "succeeded")
"""What a job tells its notify targets (orchestrator.jobs.notices builds each message)."""
NOTIFY_KINDS = ("webhook", "slack", "discord", "sns")


def _webhook_url(value: Secret) -> Secret:
    # The message names the URL masked: a webhook URL is a credential, and validate's output is shared.
    parts = urlparse(value.reveal().strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise _spec_error(
            f"'{masked(value.reveal())}' is not a webhook URL; write it like https://hooks.example.com/..."
        )
    return Secret(value.reveal().strip())


def _sns_topic(value: str) -> str:
    if not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z]+)+-\d+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?", value):
        raise _spec_error(
            f"'{value[:80]}' is not an SNS topic ARN; write it like arn:aws:sns:us-east-1:123456789012:alerts"
        )
    return value


WebhookUrl = Annotated[Secret, AfterValidator(_webhook_url)]


class NotifyTarget(Section):
    """One place notifications go: exactly one of `webhook`, `slack`, `discord`, `sns`."""

    webhook: WebhookUrl | None = Field(None, examples=["https://hooks.example.com/spotctl"])
    """A URL that gets each notification as a JSON POST: `{"event", "job_id", "title", "text", "fields"}`."""
    slack: WebhookUrl | None = Field(None, examples=["https://hooks.slack.com/services/T000/B000/XXXX"])
    """A Slack incoming-webhook URL: the message as `text` and `blocks`."""
    discord: WebhookUrl | None = Field(None, examples=["https://discord.com/api/webhooks/1234/abcd"])
    """A Discord webhook URL: the message as `content` and one embed."""
    sns: Annotated[str, AfterValidator(_sns_topic)] | None = Field(
        None, examples=["arn:aws:sns:us-east-1:123456789012:alerts"]
    )
    """An SNS topic ARN: the message published with its title as the subject (the sender needs sns:Publish)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> NotifyTarget:
        given = [kind for kind in NOTIFY_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise _spec_error(
                f"a notify target is exactly one of {', '.join(NOTIFY_KINDS)}"
                + (f"; this one sets {' and '.join(given)}" if given else "; this one sets none")
            )
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in NOTIFY_KINDS if getattr(self, kind) is not None)

    @property
    def address(self) -> str:
        """Where it goes, in full (a URL or a topic ARN): only for sending, never for showing."""
        value = getattr(self, self.kind)
        return value.reveal() if isinstance(value, Secret) else value

    @property
    def shown(self) -> str:
        """Where it goes, as it may be shown: `slack https://hooks.slack.com/***`."""
        return f"{self.kind} {getattr(self, self.kind)}"


class NotifySpec(Section):
    targets: list[NotifyTarget] = Field([], examples=[[{"slack": "https://hooks.slack.com/services/T000/B000/XXXX"}]])
    """Where to send the job's notifications. Kept out of the job.yaml stored for the trainer: spotctl launch
    stores them where only the operator and the controller can read them (SECURITY.md)."""
    events: list[Literal[NOTIFY_EVENTS]] | None = Field(None, min_length=1, examples=[["failed", "succeeded"]])
    """Which events to send (default: all): notice (spot notice received), checkpoint (saved on the notice),
    attempt_started (the next attempt, its pool and price), work_lost (steps and cost repeated),
    budget_stop, failed (reason and log tail), succeeded (metrics, cost, savings, artifacts)."""

    def wants(self, event: str) -> bool:
        return self.events is None or event in self.events


# ----------------------------------------------------------------------------------------------- job
class JobSpec(Section):
    """A spotctl job: what to train, where its state lives, and on what it may run."""

    model_config = ConfigDict(title="spotctl job")

    name: str = Field(examples=["flowers-resnet50"])
    """Job name: letters, digits, '.', '_' and '-', up to 64 characters. Job ids start with it."""
    storage: str = Field(examples=["s3://my-bucket/spotctl", "./runs"])
    """Root of everything the job writes (checkpoints, metrics, logs, artifacts): s3://bucket/prefix,
    or a local path for training with no cloud."""
    region: str = Field("us-east-1", examples=["us-east-1", "eu-west-1"])
    """AWS region of the instances (and, usually, of the bucket)."""
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    """What the job may run on."""
    recovery: RecoverySpec = Field(default_factory=RecoverySpec)
    """How interruptions and failures are handled."""
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    """Spending limit."""
    notify: NotifySpec = Field(default_factory=NotifySpec)
    """Where to tell about interruptions, recoveries and the job's end (webhook, Slack, Discord, SNS)."""
    train: TrainSpec
    """The fine-tuning run."""

    @field_validator("name")
    @classmethod
    def _name_format(cls, name: str) -> str:
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            return name
        suggestion = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:64] or "my-job"
        raise _spec_error(
            f"'{name}' is not a valid job name: use letters, digits, '.', '_' and '-' (up to 64), e.g. '{suggestion}'"
        )

    @field_validator("storage")
    @classmethod
    def _storage_location(cls, storage: str, info: ValidationInfo) -> str:
        storage = _check_url(storage, STORAGE_SCHEMES, "storage")
        if urlparse(storage).scheme == "s3" and not urlparse(storage).netloc:
            raise _spec_error("storage s3:// URL has no bucket; write s3://bucket/prefix")
        return _resolve_local(storage, info)

    @field_validator("region")
    @classmethod
    def _region_format(cls, region: str) -> str:
        if re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", region):
            return region
        raise _spec_error(f"'{region}' is not an AWS region; write it like us-east-1")

    @model_validator(mode="after")
    def _default_gpu(self) -> JobSpec:
        if self.compute.instance_types is None and self.compute.gpu is None:
            self.compute.gpu = GpuRequirement()
            self.compute.__pydantic_fields_set__.discard("gpu")
        return self

    def problems(self) -> list[Problem]:
        """Problems that need more than one field (or the model catalog) to see."""
        return [Problem(("compute", *p.loc), p.message) for p in self.compute.problems(self.region)] + [
            Problem(("train", *p.loc), p.message) for p in self.train.problems()
        ]

    @property
    def is_local(self) -> bool:
        """True when the job's storage is a local folder (training with no cloud)."""
        return urlparse(self.storage).scheme in ("", "file")


def json_schema() -> dict[str, Any]:
    """JSON Schema of job.yaml, for editors (yaml-language-server) and the README reference."""
    schema = JobSpec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://spotctl.dev/job.schema.json",
        **schema,
    }
