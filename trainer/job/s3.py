"""What `Storage` needs of S3 beyond s3fs: a plain boto3 client for conditional writes and large
uploads, and the check that the installed libraries can make conditional writes at all.

Why a second client beside s3fs's:
- **Conditional writes.** s3fs passes every call's keywords through a filter that keeps only what the
  installed botocore's model knows, so with an older botocore `IfMatch`/`IfNoneMatch` are dropped in
  silence and a compare-and-swap becomes a blind overwrite. A plain botocore client validates its
  parameters and refuses an unknown one (`ParamValidationError`).
- **Large uploads.** s3fs uploads a file's parts on one event-loop thread, which also signs, checksums
  and (on real S3) encrypts every byte; s3transfer's `TransferManager` spreads that over threads. A
  checkpoint must reach S3 inside the two minutes of a spot notice.
The client reaches what the s3fs filesystem reaches: the same session settings (profile, config
files or their isolation), credentials, endpoint, region and client config.
"""

from __future__ import annotations

import functools
import inspect
import mimetypes
import threading
from collections.abc import Callable
from dataclasses import dataclass

# The first releases that carry S3 conditional writes (pyproject.toml holds the same floors):
# botocore 1.35.69 (2024-11-25) added IfMatch to PutObject and CompleteMultipartUpload, whose
# IfNoneMatch came in 1.35.2; s3fs 2024.12.0 (commit ca949ab, "Implement exclusive/atomic write")
# added `mode="create"` to pipe_file and put_file.
BOTOCORE_FLOOR = "1.35.69"
S3FS_FLOOR = "2024.12.0"
CONDITIONAL_PARAMETERS = ("IfMatch", "IfNoneMatch")
CONDITIONAL_OPERATIONS = ("PutObject", "CompleteMultipartUpload")

# Parts of large uploads: boto3's `upload_file` defaults (8 MiB parts from 8 MiB up, 10 threads), which
# is what the checkpoint benchmark (bench/checkpoint_upload.py) holds our uploads to.
PART_BYTES = 8 * 2**20
UPLOAD_THREADS = 10


class OutdatedLibrary(RuntimeError):
    """An installed library too old for spotctl's S3 conditional writes (named, with its version and floor)."""


@dataclass(frozen=True)
class Installed:
    """What the conditional-write check looks at (real ones come from `installed()`; tests fake them)."""

    botocore_version: str
    s3_model: object  # a botocore ServiceModel of S3: operation_model(name).input_shape.members
    s3fs_version: str
    pipe_file: Callable  # s3fs.S3FileSystem._pipe_file


def installed() -> Installed:
    import botocore
    import botocore.loaders
    import botocore.model
    import s3fs

    model = botocore.model.ServiceModel(botocore.loaders.create_loader().load_service_model("s3", "service-2"), "s3")
    return Installed(botocore.__version__, model, s3fs.__version__, s3fs.S3FileSystem._pipe_file)


def check_conditional_writes(found: Installed) -> None:
    """Raise OutdatedLibrary unless botocore's S3 model has IfMatch and IfNoneMatch on PutObject and
    CompleteMultipartUpload, and s3fs's pipe_file takes `mode` (create-only writes)."""
    for operation in CONDITIONAL_OPERATIONS:
        members = found.s3_model.operation_model(operation).input_shape.members
        missing = [name for name in CONDITIONAL_PARAMETERS if name not in members]
        if missing:
            raise OutdatedLibrary(
                f"botocore {found.botocore_version} is installed, but spotctl needs botocore>={BOTOCORE_FLOOR}: "
                f"its S3 {operation} has no {' or '.join(missing)}, so conditional writes (the job record's "
                f"compare-and-swap, create-only commits) cannot be made; "
                f"upgrade with: pip install 'boto3>={BOTOCORE_FLOOR}' 'botocore>={BOTOCORE_FLOOR}'"
            )
    if "mode" not in inspect.signature(found.pipe_file).parameters:
        raise OutdatedLibrary(
            f"s3fs {found.s3fs_version} is installed, but spotctl needs s3fs>={S3FS_FLOOR}: its pipe_file has "
            f"no `mode`, so a create-only write would overwrite; upgrade with: pip install 's3fs>={S3FS_FLOOR}'"
        )


@functools.cache
def require_conditional_writes() -> None:
    """check_conditional_writes on what is installed, once per process (a failure is raised each call)."""
    check_conditional_writes(installed())


def client_like(fs):
    """A botocore S3 client (thread-safe, validating) that reaches what the s3fs filesystem `fs` reaches."""
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config
    from fsspec.asyn import sync

    sync(fs.loop, fs.set_session)  # s3fs settles its session (the one given, or its own) lazily
    aio = fs.session
    session = botocore.session.Session(session_vars=dict(aio.session_var_map))
    for name, value in aio.instance_variables().items():  # e.g. the profile s3fs was given
        session.set_config_variable(name, value)
    # The models s3fs's session already parsed: a new loader would parse S3's large model again.
    session.register_component("data_loader", aio.get_component("data_loader"))
    options = {key: value for key, value in fs.config_kwargs.items() if key in Config.OPTION_DEFAULTS}
    options.setdefault("connect_timeout", fs.connect_timeout)
    options.setdefault("read_timeout", fs.read_timeout)
    options["max_pool_connections"] = max(options.get("max_pool_connections", 10), UPLOAD_THREADS)
    if fs.anon:
        options["signature_version"] = UNSIGNED
    given = {
        "aws_access_key_id": fs.key,
        "aws_secret_access_key": fs.secret,
        "aws_session_token": fs.token,
        "endpoint_url": fs.endpoint_url,
        "use_ssl": fs.use_ssl,
    }
    arguments = {key: value for key, value in given.items() if value is not None}
    return session.create_client("s3", config=Config(**options), **{**arguments, **fs.client_kwargs})


class Uploader:
    """Uploads files with s3transfer (parallel parts above PART_BYTES) through one client, built on first use."""

    def __init__(self, make_client: Callable[[], object]):
        self._make_client = make_client
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def upload(self, local_file: str, bucket: str, key: str, extra: dict) -> None:
        """Upload whole or not at all: a failed multipart upload is aborted, its error raised as it came
        (a botocore ClientError, a connection error), never wrapped, so the caller can tell a transient one."""
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=UPLOAD_THREADS,
            use_threads=True,
        )
        content_type, _ = mimetypes.guess_type(local_file)
        if content_type and "ContentType" not in extra:
            extra = {**extra, "ContentType": content_type}
        with create_transfer_manager(self.client, config) as manager:
            manager.upload(local_file, bucket, key, extra_args=extra).result()
