"""The controller's Lambda zip (orchestrator/jobs/lambda_package.py): built from spotctl's wheel for
Lambda's platform, nothing of torch in it, reproducible and cached, and importable on its own: the
handler module is imported from the unzipped tree alone (`python -I`, only that tree on sys.path)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orchestrator.jobs import lambda_package


@pytest.fixture
def cache(wheel, kept_cache_dir, monkeypatch):
    """The zip built (pip download) once, then reused."""
    monkeypatch.setenv("SPOTCTL_WHEEL", str(wheel))
    monkeypatch.setenv("SPOTCTL_CACHE_DIR", str(kept_cache_dir))


def _python(version: str) -> str | None:
    found = shutil.which(f"python{version}")
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    return (
        found
        if found and subprocess.run([found, "-V"], capture_output=True).returncode == 0
        else (str(pyenv[-1]) if pyenv else None)
    )


def test_the_controllers_zip_holds_spotctl_without_torch(cache):
    code = lambda_package.build()
    assert code.version == "0.1.0" and code.path.name == "spotctl-controller-0.1.0.zip"
    names = zipfile.ZipFile(code.path).namelist()
    tops = {name.split("/")[0] for name in names}
    assert not {
        t for t in tops if t.split("-")[0].lower() in ("torch", "torchvision", "triton") or t.startswith("nvidia")
    }
    assert {"orchestrator", "trainer", "pydantic", "pydantic_core", "yaml", "boto3", "botocore"} <= tops
    assert {n for n in names if n.startswith("trainer/")} == {
        n for n in names if n.startswith(("trainer/job/", "trainer/__init__.py"))
    }
    assert "trainer/loop.py" not in names and "trainer/job/storage.py" in names
    # Lambda's binaries, not this machine's: pydantic-core for CPython 3.12 on manylinux x86_64.
    assert any(n.startswith("pydantic_core/_pydantic_core.cpython-312-x86_64-linux-gnu") for n in names)
    # boto3/botocore vendored at the tested set's versions (the runtime's may predate conditional writes).
    assert "botocore-1.43.117.dist-info/METADATA" in names
    assert sum(i.file_size for i in zipfile.ZipFile(code.path).infolist()) < lambda_package.UNZIPPED_LIMIT
    again = lambda_package.build()  # cached, and reproducible: the same bytes, the same digest
    assert (again.path, again.sha256) == (code.path, code.sha256)


def test_the_handler_imports_from_the_zip_alone(cache, tmp_path):
    python = _python(lambda_package.PYTHON_VERSION)
    version = lambda_package.PYTHON_VERSION if python else f"{sys.version_info.major}.{sys.version_info.minor}"
    python = python or sys.executable  # no 3.12 here: the same recipe for this interpreter's version
    code = lambda_package.build(python_version=version)
    tree = tmp_path / "tree"
    zipfile.ZipFile(code.path).extractall(tree)
    has_controller = (tree / "orchestrator" / "controller" / "handler.py").is_file()
    module = "orchestrator.controller.handler" if has_controller else "orchestrator.jobs.watch"
    probe = (
        f"import sys; sys.path[:] = [{str(tree)!r}] + [p for p in sys.path if 'site-packages' not in p and p];"
        f"import {module}, botocore, pydantic, yaml;"
        "assert all(m.__file__.startswith(sys.path[0]) for m in (botocore, pydantic, yaml));"
        "assert 'torch' not in sys.modules; print(botocore.__version__)"
    )
    result = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.43.117"
    if not has_controller:
        pytest.skip("orchestrator.controller is not merged yet: imported orchestrator.jobs.watch instead")
