"""Storage retries what another try may fix (throttling, 5xx, dropped or timed-out connections), and only
that: a bug, a missing object or a refusal surfaces at once, without sleeping."""

from __future__ import annotations

import errno

import botocore.exceptions
import pytest

from trainer.job.storage import Conflict, Storage


def client_error(code: str, status: int = 400) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


TRANSIENT = [
    OSError(errno.EBUSY, "SlowDown (s3fs's translation)"),
    OSError(121, "InternalError (s3fs's translation)"),
    ConnectionResetError("connection reset by peer"),
    TimeoutError("read timed out"),
    client_error("SlowDown", 503),
    client_error("ThrottlingException"),
    client_error("SomethingNew", 502),
    botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"),
    botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"),
]
PERMANENT = [
    KeyError("a bug in the caller"),
    TypeError("another bug"),
    ValueError("bad data"),
    FileNotFoundError("missing.json"),
    PermissionError("AccessDenied"),
    FileExistsError("create-only lost the race"),
    Conflict("record.json"),
    client_error("AccessDenied", 403),
    client_error("NoSuchBucket", 404),
    OSError(errno.EINVAL, "InvalidRequest"),
]


def failing(storage: Storage, errors: list[BaseException], monkeypatch) -> list[str]:
    """Make the storage's reads raise `errors` in turn, then succeed; returns the list of calls."""
    calls = []

    def cat_file(path, *args, **kwargs):
        calls.append(path)
        if errors:
            raise errors.pop(0)
        return b"ok"

    monkeypatch.setattr(storage.fs, "cat_file", cat_file)
    return calls


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: f"{type(e).__name__}:{e}")
def test_a_transient_error_is_retried(error, tmp_path, monkeypatch):
    slept = []
    storage = Storage(str(tmp_path), attempts=3, sleep=slept.append)
    calls = failing(storage, [error, error], monkeypatch)
    assert storage.read_bytes("x.json") == b"ok"
    assert len(calls) == 3 and len(slept) == 2


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: f"{type(e).__name__}:{e}")
def test_any_other_error_surfaces_at_once(error, tmp_path, monkeypatch):
    slept = []
    storage = Storage(str(tmp_path), attempts=5, sleep=slept.append)
    calls = failing(storage, [error], monkeypatch)
    with pytest.raises(type(error)):
        storage.read_bytes("x.json")
    assert len(calls) == 1 and slept == []


def test_a_transient_error_that_persists_is_raised_after_the_last_try(tmp_path, monkeypatch):
    slept = []
    storage = Storage(str(tmp_path), attempts=4, sleep=slept.append)
    calls = failing(storage, [TimeoutError(f"try {n}") for n in range(1, 10)], monkeypatch)
    with pytest.raises(TimeoutError, match="try 4"):
        storage.read_bytes("x.json")
    assert len(calls) == 4 and len(slept) == 3
