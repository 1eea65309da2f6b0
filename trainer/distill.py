"""Knowledge distillation (`train.distill`): a teacher's soft targets added to the student's loss.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

(Hinton et al.: T^2 keeps the soft term's gradients on the scale of the hard one's as T grows.)

The teacher runs online on the very batch the student trains on, after augmentation: no cached logits.
Seeing the same random crop is what makes distillation work on its own ("consistency", Beyer et al.
2022: ResNet-50 to 82.8 % top-1); logits cached per image would teach the un-augmented view. It runs in
eval mode (no dropout, BatchNorm's running statistics: deterministic, and no RNG drawn, so the run
stays bitwise exact on resume) under torch.no_grad and the run's autocast.

Nothing of the teacher is saved but its identity (where it came from, its file's sha256): a
checkpoint of a ResNet-152 teacher's student stays a student's size. A resume whose teacher is not
the one the checkpoint was trained with is refused (`check_resume`). Validation, best/ and the export
are the student's alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from trainer.checkpoint import Checkpointer, CheckpointMismatch
from trainer.job import layout
from trainer.job.documents import Final, Outcome
from trainer.job.spec import DistillSpec, JobSpec, TeacherSpec
from trainer.job.storage import Storage
from trainer.model import WeightsError, read_state_dict, replace_head

log = logging.getLogger(__name__)


class TeacherError(WeightsError):
    """A teacher that cannot be used: missing, unfinished, or trained for other classes."""


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    identity: dict
    """Where the teacher came from and the sha256 of its weights: recorded in every checkpoint."""


def distiller_for(
    spec: JobSpec, classes: list[str], device: torch.device, memory_format=torch.preserve_format
) -> Distiller | None:
    """The run's distiller; None when it does not distill."""
    if spec.train.distill is None:
        return None
    # Building the architecture draws its (overwritten) initial weights from torch's global RNG: forked,
    # so a distilled run's dropout draws the same numbers as without a teacher.
    with torch.random.fork_rng(devices=[]):
        teacher = load_teacher(spec, classes)
    return Distiller(spec.train.distill, teacher, device, memory_format)


def load_teacher(spec: JobSpec, classes: list[str]) -> Teacher:
    """The teacher, built on the CPU, its weights verified, for a student of `classes`."""
    teacher = spec.train.distill.teacher
    if teacher.job is not None:
        return _from_job(teacher.job_prefix(spec.storage), classes)
    return _from_weights(teacher, classes)


def _from_job(prefix: str, classes: list[str]) -> Teacher:
    storage = Storage(prefix)
    # A job still training may keep a better model yet: its best/ would change under a resumed student.
    final = _final_of(storage)
    if final is None or not (final.is_(Outcome.SUCCEEDED) or final.is_(Outcome.STOPPED)):
        said = "has no final word yet (still training, or never run)" if final is None else f"ended {final.outcome}"
        raise TeacherError(
            f"train.distill.teacher.job: {prefix} {said}; a teacher job must have succeeded or been stopped "
            "(`spotctl status` shows where it is)"
        )
    best = Checkpointer(storage, layout.BEST, kind="best")
    found = best.load_latest(repair=False)  # another job's files: read, never touched
    if found is None:
        raise TeacherError(
            f"train.distill.teacher.job: no best model under {prefix}/{layout.BEST} "
            "(a job keeps one once it validated an epoch); check the job id, or wait for that job to train"
        )
    committed, state = found
    name = committed.manifest.get("model")
    if name not in models.list_models():
        raise TeacherError(f"train.distill.teacher.job: {prefix}'s best model names no torchvision model ({name!r})")
    _same_classes(list(state.get("classes") or committed.manifest.get("classes") or []), classes, prefix)
    model = _build(name, len(classes))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise TeacherError(
            f"train.distill.teacher.job: {prefix}'s best model does not load into {name}: {exc}"
        ) from None
    sha256 = committed.manifest["files"]["state.pt"]["sha256"]
    return Teacher(model, {"job": prefix, "model": name, "step": committed.step, "sha256": sha256})


def _final_of(storage: Storage) -> Final | None:
    try:
        return Final.parse(storage.read_bytes(layout.FINAL)) or Final(outcome=Outcome.UNREADABLE)
    except FileNotFoundError:
        return None


def _from_weights(teacher: TeacherSpec, classes: list[str]) -> Teacher:
    state, sha256 = read_state_dict(teacher.weights, teacher.weights_sha256, "train.distill.teacher.weights")
    model = _build(teacher.model, len(classes))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing keys, or a head for another number of classes
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise TeacherError(
            f"train.distill.teacher.weights {teacher.weights} do not fit {teacher.model} with a {len(classes)}-class head: "
            f"{first[:300]}; the teacher must be the whole model, fine-tuned on this job's classes"
        ) from None
    return Teacher(model, {"weights": teacher.weights, "model": teacher.model, "sha256": sha256})


def _build(name: str, num_classes: int) -> nn.Module:
    kwargs = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    model = models.get_model(name, weights=None, **kwargs)
    replace_head(model, num_classes)
    return model


def _same_classes(teacher: list[str], student: list[str], prefix: str) -> None:
    if teacher != student:
        differ = sorted(set(teacher) ^ set(student))[:3]
        what = f"e.g. {', '.join(differ)} in one only" if differ else "the same names in another order"
        raise TeacherError(
            f"train.distill.teacher.job: {prefix} was trained on {len(teacher)} classes, this job has {len(student)} "
            f"({what}); a teacher must know the student's classes: use the same class folders"
        )


class Distiller:
    """The teacher on the run's device and the combined loss."""

    def __init__(self, spec: DistillSpec, teacher: Teacher, device: torch.device, memory_format=torch.preserve_format):
        self.spec, self.identity = spec, teacher.identity
        self.teacher = teacher.model.to(device, memory_format=memory_format).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        log.info(
            "distill: teacher %s from %s (sha256 %s...), T=%g, alpha=%g",
            self.identity["model"],
            self.identity.get("job") or self.identity.get("weights"),
            self.identity["sha256"][:12],
            spec.temperature,
            spec.alpha,
        )

    def loss(self, images: torch.Tensor, logits: torch.Tensor, hard_loss: torch.Tensor) -> torch.Tensor:
        """The training loss for a batch the student gave `logits` for (under the caller's autocast)."""
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return distillation_loss(logits, teacher_logits, hard_loss, self.spec.temperature, self.spec.alpha)

    def check_resume(self, recorded: dict | None) -> None:
        """Refuse a checkpoint trained with another teacher (or none): the run would not be the same."""
        if recorded == self.identity:
            return
        if recorded is None:
            raise CheckpointMismatch(
                "the checkpoint was trained without a teacher, this run distills from one; use a new job name"
            )
        raise CheckpointMismatch(
            f"the checkpoint was trained with teacher {_shown(recorded)}, this run's teacher is {_shown(self.identity)}; "
            "the teacher changed since: put its weights back, or use a new job name"
        )


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, hard_loss: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard_loss, the KL averaged over the batch.
    Computed in fp32: a softmax at T=4 under fp16 loses the small probabilities the soft targets carry."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * soft + (1 - alpha) * hard_loss


def _shown(identity: dict) -> str:
    where = identity.get("job") or identity.get("weights")
    step = f" step {identity['step']}" if "step" in identity else ""
    return f"{identity.get('model')} from {where}{step} (sha256 {str(identity.get('sha256'))[:12]}...)"
