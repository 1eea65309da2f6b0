"""The wheel of the running spotctl, which every instance installs: the instance runs exactly the code
that launched it.

Built from the source checkout with `pip wheel` (reproducibly: SOURCE_DATE_EPOCH), cached locally by
a hash of the sources, and uploaded content-addressed under the storage root
(`wheels/<sha256>/<file>.whl`), so an unchanged spotctl is uploaded once. SPOTCTL_WHEEL names a
prebuilt wheel instead (for an installation without the sources).

The wheel carries the tested set, `constraints.txt` (package data, a link to the repository's file),
so the bootstrap installs with exactly the versions the tests ran with. It reads them from the wheel
after checking the wheel's sha256: one digest covers both, and a later attempt, rendered from the
record's wheel URL alone, gets the same set. It leaves out IMAGE_STACK: a GPU image's torch is
built for its CUDA, and a constraint on torch, or on what torch pins, would make pip replace it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import orchestrator
from orchestrator.errors import UserError
from trainer.job.settings import Settings

SOURCE_PATTERNS = (
    "pyproject.toml",
    "constraints.txt",
    "orchestrator/**/*.py",
    "orchestrator/**/*.json",
    "trainer/**/*.py",
    "trainer/**/*.json",
)


# Where the wheel holds the tested set (orchestrator/data/constraints.txt links to ../../constraints.txt).
CONSTRAINTS_MEMBER = "orchestrator/data/constraints.txt"
# What the image brings and the instance keeps (names normalised: lower case, runs of -_. as one -):
# torch and torchvision, what only they need, and what torch pins exactly (CUDA, cuDNN, NCCL, triton;
# sympy in torch 2.5 and 2.6, though onnxruntime needs it too; setuptools and markupsafe, though
# tensorboard needs them too). nvidia-ml-py is spotctl's own
# (telemetry) and stays pinned. tests/orchestrator/test_wheel.py checks this against the metadata.
IMAGE_STACK = (
    r"torch|torchvision|torchaudio|triton|sympy|mpmath|networkx|filelock|jinja2|markupsafe|setuptools"
    r"|cuda-[a-z0-9-]+|nvidia-(?!ml-py$)[a-z0-9-]+"
)


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_provided(name: str) -> bool:
    """True for a package the bootstrap leaves to the image (no constraint is shipped for it)."""
    return re.fullmatch(IMAGE_STACK, normalized(name)) is not None


def source_root() -> Path | None:
    root = Path(orchestrator.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    return root if pyproject.exists() and 'name = "spotctl"' in pyproject.read_text() else None


def source_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted({p for pattern in SOURCE_PATTERNS for p in root.glob(pattern) if "__pycache__" not in p.parts}):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_dir() -> Path:
    return Settings.from_env().cache_dir / "wheels"


def build_wheel() -> Path:
    """A wheel of this spotctl (built once per source state)."""
    wheel = Settings.from_env().wheel
    if wheel is not None:
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise UserError(
                f"SPOTCTL_WHEEL={wheel} is not a wheel file",
                "build one with `pip wheel --no-deps .` in the spotctl checkout",
            )
        if not _holds_constraints(wheel):
            raise UserError(
                f"SPOTCTL_WHEEL={wheel} holds no {CONSTRAINTS_MEMBER}, the tested set the instance installs",
                "build it from this spotctl's checkout with `pip wheel --no-deps .`",
            )
        return wheel
    root = source_root()
    if root is None:
        raise UserError(
            "launch ships the running spotctl to the instance, but this installation has no sources to build it from",
            "install spotctl from a checkout (`pip install -e .`), or set SPOTCTL_WHEEL to a spotctl wheel",
        )
    target = cache_dir() / source_digest(root)[:24]
    built = sorted(target.glob("spotctl-*.whl"))
    if built:
        return built[-1]
    with tempfile.TemporaryDirectory(prefix="spotctl-wheel-") as out:
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}  # reproducible zip timestamps
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", out, str(root)]
        # Without isolation when the build tools are here (fast, offline); else let pip fetch them.
        result = subprocess.run([*command, "--no-build-isolation"], capture_output=True, text=True, env=env, cwd=out)
        if result.returncode != 0:
            result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out)
        if result.returncode != 0:
            raise UserError(
                f"building the spotctl wheel failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}",
                f"try `{sys.executable} -m pip wheel --no-deps {root}` to see why",
            )
        wheel = next(Path(out).glob("spotctl-*.whl"))
        target.mkdir(parents=True, exist_ok=True)
        final = target / wheel.name
        shutil.move(str(wheel), final)
    return final


def _holds_constraints(wheel: Path) -> bool:
    try:
        return CONSTRAINTS_MEMBER in zipfile.ZipFile(wheel).namelist()
    except zipfile.BadZipFile:
        return False
