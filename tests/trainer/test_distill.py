"""Knowledge distillation (`train.distill`): the loss, the two kinds of teacher, and what a run with one
keeps (the teacher's identity, never its weights; the student exported). Its bitwise resume is in
test_recipe_resume.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import models

from testbed.trainer_runs import final_state, teacher_file, write_job
from trainer.checkpoint import CheckpointMismatch
from trainer.distill import Distiller, Teacher, TeacherError, distillation_loss, load_teacher
from trainer.job.spec import DistillSpec, JobSpec
from trainer.model import WeightsError, replace_head
from trainer.run import EXIT_FAILED, EXIT_SUCCEEDED, run

CLASSES = ["circle", "square", "triangle"]


def spec_with(tmp_path: Path, teacher: dict, **distill) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "s",
            "storage": str(tmp_path / "runs"),
            "train": {
                "model": {"name": "mobilenet_v3_small", "weights": None},
                "data": {"train": "/d"},
                "distill": {"teacher": teacher, **distill},
            },
        }
    )


# ------------------------------------------------------------------------------------------- the loss
def test_the_loss_is_alpha_t_squared_kl_plus_the_rest_of_ce():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    ce = F.cross_entropy(student, labels)
    t, alpha = 4.0, 0.3
    p = F.softmax(teacher / t, 1)
    kl = (p * (p.log() - F.log_softmax(student / t, 1))).sum(1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * ce
    assert distillation_loss(student, teacher, ce, t, alpha).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(student, teacher, ce, t, 0.0).item() == pytest.approx(ce.item())
    assert distillation_loss(student, student.clone(), ce, t, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_the_soft_term_pulls_the_student_towards_the_teacher():
    student = torch.zeros(2, 3, requires_grad=True)
    teacher = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    distillation_loss(student, teacher, torch.zeros(()), 2.0, 1.0).backward()
    assert student.grad[0, 0] < 0 and student.grad[1, 2] < 0  # descending raises the teacher's favourites


def test_defaults_are_documented_values():
    spec = DistillSpec.model_validate({"teacher": {"job": "teacher-250101-ab12"}})
    assert (spec.temperature, spec.alpha) == (4.0, 0.5)


# ----------------------------------------------------------------------------------------- the teacher
def test_a_teacher_from_weights_loads_whole_and_is_identified_by_its_sha256(tmp_path):
    path, sha256 = teacher_file(tmp_path / "t.pt")
    teacher = load_teacher(spec_with(tmp_path, {"model": "resnet18", "weights": path}), CLASSES)
    reference = models.get_model("resnet18", weights=None)
    replace_head(reference, 3)
    reference.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    reference.eval(), teacher.model.eval()
    assert torch.equal(teacher.model(x), reference(x))
    assert teacher.identity == {"weights": path, "model": "resnet18", "sha256": sha256}


def test_a_teacher_for_other_classes_or_another_file_is_refused(tmp_path):
    path, _ = teacher_file(tmp_path / "t.pt", classes=5)
    with pytest.raises(
        TeacherError, match=r"do not fit resnet18 with a 3-class head: .*fine-tuned on this job's classes"
    ):
        load_teacher(spec_with(tmp_path, {"model": "resnet18", "weights": path}), CLASSES)
    with pytest.raises(WeightsError, match="not train.distill.teacher.weights_sha256 " + "0" * 64):
        load_teacher(spec_with(tmp_path, {"model": "resnet18", "weights": path, "weights_sha256": "0" * 64}), CLASSES)
    with pytest.raises(WeightsError, match="do not exist; check train.distill.teacher.weights"):
        load_teacher(spec_with(tmp_path, {"model": "resnet18", "weights": str(tmp_path / "none.pt")}), CLASSES)


def test_a_teacher_job_that_has_not_finished_is_refused(tmp_path):
    (tmp_path / "runs/jobs/busy/status").mkdir(parents=True)
    with pytest.raises(TeacherError, match=r"jobs/busy has no final word yet .*must have succeeded or been stopped"):
        load_teacher(spec_with(tmp_path, {"job": "busy"}), CLASSES)
    (tmp_path / "runs/jobs/busy/status/final.json").write_text(json.dumps({"outcome": "failed"}))
    with pytest.raises(TeacherError, match="jobs/busy ended failed"):
        load_teacher(spec_with(tmp_path, {"job": "busy"}), CLASSES)


def test_a_resume_with_another_teacher_is_refused_by_name():
    model = models.get_model("resnet18", weights=None)
    identity = {"weights": "s3://b/t.pt", "model": "resnet18", "sha256": "a" * 64}
    distiller = Distiller(DistillSpec(teacher={"job": "x"}), Teacher(model, identity), torch.device("cpu"))
    distiller.check_resume(dict(identity))
    with pytest.raises(
        CheckpointMismatch, match=r"trained with teacher resnet18 from s3://b/t.pt \(sha256 bbbbbbbbbbbb"
    ):
        distiller.check_resume({**identity, "sha256": "b" * 64})
    with pytest.raises(CheckpointMismatch, match="trained without a teacher"):
        distiller.check_resume(None)


# -------------------------------------------------------------------------------------- a real run
@pytest.mark.slow
def test_a_finished_job_teaches_and_the_student_is_what_is_kept_and_exported(
    tmp_path, image_folder, trainer_in_process, monkeypatch
):
    """Teacher: a resnet18 job trained for one epoch. Student: mobilenet_v3_small with teacher.job; its
    checkpoint names the teacher (job, step, sha256), holds no teacher weight, and its export is the student."""
    data = image_folder(per_class={"train": 6, "val": 2})
    monkeypatch.chdir(tmp_path)
    teacher_job = write_job(
        tmp_path / "teacher.yaml", "./runs", data.split("train"), data.split("val"), name="teacher",
        train__model={"name": "resnet18", "weights": None}, train__epochs=1,
    )  # fmt: skip
    assert run(str(teacher_job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED
    student_job = write_job(
        tmp_path / "student.yaml", "./runs", data.split("train"), data.split("val"), name="student",
        train__epochs=1, train__distill={"teacher": {"job": "teacher"}, "temperature": 2},
        train__export={"formats": ["state_dict"]},
    )  # fmt: skip
    assert run(str(student_job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED

    prefix = tmp_path / "runs/jobs/student"
    state = final_state(str(prefix))
    teacher_manifest = json.loads(next((tmp_path / "runs/jobs/teacher/best").glob("step-*/MANIFEST.json")).read_text())
    assert state["teacher"] == {
        "job": str(tmp_path / "runs/jobs/teacher"),
        "model": "resnet18",
        "step": teacher_manifest["step"],
        "sha256": teacher_manifest["files"]["state.pt"]["sha256"],
    }
    assert not any(key.startswith("layer1.") for key in state["model"])  # resnet18's: not saved
    manifest = json.loads(next(prefix.glob("checkpoints/step-*/MANIFEST.json")).read_text())
    assert manifest["teacher"] == state["teacher"]
    exported = json.loads((prefix / "artifacts/manifest.json").read_text())
    model_json = prefix / "artifacts" / exported["export_id"] / "model.json"
    assert json.loads(model_json.read_text())["architecture"] == "mobilenet_v3_small"


@pytest.mark.slow
def test_a_student_whose_teacher_file_changed_is_refused_on_resume(tmp_path, image_folder, trainer_in_process):
    data = image_folder(per_class={"train": 6, "val": 2})
    path, _ = teacher_file(tmp_path / "t.pt")
    job = write_job(
        tmp_path / "job.yaml", str(tmp_path / "runs"), data.split("train"), data.split("val"), name="student",
        train__epochs=1, train__distill={"teacher": {"model": "resnet18", "weights": path}},
    )  # fmt: skip
    assert run(str(job), heartbeat_seconds=0.2) == EXIT_SUCCEEDED
    final = tmp_path / "runs/jobs/student/status/final.json"
    final.unlink()  # as if it had been interrupted: the next run resumes from its checkpoint
    teacher_file(tmp_path / "t.pt", seed=2)
    assert run(str(job), heartbeat_seconds=0.2) == EXIT_FAILED
    error = json.loads(final.read_text())["error"]
    assert "the checkpoint was trained with teacher resnet18 from " in error
    assert "the teacher changed since: put its weights back, or use a new job name" in error
