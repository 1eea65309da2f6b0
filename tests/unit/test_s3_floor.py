"""The check that the installed botocore and s3fs can make S3 conditional writes: without it, an old
botocore makes s3fs drop If-Match / If-None-Match in silence and every compare-and-swap overwrites."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trainer.job import s3
from trainer.job.s3 import Installed, OutdatedLibrary, check_conditional_writes


def model(**members_of) -> SimpleNamespace:
    """A fake botocore ServiceModel: operation name -> the members of its input shape."""
    return SimpleNamespace(
        operation_model=lambda name: SimpleNamespace(input_shape=SimpleNamespace(members=members_of[name]))
    )


CURRENT = {"Bucket": 1, "Key": 1, "IfMatch": 1, "IfNoneMatch": 1}


async def pipe_file(self, path, data, chunksize=50 * 2**20, max_concurrency=None, mode="overwrite", **kwargs): ...


async def old_pipe_file(self, path, data, chunksize=50 * 2**20, **kwargs): ...


def test_current_libraries_pass():
    check_conditional_writes(
        Installed("1.35.69", model(PutObject=CURRENT, CompleteMultipartUpload=CURRENT), "2024.12.0", pipe_file)
    )


def test_the_installed_ones_pass():
    s3.require_conditional_writes()
    check_conditional_writes(s3.installed())


def test_a_botocore_without_if_match_fails_naming_version_and_floor():
    before = {"Bucket": 1, "Key": 1, "IfNoneMatch": 1}  # botocore 1.35.2 to 1.35.68
    with pytest.raises(OutdatedLibrary) as caught:
        check_conditional_writes(
            Installed("1.35.68", model(PutObject=before, CompleteMultipartUpload=before), "2024.12.0", pipe_file)
        )
    assert str(caught.value) == (
        "botocore 1.35.68 is installed, but spotctl needs botocore>=1.35.69: its S3 PutObject has no IfMatch, "
        "so conditional writes (the job record's compare-and-swap, create-only commits) cannot be made; "
        "upgrade with: pip install 'boto3>=1.35.69' 'botocore>=1.35.69'"
    )


def test_a_botocore_without_any_condition_names_both():
    with pytest.raises(OutdatedLibrary, match=r"botocore 1\.34\.0 .* PutObject has no IfMatch or IfNoneMatch"):
        check_conditional_writes(
            Installed("1.34.0", model(PutObject={"Key": 1}, CompleteMultipartUpload={"Key": 1}), "2024.12.0", pipe_file)
        )


def test_a_multipart_commit_without_conditions_fails():
    with pytest.raises(OutdatedLibrary, match="its S3 CompleteMultipartUpload has no IfMatch"):
        check_conditional_writes(
            Installed(
                "1.35.69", model(PutObject=CURRENT, CompleteMultipartUpload={"IfNoneMatch": 1}), "2024.12.0", pipe_file
            )
        )


def test_an_s3fs_whose_pipe_file_has_no_mode_fails():
    with pytest.raises(OutdatedLibrary) as caught:
        check_conditional_writes(
            Installed("1.43.0", model(PutObject=CURRENT, CompleteMultipartUpload=CURRENT), "2024.10.0", old_pipe_file)
        )
    assert str(caught.value) == (
        "s3fs 2024.10.0 is installed, but spotctl needs s3fs>=2024.12.0: its pipe_file has no `mode`, so a "
        "create-only write would overwrite; upgrade with: pip install 's3fs>=2024.12.0'"
    )


def test_an_s3_storage_is_refused_with_outdated_libraries(monkeypatch):
    from trainer.job.storage import Storage

    old = Installed(
        "1.34.0", model(PutObject={"Key": 1}, CompleteMultipartUpload={"Key": 1}), "2024.6.0", old_pipe_file
    )
    monkeypatch.setattr(s3, "installed", lambda: old)
    s3.require_conditional_writes.cache_clear()
    try:
        with pytest.raises(OutdatedLibrary, match="botocore 1.34.0 is installed"):
            Storage("s3://bucket/spotctl")
    finally:
        s3.require_conditional_writes.cache_clear()


def test_the_cli_gets_one_message_and_a_hint(monkeypatch):
    from orchestrator.errors import UserError
    from orchestrator.jobs.record import JobStore

    old = Installed(
        "1.35.0", model(PutObject={"Key": 1}, CompleteMultipartUpload={"Key": 1}), "2024.6.0", old_pipe_file
    )
    monkeypatch.setattr(s3, "installed", lambda: old)
    s3.require_conditional_writes.cache_clear()
    try:
        with pytest.raises(UserError) as caught:
            JobStore("s3://bucket/spotctl")
    finally:
        s3.require_conditional_writes.cache_clear()
    assert caught.value.message.startswith("botocore 1.35.0 is installed, but spotctl needs botocore>=1.35.69")
    assert caught.value.hint == "upgrade it as said; constraints.txt in the repository lists the tested versions"


def test_the_floors_are_the_declared_ones():
    from testbed import REPO

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"botocore>={s3.BOTOCORE_FLOOR}" in dependencies and f"boto3>={s3.BOTOCORE_FLOOR}" in dependencies
    assert f"s3fs>={s3.S3FS_FLOOR}" in dependencies and f"fsspec>={s3.S3FS_FLOOR}" in dependencies
