"""The job's storage: one root (s3://bucket/prefix or a local folder) through fsspec.

Everything the trainer writes goes through here, with paths relative to the job's prefix. Transient
errors, and only those (throttling, 5xx, dropped connections, timeouts: `is_transient`), are retried
with backoff; anything else (a missing object, access denied, a create-only write that lost the race,
a bug) is raised at once.

A missing object is FileNotFoundError on S3 too, although S3 answers a GET or HEAD of a missing key
with 403 AccessDenied, not 404, to whoever lacks an *unconditioned* s3:ListBucket on the bucket: the
trainer role's and the operator's ListBucket hold only under an `s3:prefix` condition, which a GET or
HEAD does not carry. A 403 on a read is therefore settled by listing the key as a prefix, which those
roles may (`_absent_or_denied`): not listed, it is absent; listed, the refusal was real. That keeps
least privilege (no listing of the whole bucket).

Conditional writes and file uploads go through a plain boto3 client, not s3fs (`trainer/job/s3.py`
says why); creating an S3 Storage checks once per process that the installed botocore and s3fs can
make conditional writes at all (`OutdatedLibrary` otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import fsspec
from fsspec.implementations.local import LocalFileSystem

from trainer.job import s3

try:
    import fcntl
except ImportError:  # Windows: local conditional writes are not locked (no concurrent watchers there)
    fcntl = None

log = logging.getLogger(__name__)
T = TypeVar("T")


class Conflict(Exception):
    """A conditional write found the object changed (or created) since the caller read it."""


# What S3 (through botocore or s3fs's translation) answers when trying again may help.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "500",
        "502",
        "503",
        "504",
    }
)
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EBUSY,
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        getattr(errno, "EREMOTEIO", 121),
    }
)


# What AWS answers to credentials it does not accept: another try gets the same answer.
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "TokenRefreshRequired",
        "UnrecognizedClientException",
        "AuthFailure",
    }
)


def bad_credentials(error: BaseException) -> bool:
    """Credentials missing (none found, half of a pair, a provider that failed) or refused as invalid,
    anywhere in the error's chain (a wrapper's cause included): never worth another try."""
    import botocore.exceptions

    missing = (
        botocore.exceptions.NoCredentialsError,
        botocore.exceptions.PartialCredentialsError,
        botocore.exceptions.CredentialRetrievalError,
        botocore.exceptions.NoAuthTokenError,
    )
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, missing) or _code(error) in CREDENTIAL_CODES:
            return True
        error = error.__cause__ or error.__context__
    return False


def is_transient(error: BaseException) -> bool:
    """Whether another try may succeed: throttling, a 5xx, a dropped or timed-out connection; never
    bad credentials (`bad_credentials`), whatever they arrive wrapped in."""
    import botocore.exceptions

    if bad_credentials(error):
        return False
    if isinstance(
        error, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError, Conflict)
    ):
        return False
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error.response.get("Error", {}).get("Code", "") in TRANSIENT_CODES or status >= 500
    if isinstance(
        error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError, TimeoutError, ConnectionError)
    ):
        return True
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
        return True  # s3fs's translation of SlowDown, 503, 500 and of socket errors
    return _is_aiohttp_connection_error(error)


def _is_aiohttp_connection_error(error: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:
        return False
    return isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


class Storage:
    """Read and write objects under one root, on S3 (or any fsspec filesystem) or a local folder."""

    def __init__(self, root: str, attempts: int = 5, sleep: Callable[[float], None] = time.sleep, **options):
        """`options` go to the fsspec filesystem (e.g. profile= for s3fs)."""
        self.url = root.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.url, **options)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._attempts = attempts
        self._sleep = sleep
        if not self.is_local:
            s3.require_conditional_writes()
            self._boto = s3.Uploader(lambda: s3.client_like(self.fs))

    def check(self) -> None:
        """Fail fast when the bucket does not exist (FileNotFoundError) or this identity may not list
        under the root (PermissionError), before anything is written. It lists inside the root, as
        everything else does: a role held to its prefix may not HeadBucket or GetBucketLocation."""
        if self.is_local:
            return
        import botocore.exceptions

        bucket, _, prefix = self._root.partition("/")
        try:
            self._retry(
                f"check {self.url}",
                lambda: self.fs.call_s3(
                    "list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1
                ),
            )
        except (
            FileNotFoundError,
            PermissionError,
            botocore.exceptions.ClientError,
        ) as exc:  # s3fs translates most ClientErrors
            code = (
                exc.response.get("Error", {}).get("Code", "")
                if isinstance(exc, botocore.exceptions.ClientError)
                else type(exc).__name__
            )
            if code in ("NoSuchBucket", "404", "FileNotFoundError"):
                raise FileNotFoundError(f"bucket {bucket} does not exist") from None
            if code in ("AccessDenied", "403", "PermissionError"):
                raise PermissionError(f"access denied listing {self.url}/") from None
            raise

    def path(self, relative: str) -> str:
        """The filesystem path of `relative` (no protocol), for fsspec calls."""
        return f"{self._root}/{relative.lstrip('/')}" if relative else self._root

    def url_of(self, relative: str) -> str:
        return f"{self.url}/{relative.lstrip('/')}"

    def read_bytes(self, relative: str) -> bytes:
        """The object whole (FileNotFoundError if it is missing, PermissionError if it may not be read)."""
        return self._retry(
            f"read {relative}", lambda: self._reading(relative, lambda: self.fs.cat_file(self.path(relative)))
        )

    def write_bytes(
        self, relative: str, data: bytes, create_only: bool = False, tags: dict[str, str] | None = None
    ) -> None:
        """Write an object whole. create_only: fail with FileExistsError if it already exists. tags:
        S3 object tags (what bucket lifecycle rules select on); ignored on local storage."""
        path = self._target(relative)
        if self.is_local:
            self._retry(
                f"write {relative}", lambda: _local_publish(path, create_only, lambda tmp: Path(tmp).write_bytes(data))
            )
            return
        if not create_only:
            self._retry(f"write {relative}", lambda: self.fs.pipe_file(path, data, **_tagging(tags)))
            return
        bucket, key = path.split("/", 1)
        self._retry(
            f"write {relative}",
            lambda: self._put(bucket, key, data, IfNoneMatch="*", **_tagging(tags)),
        )

    def read_versioned(self, relative: str) -> tuple[bytes, str]:
        """The object and a version token for `write_if` (its ETag on S3, a content hash locally).
        The version is read first: if the object changes in between, the token is stale and the
        conditional write refuses, which is the safe direction."""
        path = self.path(relative)
        if self.is_local:
            data = self.read_bytes(relative)
            return data, hashlib.sha256(data).hexdigest()
        bucket, key = path.split("/", 1)
        etag = self._retry(f"head {relative}", lambda: self._reading(relative, lambda: self._head(bucket, key)))["ETag"]
        return self.read_bytes(relative), etag

    def write_if(self, relative: str, data: bytes, version: str | None) -> None:
        """Write only if the object is still at `version` (None: only if it does not exist yet);
        otherwise raise Conflict. S3 checks this itself (If-Match / If-None-Match)."""
        path = self._target(relative)
        if version is None:
            try:
                self.write_bytes(relative, data, create_only=True)
            except FileExistsError:
                raise Conflict(relative) from None
            return
        if self.is_local:
            self._retry(f"write {relative}", lambda: _local_write_if(path, data, version))
            return
        bucket, key = path.split("/", 1)
        self._retry(f"write {relative}", lambda: self._put(bucket, key, data, IfMatch=version))

    def _head(self, bucket: str, key: str) -> dict:
        import botocore.exceptions

        try:
            return self._boto.client.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"{bucket}/{key}") from None
            raise

    def _put(self, bucket: str, key: str, data: bytes, **condition) -> None:
        """One conditional PutObject through the plain client. 412: the condition failed (create-only: the
        object exists, FileExistsError; If-Match: Conflict). 409 ConditionalRequestConflict: another
        conditional write to the key was in flight; create-only tries again (the next answer is 412 or
        success), If-Match is a Conflict (the caller re-reads)."""
        import botocore.exceptions

        try:
            self._boto.client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in ("PreconditionFailed", "412"):
                raise (FileExistsError(f"{bucket}/{key}") if "IfNoneMatch" in condition else Conflict(key)) from None
            if code in ("ConditionalRequestConflict", "409"):
                if "IfNoneMatch" in condition:
                    raise _ConditionalConflict(f"{bucket}/{key}: {exc}") from None
                raise Conflict(key) from None
            raise
        finally:
            self.fs.invalidate_cache(f"{bucket}/{key}")

    def upload(self, local_file: str, relative: str, move: bool = False, tags: dict[str, str] | None = None) -> None:
        """Copy a local file to `relative` (multipart on S3 for large files). move: the caller no longer
        needs `local_file`, so on local storage it may be renamed into place instead of copied. tags:
        as for write_bytes."""
        path = self._target(relative)
        if self.is_local:
            if move:
                try:
                    os.replace(local_file, path)  # atomic, and no copy (same filesystem)
                    return
                except OSError:
                    pass  # another filesystem: copy it
            self._retry(
                f"upload {relative}", lambda: _local_publish(path, False, lambda tmp: shutil.copyfile(local_file, tmp))
            )
            return
        bucket, key = path.split("/", 1)
        self._retry(f"upload {relative}", lambda: self._boto.upload(local_file, bucket, key, _tagging(tags)))
        self.fs.invalidate_cache(path)

    def _target(self, relative: str) -> str:
        """The path to write `relative` to; a local folder needs its parent created first (S3 has none)."""
        path = self.path(relative)
        if self.is_local:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        return path

    def exists(self, relative: str) -> bool:
        """Whether the object exists (PermissionError if this identity may not even tell)."""

        def check() -> bool:
            try:
                return self._reading(relative, lambda: self.fs.exists(self.path(relative)))
            except FileNotFoundError:  # a 403 that listing showed to mean "absent"
                return False

        return self._retry(f"check {relative}", check)

    def list(self, relative: str) -> list[str]:
        """Names directly under `relative` (files and folders); empty if it does not exist."""
        path = self.path(relative)

        def names() -> list[str]:
            try:
                return sorted(
                    entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(path, detail=False, refresh=True)
                )
            except FileNotFoundError:
                return []

        return self._retry(f"list {relative}", names)

    def find(self, relative: str) -> list[str]:
        """Every object under the folder `relative`, at any depth, as paths relative to the root
        (one paginated listing on S3); empty if there is none."""
        base = self.path(relative).rstrip("/")

        def names() -> list[str]:
            self.fs.invalidate_cache(base)
            try:
                found = self.fs.find(base + "/")
            except FileNotFoundError:
                return []
            return sorted(entry.removeprefix(self._root.rstrip("/") + "/") for entry in found)

        return self._retry(f"list {relative}/", names)

    def delete_all(self, relatives: list[str]) -> None:
        """Delete these objects (S3: DeleteObjects, a thousand a call); one already gone is not an error.
        Locally, folders left empty go too."""
        if not relatives:
            return
        paths = [self.path(r) for r in relatives]
        if not self.is_local:
            self._retry(f"delete {len(paths)} objects", lambda: self.fs.rm(paths))
        else:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            for folder in sorted({os.path.dirname(p) for p in paths}, key=len, reverse=True):
                while folder.startswith(self._root.rstrip("/") + "/"):
                    try:
                        os.rmdir(folder)  # only if empty
                    except OSError:
                        break
                    folder = os.path.dirname(folder)

    def delete(self, relative: str, recursive: bool = False) -> None:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):  # already gone: what was asked for
                self.fs.rm(self.path(relative), recursive=recursive)

        self._retry(f"delete {relative}", remove)

    def download(self, relative: str, local_file: str) -> None:
        """Copy an object to a local file (FileNotFoundError if it is missing)."""
        self._retry(
            f"download {relative}",
            lambda: self._reading(relative, lambda: self.fs.get_file(self.path(relative), local_file)),
        )

    def _reading(self, relative: str, call: Callable[[], T]) -> T:
        """call(), a read of `relative`; a 403 from S3 becomes what it means (see the module docstring)."""
        if self.is_local:
            return call()
        return reading(self.fs, self.path(relative), call)

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        for attempt in range(1, self._attempts + 1):
            try:
                return call()
            except Exception as exc:
                if attempt == self._attempts or not is_transient(exc):
                    raise
                delay = min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.warning(
                    "storage: %s failed (%s: %s); retry %d/%d in %.1fs",
                    what,
                    type(exc).__name__,
                    exc,
                    attempt,
                    self._attempts - 1,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")


def reading(fs, path: str, call: Callable[[], T]) -> T:
    """call(), a read of the object at `path` ("bucket/key") on the s3fs filesystem `fs`, with S3's 403
    for a missing key made a FileNotFoundError (see the module docstring). For reads outside a
    Storage: a job file, a dataset."""
    try:
        return call()
    except Exception as exc:
        if not _is_denial(exc):
            raise
        settled = absent_or_denied(fs, path)
    if isinstance(settled, ObjectDenied):
        # Listed after all: it may have been written between the read and the listing (a checkpoint
        # finishing its upload). One more read tells a new object from a real refusal.
        try:
            return call()
        except Exception as exc:
            if not _is_denial(exc):
                raise
    raise settled from None


class ObjectDenied(PermissionError):
    """The object exists and this identity may not read it."""


def absent_or_denied(fs, path: str) -> Exception:
    """After a 403 on reading `path` ("bucket/key"): FileNotFoundError if a listing of the key as a
    prefix does not show it, else PermissionError (the object is there and may not be read). A listing
    refused too is a PermissionError naming both permissions. Transient errors of the listing are
    raised (the caller's retry repeats the read)."""
    bucket, _, key = path.partition("/")
    url = f"s3://{path}"
    try:
        listed = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
    except Exception as exc:
        if not _is_denial(exc):
            raise
        return PermissionError(
            f"access denied reading {url}, and listing s3://{bucket} under {key} to tell whether it exists "
            "was denied too: this identity needs s3:GetObject on the object and s3:ListBucket for that prefix"
        )
    # The key itself sorts before every longer key it prefixes: if it exists, it is the first listed.
    if any(entry.get("Key") == key for entry in listed.get("Contents", [])):
        return ObjectDenied(
            f"access denied reading {url}: the object exists, and this identity may not read it (s3:GetObject)"
        )
    return FileNotFoundError(url)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _ConditionalConflict(OSError):
    """S3's 409 ConditionalRequestConflict on a create-only write: another conditional write to the key
    was in flight. Transient: trying again gets a definite answer."""

    def __init__(self, message: str):
        super().__init__(errno.EBUSY, message)


def _code(error: BaseException) -> str:
    import botocore.exceptions

    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def _is_denial(error: BaseException) -> bool:
    """An S3 403: s3fs's translation (PermissionError) or botocore's own (AccessDenied; "403" for a HEAD)."""
    return isinstance(error, PermissionError) or _code(error) in ("AccessDenied", "403")


def _local_write_if(path: str, data: bytes, version: str) -> None:
    lock = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
    with open(lock, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        try:
            current = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except FileNotFoundError:
            raise Conflict(path) from None
        if current != version:
            raise Conflict(path)
        _local_publish(path, False, lambda tmp: Path(tmp).write_bytes(data))


def _local_publish(path: str, create_only: bool, fill: Callable[[str], object]) -> None:
    """Write a local file so readers see it whole or not at all, as they do on S3: fill a temporary
    file beside it, then rename it into place (or hard-link it, which refuses an existing file)."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    os.close(handle)
    try:
        fill(temporary)
        if create_only:
            os.link(temporary, path)  # FileExistsError if another writer got there first
        else:
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _tagging(tags: dict[str, str] | None) -> dict:
    """s3fs passes extra keywords on to PutObject / CreateMultipartUpload."""
    return {"Tagging": urlencode(tags)} if tags else {}
