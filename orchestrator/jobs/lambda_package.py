"""The controller's code for AWS Lambda: spotctl's wheel (jobs/wheel.py) without torch, installed with
its own dependencies for Lambda's platform into one zip.

The zip holds `orchestrator/` and `trainer/` with only `trainer/job/` of the data plane (the
contract, torch-free), plus the wheel's base dependencies (pydantic and pydantic-core, PyYAML,
boto3/botocore, s3fs/fsspec, ...) at the versions of the tested set, `constraints.txt`. boto3 and
botocore are vendored although the runtime has them: the runtime's may predate the S3 conditional
writes the record depends on (botocore 1.35.69, pyproject's floor), and trainer/job/s3.py would refuse
them. Binaries are downloaded for Lambda (`pip install --platform manylinux2014_x86_64
--only-binary=:all: --python-version 3.12`), never built from source. Nothing of torch is asked for:
the `trainer` extra is not installed, and a dependency that pulled torch in is refused.

Built once per wheel and target, cached under `$SPOTCTL_CACHE_DIR/controller/`; the zip is
reproducible (sorted members, fixed times), so its sha256 names the code: `infra deploy` uploads it
to `<storage>/lambda/<sha256>/<file>` (layout.lambda_code) and the stack's outputs record it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from orchestrator.aws.infra import ControllerCode
from orchestrator.errors import UserError
from orchestrator.jobs.wheel import CONSTRAINTS_MEMBER, build_wheel
from trainer.job.settings import Settings

PYTHON_VERSION = "3.12"  # the template's Runtime: python3.12
PLATFORM = "manylinux2014_x86_64"  # the function's architecture: x86_64 (the template's default)
# Lambda's own limit on a function's unzipped code (the zip itself may be larger when given from S3).
UNZIPPED_LIMIT = 250 * 1024 * 1024
# Never in the function: the data plane's heavy stack (what the image brings on an instance).
FORBIDDEN = ("torch", "torchvision", "torchaudio", "triton", "nvidia")
# Of the data plane, only the contract and the package itself.
TRAINER_KEPT = ("trainer/__init__.py", "trainer/job/")
# Bumped when what goes into the zip changes, so a cached zip of the old recipe is not reused.
RECIPE = "1"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def cache_dir() -> Path:
    return Settings.from_env().cache_dir / "controller"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_of(wheel: Path) -> str:
    """spotctl's version from the wheel's file name (spotctl-<version>-py3-none-any.whl)."""
    return wheel.name.split("-")[1]


def build(python_version: str = PYTHON_VERSION, platform: str = PLATFORM) -> ControllerCode:
    """The controller's zip for this spotctl (built once per wheel, Python version and platform)."""
    wheel = build_wheel()
    version = version_of(wheel)
    key = hashlib.sha256(f"{_sha256(wheel)}\0{python_version}\0{platform}\0{RECIPE}".encode()).hexdigest()[:24]
    target = cache_dir() / key
    archive = target / f"spotctl-controller-{version}.zip"
    if archive.is_file():
        return ControllerCode(archive, _sha256(archive), version)
    with tempfile.TemporaryDirectory(prefix="spotctl-controller-") as scratch:
        tree = Path(scratch) / "tree"
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_bytes(zipfile.ZipFile(wheel).read(CONSTRAINTS_MEMBER))
        _install(wheel, tree, constraints, python_version, platform)
        _prune(tree)
        pulled = sorted(p.name for p in tree.iterdir() if p.name.lower().split("-")[0] in FORBIDDEN)
        if pulled:  # a dependency asked for them: the function must stay torch-free
            raise UserError(
                f"the controller's code would hold {', '.join(pulled)}",
                "a base dependency of spotctl pulls torch in; it belongs in the `trainer` extra",
            )
        size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
        if size > UNZIPPED_LIMIT:
            raise UserError(
                f"the controller's code is {size / 2**20:.0f} MiB unzipped, over Lambda's limit of {UNZIPPED_LIMIT // 2**20} MiB",
                "leave out a heavy base dependency of spotctl, or deploy with --no-controller",
            )
        built = Path(scratch) / archive.name
        _zip(tree, built)
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), archive)
    return ControllerCode(archive, _sha256(archive), version)


def _install(wheel: Path, tree: Path, constraints: Path, python_version: str, platform: str) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",  # the function's Python compiles what it imports; ours would write the wrong tag
        "--target",
        str(tree),
        "--platform",
        platform,
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--only-binary=:all:",
        "-c",
        str(constraints),
        str(wheel),  # no extras: the control plane's dependencies only
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR")] or result.stderr.splitlines()
        raise UserError(
            f"installing the controller's dependencies for {platform}, Python {python_version} failed: "
            f"{lines[-1] if lines else result.returncode}",
            "pip needs a package index (PyPI, or one named in pip's configuration); or deploy with --no-controller",
        )


def _prune(tree: Path) -> None:
    """Drop what the function never runs: the data plane beyond trainer/job/, console scripts."""
    for path in sorted((tree / "trainer").iterdir()):
        relative = path.relative_to(tree).as_posix() + ("/" if path.is_dir() else "")
        if relative not in TRAINER_KEPT:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(tree / "bin", ignore_errors=True)
    for cache in list(tree.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def _zip(tree: Path, archive: Path) -> None:
    """A reproducible zip: members sorted, fixed times, plain permissions."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, path.read_bytes())
