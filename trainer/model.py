"""Building the model to fine-tune: torchvision architecture, starting weights, new head, freezing,
and the optimizer's parameter groups."""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

import fsspec
import torch
from torch import nn
from torchvision import models

from trainer.job.spec import ModelSpec, OptimizerSpec, TrainSpec, is_weights_name

log = logging.getLogger(__name__)

# These two return (logits, aux_logits) while training unless told not to build the auxiliary heads.
_AUX_HEAD_MODELS = ("googlenet", "inception_v3")


class WeightsError(Exception):
    """Starting weights that cannot be loaded: missing, unreadable, or for another architecture."""


def build_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    """The architecture with its starting weights and a fresh head of `num_classes` outputs."""
    kwargs = {"aux_logits": False} if spec.name in _AUX_HEAD_MODELS else {}
    enum_weights = spec.weights if spec.weights and is_weights_name(spec.weights) else None
    try:
        model = models.get_model(spec.name, weights=enum_weights, **kwargs)
    except (OSError, RuntimeError) as exc:  # no network and not in torch's cache, or a truncated download
        if enum_weights is None:
            raise
        url = models.get_model_weights(spec.name)[enum_weights].url
        raise WeightsError(
            f"could not load {spec.name} weights {enum_weights} from {url} ({type(exc).__name__}: {exc}); "
            f"without internet access, put that file in {torch.hub.get_dir()}/checkpoints/"
        ) from None
    if spec.weights and enum_weights is None:
        load_state_dict_url(model, spec.weights, spec.weights_sha256)
    replace_head(model, num_classes)
    freeze(model, spec.freeze)
    return model


def load_state_dict_url(model: nn.Module, url: str, sha256: str | None = None) -> None:
    """Load a state dict saved with torch.save from any fsspec URL (s3://, https://, a path): only
    tensors and plain containers (weights_only), and only the file `sha256` names when given."""
    state, _ = read_state_dict(url, sha256, "train.model.weights")
    head_name, _ = find_head(model)
    # The head's shape differs when the weights come from another task: it is replaced anyway.
    body = {k: v for k, v in state.items() if not k.startswith(head_name + ".")}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        raise WeightsError(
            f"weights {url} do not fit {type(model).__name__}: {str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}"
        ) from None
    missing = [k for k in missing if not k.startswith(head_name + ".")]
    if missing or unexpected:
        raise WeightsError(
            f"weights {url} do not fit {type(model).__name__}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def read_state_dict(url: str, sha256: str | None, field: str) -> tuple[dict, str]:
    """(the state dict at `url`, the file's sha256): only tensors and plain containers (weights_only),
    and only the file `sha256` names when given (`field` names the spec field of the URL; its hash is
    `<field>_sha256`)."""
    try:
        with fsspec.open(url, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise WeightsError(f"weights {url} do not exist; check {field}") from None
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise WeightsError(
            f"weights {url} have sha256 {digest}, not {field}_sha256 {sha256}; "
            "the file changed: check where it came from, then fix the URL or the hash"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one holding more than tensors (refused by weights_only)
        raise WeightsError(
            f"weights {url} cannot be loaded as a state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a common wrapper (Lightning and others)
    if not isinstance(state, dict):
        raise WeightsError(f"weights {url} hold a {type(state).__name__}, not a state dict")
    return state, digest


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier head: the last Linear, or for a model without any (SqueezeNet) the last 1x1 Conv2d.

    Found by what it is, not by name, so it works for `fc`, `classifier[-1]`, `heads.head`... (a test
    checks every torchvision classification model).
    """
    linear = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    conv1x1 = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    candidates = linear or conv1x1
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no linear or 1x1-conv classifier head")
    return candidates[-1]


def replace_head(model: nn.Module, num_classes: int) -> None:
    name, old = find_head(model)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(
            old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride, bias=old.bias is not None
        )
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, new)


def freeze(model: nn.Module, what: str | list[str]) -> None:
    """Stop training `what`: "none", "backbone" (all but the head) or module-name prefixes."""
    if what == "none":
        return
    if what == "backbone":
        head_name, _ = find_head(model)
        frozen = lambda name: not _under(name, head_name)  # noqa: E731
    else:
        frozen = lambda name: any(_under(name, prefix) for prefix in what)  # noqa: E731
    for name, parameter in model.named_parameters():
        if frozen(name):
            parameter.requires_grad_(False)


def _under(parameter_name: str, prefix: str) -> bool:
    return parameter_name == prefix or parameter_name.startswith(prefix + ".")


@dataclass
class ParamGroup:
    name: str
    params: list[nn.Parameter]
    lr: float
    weight_decay: float


def param_groups(model: nn.Module, spec: OptimizerSpec) -> list[ParamGroup]:
    """Trainable parameters split into the spec's groups (by prefix) plus a default group.

    Frozen parameters are in no group, so they get no optimizer state. The layout is deterministic
    (model order), which the checkpoint relies on to restore the optimizer.
    """
    groups = [
        ParamGroup(
            f"group{i}:{','.join(g.prefixes)}",
            [],
            g.lr,
            spec.weight_decay if g.weight_decay is None else g.weight_decay,
        )
        for i, g in enumerate(spec.param_groups)
    ]
    default = ParamGroup("default", [], spec.lr, spec.weight_decay)
    # With norm_weight_decay / bias_weight_decay set, each group splits into its own parameters and
    # its ":norm" and ":bias" ones (the reference's set_weight_decay: a bias goes by its name first,
    # then a parameter of a normalisation layer by its module), which keep the group's lr.
    special: dict[str, list[ParamGroup]] = {}
    kinds = _decay_kinds(model, spec)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        index = next((i for i, g in enumerate(spec.param_groups) if any(_under(name, p) for p in g.prefixes)), None)
        group = groups[index] if index is not None else default
        kind = kinds.get(name)
        if kind is None:
            group.params.append(parameter)
            continue
        split = special.setdefault(group.name, [])
        target = next((g for g in split if g.name == f"{group.name}:{kind}"), None)
        if target is None:
            decay = spec.norm_weight_decay if kind == "norm" else spec.bias_weight_decay
            target = ParamGroup(f"{group.name}:{kind}", [], group.lr, decay)
            split.append(target)
        target.params.append(parameter)
    for group in groups:
        if not group.params and not special.get(group.name):
            log.warning("optimizer: param group %s matches no trainable parameter (frozen?)", group.name)
    ordered = []
    for group in [*groups, default]:
        ordered += [group, *sorted(special.get(group.name, []), key=lambda g: g.name)]
    return [g for g in ordered if g.params]


NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)
"""What the reference's set_weight_decay counts as normalisation layers."""


def _decay_kinds(model: nn.Module, spec: OptimizerSpec) -> dict[str, str]:
    """Parameter name -> "bias" or "norm" for those that get bias_weight_decay or norm_weight_decay."""
    kinds = {}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if spec.bias_weight_decay is not None and name == "bias":
                kinds[full] = "bias"
            elif spec.norm_weight_decay is not None and isinstance(module, NORM_LAYERS):
                kinds[full] = "norm"
    return kinds


def build_optimizer(model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    groups = [
        {"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay, "name": g.name}
        for g in param_groups(model, spec)
    ]
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum or 0.0, nesterov=spec.nesterov)
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas)


def setup_lines(
    train: TrainSpec, model: nn.Module, optimizer: torch.optim.Optimizer, amp: torch.dtype | None, device: torch.device
) -> list[str]:
    """What the trainer built, for the log at start: architecture and weights, the new head,
    trainable and frozen parameters, the optimizer's groups with their lrs, batch, AMP, workers."""
    spec = train.model
    if spec.weights is None:
        weights = "none (random init)"
    elif is_weights_name(spec.weights):
        weights = f"torchvision {spec.weights}"
    else:
        weights = spec.weights + (f" (sha256 {spec.weights_sha256[:12]}...)" if spec.weights_sha256 else "")
    head_name, head = find_head(model)
    shape = (
        f"Linear {head.in_features} -> {head.out_features} features"
        if isinstance(head, nn.Linear)
        else f"1x1 Conv2d {head.in_channels} -> {head.out_channels} channels"
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    freeze = spec.freeze if isinstance(spec.freeze, str) else ", ".join(spec.freeze)
    groups = "; ".join(
        # initial_lr: the schedule's base (a warm-up has already scaled `lr` down)
        f"{group['name']} lr {group.get('initial_lr', group['lr']):g} "
        f"(weight decay {group['weight_decay']:g}, {sum(p.numel() for p in group['params']):,} parameters)"
        for group in optimizer.param_groups
    )
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16 with a grad scaler", None: "off (fp32)"}[amp]
    return [
        f"model: {spec.name}, weights {weights}",
        f"model: head {head_name} replaced by a new {shape}",
        f"model: {trainable:,} trainable and {frozen:,} frozen parameters (freeze: {freeze})",
        f"optimizer: {train.optimizer.name}, {len(optimizer.param_groups)} param group(s): {groups}",
        f"training: batch size {train.batch_size}, AMP {precision}, {train.data.workers} data workers, on {device}",
    ]
