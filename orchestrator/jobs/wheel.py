"""The wheel of the running spotctl, which every instance installs: the instance runs exactly the code
that launched it.

Built from the source checkout with `pip wheel` (reproducibly: SOURCE_DATE_EPOCH), cached locally by
a hash of the sources, and uploaded content-addressed under the storage root
(`wheels/<sha256>/<file>.whl`), so an unchanged spotctl is uploaded once. SPOTCTL_WHEEL names a
prebuilt wheel instead (for an installation without the sources).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orchestrator
from orchestrator.errors import UserError
from trainer.job.settings import Settings

SOURCE_PATTERNS = (
    "pyproject.toml",
    "orchestrator/**/*.py",
    "orchestrator/**/*.json",
    "trainer/**/*.py",
    "trainer/**/*.json",
)


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
