"""Getting a dataset onto local disk: a local folder as is, a remote folder downloaded in parallel to a
cache, a .tar archive (local or remote) extracted safely.

The cache (SPOTCTL_CACHE_DIR) is keyed by the URL and marked complete only once every file is in
place, so a download cut short resumes when the same machine fetches again (files already there with
the right size are kept) and a half-extracted archive is never used. On EC2 that helps only a re-run
on the same machine: each attempt is a new instance whose disks start empty. The bootstrap puts the
cache on the instance's NVMe store when it has one, the fastest disk there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from trainer.job.imagefolder import ARCHIVE_SUFFIXES
from trainer.job.settings import Settings

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".spotctl-complete"

Progress = Callable[[int, int], None]  # (files done, files total)


class DataError(Exception):
    """Training data that cannot be used: missing, empty, unsafe or inconsistent. The message says how to fix it."""


def default_cache_dir() -> Path:
    return Settings.from_env().cache_dir / "data"


def fetch(location: str, field: str, cache_dir: Path, progress: Progress | None = None, threads: int = 16) -> Path:
    """A local folder holding the data at `location` (`field` names the spec field, for messages)."""
    fs, path = fsspec.core.url_to_fs(location)
    is_archive = path.endswith(ARCHIVE_SUFFIXES)
    try:
        if isinstance(fs, LocalFileSystem):
            local = Path(path)
            if not local.exists():
                raise FileNotFoundError(path)
            if not is_archive:
                if not local.is_dir():
                    raise DataError(f"{field}: {location} is a file, not a folder or a .tar archive")
                return local
            stat = local.stat()
            return _extracted(local, _cache_entry(cache_dir, f"{local.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"))
        if is_archive:
            info = fs.info(path)
            entry = _cache_entry(cache_dir, f"{location}:{info.get('size')}:{info.get('ETag') or info.get('mtime')}")
            if not (entry / COMPLETE_MARKER).exists():
                archive = entry / "archive" / Path(path).name
                archive.parent.mkdir(parents=True, exist_ok=True)
                log.info("data: downloading %s (%.1f MB)", location, (info.get("size") or 0) / 1e6)
                fs.get_file(path, str(archive))
                _extracted(archive, entry)
                archive.unlink()
            return _content_root(entry / "files")
        # A folder is synced every time (one listing): new or changed files are fetched, removed ones dropped.
        files = _cache_entry(cache_dir, location) / "files"
        _sync_tree(fs, path, files, location, field, progress, threads)
        return files
    except FileNotFoundError:
        raise DataError(
            f"{field}: {location} does not exist; check the location (relative paths are relative to the job file)"
        ) from None
    except PermissionError:
        if not isinstance(fs, LocalFileSystem) and _nothing_under(fs, path):
            raise DataError(
                f"{field}: {location} does not exist; check the location (relative paths are relative to the job file)"
            ) from None
        raise DataError(
            f"{field}: access to {location} is denied; give the instance profile read access to it"
        ) from None


def _nothing_under(fs, path: str) -> bool:
    """After a 403 on S3: whether no object lies at or under `path`. S3 answers a read of a missing key
    403, not 404, to a role without an unconditioned s3:ListBucket; the listing it may do tells."""
    bucket, _, key = path.partition("/")
    try:
        return not fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents")
    except Exception:  # the listing is refused too: a real denial
        return False


def _cache_entry(cache_dir: Path, key: str) -> Path:
    entry = cache_dir / hashlib.sha256(key.encode()).hexdigest()[:20]
    entry.mkdir(parents=True, exist_ok=True)
    return entry


def _sync_tree(fs, path: str, dest: Path, location: str, field: str, progress: Progress | None, threads: int) -> None:
    listing = fs.find(path, detail=True)
    files = {name: info for name, info in listing.items() if info.get("type") != "directory"}
    if not files:
        raise DataError(f"{field}: {location} holds no files; upload the ImageFolder there (one folder per class)")
    base = path.rstrip("/") + "/"
    wanted: dict[Path, tuple[str, int | None]] = {}
    for name, info in sorted(files.items()):
        relative = name[len(base) :] if name.startswith(base) else Path(name).name
        wanted[_inside(dest, relative, location)] = (name, info.get("size"))
    if dest.exists():
        for existing in dest.rglob("*"):
            if existing.is_file() and existing.resolve() not in wanted:
                existing.unlink()  # removed at the source, or debris of a cut-short download
    todo = [
        (name, target)
        for target, (name, size) in wanted.items()
        if not (target.exists() and target.stat().st_size == size)
    ]
    if not todo:
        log.info("data: %s is in the cache (%d files)", location, len(files))
        return
    log.info("data: downloading %d of %d files from %s with %d threads", len(todo), len(files), location, threads)
    done, lock = len(files) - len(todo), threading.Lock()

    def get(name: str, target: Path) -> None:
        nonlocal done
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        fs.get_file(name, str(partial))
        os.replace(partial, target)  # a file is either whole or absent
        with lock:
            done += 1
            if progress:
                progress(done, len(files))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in as_completed([pool.submit(get, name, target) for name, target in todo]):
            future.result()


def _inside(root: Path, relative: str, source: str) -> Path:
    """`root/relative`, refusing any name that would land outside `root` (absolute, `..`, drive letters)."""
    target = (root / relative).resolve()
    if os.path.isabs(relative) or not target.is_relative_to(root.resolve()):
        raise DataError(f"{source}: entry '{relative}' points outside the dataset folder; refusing it (path traversal)")
    return target


def _extracted(archive: Path, entry: Path) -> Path:
    """Extract `archive` into the cache entry once; refuses members that escape or are not plain files/folders."""
    files = entry / "files"
    if (entry / COMPLETE_MARKER).exists():
        return _content_root(files)
    shutil.rmtree(files, ignore_errors=True)  # debris of an extraction that was cut short
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _inside(files, member.name, str(archive))
                if not (member.isfile() or member.isdir()):
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise DataError(f"{archive}: '{member.name}' is a {kind}; datasets may only hold files and folders")
            log.info("data: extracting %d entries of %s", len(members), archive.name)
            staging = entry / "files.partial"
            shutil.rmtree(staging, ignore_errors=True)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (and backports): a second line of defence
                tar.extractall(staging, members=members, filter="data")
            else:
                tar.extractall(staging, members=members)  # noqa: S202 - every member was checked above
    except tarfile.TarError as exc:
        raise DataError(f"{archive}: not a readable tar archive ({exc})") from None
    os.replace(staging, files)
    (entry / COMPLETE_MARKER).write_text(json.dumps({"source": str(archive)}))
    return _content_root(files)


def _content_root(folder: Path) -> Path:
    """An archive of `flowers/<class>/...` holds the ImageFolder one level down: step into a lone folder."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
        if len(entries) == 1 and entries[0].is_dir():
            folder = entries[0]
        else:
            return folder
