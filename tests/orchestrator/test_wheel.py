"""The wheel every instance installs holds the whole spotctl: every module and data file of both
planes (a subpackage missing its __init__.py, or data missing from package-data, would be left out)."""

from __future__ import annotations

import zipfile

import pytest

from testbed import REPO


def test_the_wheel_ships_every_module_and_data_file(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        str(p.relative_to(REPO))
        for folder in ("orchestrator", "trainer")
        for p in (REPO / folder).rglob("*")
        if p.is_file() and p.suffix in (".py", ".json", ".yaml") and "__pycache__" not in p.parts
    }
    assert wanted - shipped == set()
    assert not any(name.startswith(("tests/", "testbed/", "bench/")) for name in shipped)


def test_the_wheel_carries_the_tested_set(wheel):
    from orchestrator.jobs.wheel import CONSTRAINTS_MEMBER

    assert zipfile.ZipFile(wheel).read(CONSTRAINTS_MEMBER) == (REPO / "constraints.txt").read_bytes()


def _closure(names: list[str], extras: tuple[str, ...] = (), without: set[str] = frozenset()) -> set[str]:
    """The distributions `names` need, transitively, as installed here (markers evaluated), not
    counting `without` and what only they need."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    from orchestrator.jobs.wheel import normalized

    seen: set[str] = set()
    todo = [(name, extras) for name in names]
    while todo:
        name, wanted = todo.pop()
        if normalized(name) in seen or normalized(name) in without:
            continue
        seen.add(normalized(name))
        for line in distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in ("", *wanted)):
                todo.append((requirement.name, ()))
    return seen


def test_the_image_stack_is_what_only_torch_needs_as_installed_with_the_tested_set():
    """The bootstrap ships no constraint for what torch and torchvision alone need (the image's, pinned by
    its torch), nor for what torch pins, and one for everything else spotctl[trainer] installs."""
    from importlib.metadata import PackageNotFoundError, distribution

    from orchestrator.jobs.wheel import image_provided

    try:
        distribution("torch")
    except PackageNotFoundError:
        pytest.skip("needs the trainer's packages installed (the tested set)")
    torch_side = _closure(["torch", "torchvision"])
    own = _closure(["spotctl"], ("trainer",), without={"torch", "torchvision"}) - {"spotctl"}
    assert {"boto3", "s3fs", "onnxruntime", "numpy", "pillow", "nvidia-ml-py"} <= own
    assert sorted(n for n in torch_side - own if not image_provided(n)) == []
    # onnxruntime takes any sympy, but torch pins it (exactly, in 2.5 and 2.6), and sympy pins mpmath;
    # tensorboard takes any setuptools and (through werkzeug) markupsafe, which torch's side brings too.
    assert sorted(n for n in own if image_provided(n)) == ["markupsafe", "mpmath", "setuptools", "sympy"]


def test_a_prebuilt_wheel_without_the_tested_set_is_refused(tmp_path, monkeypatch):
    from orchestrator.errors import UserError
    from orchestrator.jobs.wheel import build_wheel

    old = tmp_path / "spotctl-0.0.9-py3-none-any.whl"
    with zipfile.ZipFile(old, "w") as archive:
        archive.writestr("orchestrator/__init__.py", "")
    monkeypatch.setenv("SPOTCTL_WHEEL", str(old))
    with pytest.raises(UserError) as raised:
        build_wheel()
    assert (
        raised.value.message
        == f"SPOTCTL_WHEEL={old} holds no orchestrator/data/constraints.txt, the tested set the instance installs"
    )
    assert raised.value.hint == "build it from this spotctl's checkout with `pip wheel --no-deps .`"


def test_a_stored_wheel_with_other_bytes_is_uploaded_again(aws, wheel):
    import boto3

    from orchestrator.jobs.record import JobStore
    from trainer.job import layout
    from trainer.job.storage import file_sha256

    boto3.client("s3").create_bucket(Bucket="wheels-bucket")
    store, digest = JobStore("s3://wheels-bucket/spotctl"), file_sha256(wheel)
    key = f"spotctl/{layout.wheel_key(digest, wheel.name)}"
    boto3.client("s3").put_object(Bucket="wheels-bucket", Key=key, Body=b"not the wheel")
    assert store.upload_wheel(wheel, digest) == f"s3://wheels-bucket/{key}"
    assert boto3.client("s3").get_object(Bucket="wheels-bucket", Key=key)["Body"].read() == wheel.read_bytes()
