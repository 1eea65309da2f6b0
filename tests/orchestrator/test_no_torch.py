"""The control plane must work where torch is not installed (a laptop, CI): `pip install spotctl`."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import REPO

# Installed as sitecustomize.py, this makes torch and torchvision unimportable in a child process.
BLOCKER = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


@pytest.fixture
def no_torch_env(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONNOUSERSITE": "1"}


def spotctl_script() -> str:
    script = Path(sys.executable).with_name("spotctl")
    assert script.exists(), "the spotctl console script is not installed next to this Python"
    return str(script)


def test_the_blocker_really_blocks_torch(no_torch_env):
    result = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["validate", "examples/aws-resnet50.yaml"],
        ["validate", "--json", "examples/vit-custom-weights.yaml"],
        ["schema"],
        ["schema", "--markdown"],
    ],
    ids=" ".join,
)
def test_cli_runs_without_torch(args, no_torch_env):
    result = subprocess.run([spotctl_script(), *args], env=no_torch_env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout


def test_bad_spec_is_still_reported_without_torch(no_torch_env):
    bad = "tests/unit/bad_specs/unknown_model.yaml"
    result = subprocess.run(
        [spotctl_script(), "validate", bad], env=no_torch_env, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "did you mean 'resnet50'?" in result.stderr


def test_no_module_of_the_control_plane_imports_torch():
    files = (
        sorted(REPO.glob("orchestrator/**/*.py"))
        + [REPO / "trainer/__init__.py"]
        + sorted(REPO.glob("trainer/job/*.py"))
    )
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            # trainer.job.catalog.generate() imports torch inside the function, only when regenerating.
            if path.name == "catalog.py" and node.col_offset > 0:
                continue
            assert not any(n.split(".")[0] in ("torch", "torchvision") for n in names), f"{path}:{node.lineno}"


def test_the_controller_handler_imports_without_torch(no_torch_env):
    """The Lambda package is built without torch: its entry and what it runs must import without it."""
    code = "import orchestrator.controller.handler as h; assert callable(h.handler)"
    result = subprocess.run([sys.executable, "-c", code], env=no_torch_env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
