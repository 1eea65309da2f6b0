"""Are the job's data and weights where its file says, before a boot pays to find out? Asked with the
operator's credentials (the instance's role is `doctor`'s instance-role check).

- A data folder (`train.data.train` / `val`) must be an ImageFolder: one listing with Delimiter='/'
  gives its class folders, one more (the first SAMPLE_KEYS keys) shows images in the classes it
  reaches; a data archive (.tar...) and weights at a URL must exist (HEAD).
- What cannot be settled is `unknown`, never a refusal: a 403 on a listing (these credentials may
  not list there; the instance role may), a scheme spotctl does not check (gs://, az://...).
- A missing key answers 403 to a principal without an unconditioned s3:ListBucket: as the trainer
  does (trainer.job.storage), a 403 is settled by a listing of the key.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlparse

import botocore.exceptions

from orchestrator.aws.checks import Check, Verdict
from orchestrator.aws.clients import Cloud, ErrorKind, classify, error_code
from trainer.job import layout
from trainer.job.imagefolder import IMAGE_EXTENSIONS, is_archive, is_image
from trainer.job.spec import JobSpec, close_match, is_weights_name

CLASS_PAGES = 10  # listing pages of class folders (1000 each); a dataset with more is not compared with val
SAMPLE_KEYS = 1000  # keys listed to see images in the first classes: one request, whatever the dataset's size
HTTP_TIMEOUT_S = 10.0
CHECKED_SCHEMES = ("s3", "http", "https")
MISSING = ("404", "NoSuchKey", "NotFound")


class _Cannot(Exception):
    """The listing or read was refused: the location cannot be checked with these credentials."""

    def __init__(self, permission: str):
        self.permission = permission


def data_checks(cloud: Cloud, spec: JobSpec) -> list[Check]:
    """One check per data URL, and one comparing val's classes with train's when both were listed."""
    checks, classes = [], {}
    for field, url in (("train.data.train", spec.train.data.train), ("train.data.val", spec.train.data.val)):
        if url:
            check, found = _dataset(cloud, field, url)
            checks.append(check)
            classes[field] = found
    train, val = classes.get("train.data.train"), classes.get("train.data.val")
    if train is not None and val is not None and train != val:
        missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        said = "; ".join(
            ([f"missing in val: {_names(missing)}"] if missing else [])
            + ([f"only in val: {_names(extra)}"] if extra else [])
        )
        checks.append(
            Check(
                "data",
                Verdict.PROBLEM,
                f"train.data.val {spec.train.data.val}: val classes differ from train's ({said})",
                "give train and val the same class folders",
            )
        )
    return checks


def weights_checks(cloud: Cloud, spec: JobSpec) -> list[Check]:
    """The weights file, when `train.model.weights` is a URL (a torchvision name is torchvision's)."""
    weights = spec.train.model.weights
    if weights is None or is_weights_name(weights):
        return []
    return [_object(cloud, "weights", "train.model.weights", weights)]


def teacher_checks(cloud: Cloud, spec: JobSpec) -> list[Check]:
    """The distillation teacher: its weights file, or the teacher job's best model (best/LATEST.json)."""
    distill = spec.train.distill
    if distill is None:
        return []
    teacher = distill.teacher
    if teacher.weights is not None:
        return [_object(cloud, "teacher", "train.distill.teacher.weights", teacher.weights)]
    prefix = teacher.job_prefix(spec.storage)
    check = _object(cloud, "teacher", "train.distill.teacher.job", f"{prefix}/{layout.BEST_POINTER}")
    if check.verdict is Verdict.PROBLEM:
        return [
            _problem(
                "train.distill.teacher.job",
                teacher.job,
                f"no best model under {prefix}/{layout.BEST}/",
                "name a job that has trained an epoch (`spotctl status` lists them), or wait for it",
                "teacher",
            )
        ]
    return [Check("teacher", Verdict.OK, f"train.distill.teacher.job {teacher.job}: has a best model")]


# ------------------------------------------------------------------------------------------ datasets
def _dataset(cloud: Cloud, field: str, url: str) -> tuple[Check, list[str] | None]:
    """The check of one data URL, and its class folders (None: not listed whole, or not a folder)."""
    parsed = urlparse(url)
    if parsed.scheme not in CHECKED_SCHEMES:
        return _not_checked("data", field, url), None
    if is_archive(parsed.path) or parsed.scheme != "s3":
        return _object(cloud, "data", field, url), None
    bucket, key = parsed.netloc, parsed.path.strip("/")
    prefix = f"{key}/" if key else ""
    s3 = cloud.client("s3")
    try:
        classes, loose, complete = _class_folders(s3, bucket, prefix)
        if not classes and not loose:
            return _problem(
                field,
                url,
                f"no such prefix (nothing is stored under {url.rstrip('/')}/){_nearby(s3, bucket, key)}",
                "check the path; upload the ImageFolder with `aws s3 sync DIR " + url.rstrip("/") + "/`",
            ), None
        if not classes:
            return _problem(
                field,
                url,
                f"no class folders: its {len(loose)}{'+' * (not complete)} files lie directly under it",
                f"an ImageFolder holds one folder per class, e.g. {url.rstrip('/')}/cat/001.jpg",
            ), None
        if len(classes) < 2 and complete:
            return _problem(
                field, url, f"only the class folder '{classes[0]}'", "a classifier needs at least two class folders"
            ), None
        empty, seen = _classes_without_images(s3, bucket, prefix, classes)
    except _Cannot as cannot:
        return _cannot_check("data", field, url, cannot.permission), None
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "NoSuchBucket":
            return _problem(field, url, f"no such bucket '{bucket}'", "check the bucket name in the URL"), None
        raise
    if empty:
        return _problem(
            field,
            url,
            f"class folder '{empty}' has no images ({', '.join(IMAGE_EXTENSIONS)})",
            "add images to it or remove the folder",
        ), None
    count = f"{len(classes)}{'+' * (not complete)}"
    reach = "each" if seen == len(classes) else f"the first {seen} listed"
    return (
        Check("data", Verdict.OK, f"{field} {url}: {count} class folders ({_names(classes)}), images in {reach}"),
        classes if complete else None,
    )


def _class_folders(s3, bucket: str, prefix: str) -> tuple[list[str], list[str], bool]:
    """(class folder names, files directly under the prefix, whether the listing was whole)."""
    classes, loose, token = [], [], None
    for _ in range(CLASS_PAGES):
        page = _list(s3, bucket, prefix, Delimiter="/", **({"ContinuationToken": token} if token else {}))
        classes += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        loose += [o["Key"] for o in page.get("Contents", []) if o["Key"] != prefix]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated"):
            return [c for c in classes if not c.startswith(".")], loose, True
    return [c for c in classes if not c.startswith(".")], loose, False


def _classes_without_images(s3, bucket: str, prefix: str, classes: list[str]) -> tuple[str | None, int]:
    """The first class the sample lists whole without an image (None: none), and how many classes the
    sample covers. A prefix's keys are contiguous in a listing, so every class but the last one the
    sample reaches is listed whole."""
    page = _list(s3, bucket, prefix, MaxKeys=SAMPLE_KEYS)
    images: dict[str, bool] = {}
    for item in page.get("Contents", []):
        relative = item["Key"][len(prefix) :]
        if "/" in relative:
            name = relative.split("/", 1)[0]
            images[name] = images.get(name, False) or is_image(relative)
    listed = list(images)
    whole = listed if not page.get("IsTruncated") else listed[:-1]
    empty = next((name for name in whole if name in classes and not images[name]), None)
    return empty, len([c for c in classes if c in images])


def _nearby(s3, bucket: str, key: str) -> str:
    """ "; did you mean ..." from what the parent prefix holds (one listing; nothing if it cannot)."""
    parent, _, name = key.rstrip("/").rpartition("/")
    base = f"{parent}/" if parent else ""
    try:
        page = _list(s3, bucket, base, Delimiter="/")
    except (_Cannot, botocore.exceptions.ClientError):
        return ""
    names = [p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
    names += [o["Key"][len(base) :] for o in page.get("Contents", [])]
    match = close_match(name, [n for n in names if n])
    return f"; did you mean s3://{bucket}/{base}{match}?" if match else ""


def _list(s3, bucket: str, prefix: str, **params) -> dict:
    try:
        return s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **params)
    except botocore.exceptions.ClientError as exc:
        if classify(exc) is ErrorKind.AUTH:
            raise _Cannot(f"s3:ListBucket on arn:aws:s3:::{bucket} for the prefix '{prefix}'") from None
        raise


# ----------------------------------------------------------------------------------- single objects
def _object(cloud: Cloud, name: str, field: str, url: str) -> Check:
    """A file the instance will download (an archive, weights): it exists."""
    parsed = urlparse(url)
    if parsed.scheme not in CHECKED_SCHEMES:
        return _not_checked(name, field, url)
    if parsed.scheme != "s3":
        return _http_head(name, field, url)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    s3 = cloud.client("s3")
    try:
        size = s3.head_object(Bucket=bucket, Key=key).get("ContentLength")
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        if code == "NoSuchBucket":
            return _problem(field, url, f"no such bucket '{bucket}'", "check the bucket name in the URL", name)
        if code not in MISSING and classify(exc) is not ErrorKind.AUTH and code != "403":
            raise
        try:  # a 403 may mean missing (no unconditioned s3:ListBucket): a listing of the key settles it
            listed = code not in MISSING and bool(_list(s3, bucket, key, MaxKeys=1).get("Contents"))
        except _Cannot:
            return _cannot_check(name, field, url, f"s3:GetObject on arn:aws:s3:::{bucket}/{key}")
        if listed:
            return _cannot_check(name, field, url, f"s3:GetObject on arn:aws:s3:::{bucket}/{key}")
        return _problem(
            field, url, f"no such object{_nearby(s3, bucket, key)}", "check the URL, or upload the file there", name
        )
    return Check(name, Verdict.OK, f"{field} {url}: exists ({_size(size)})")


def _http_head(name: str, field: str, url: str) -> Check:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HTTP_TIMEOUT_S) as answer:
            size = answer.headers.get("Content-Length")
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            return _problem(field, url, f"no such file (HTTP {exc.code})", "check the URL", name)
        return Check(name, Verdict.UNKNOWN, f"{field} {url}: cannot check: HTTP {exc.code} to a HEAD request")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check(name, Verdict.UNKNOWN, f"{field} {url}: cannot check: not reachable from here ({reason})")
    return Check(name, Verdict.OK, f"{field} {url}: reachable ({_size(int(size)) if size else 'size unknown'})")


# ------------------------------------------------------------------------------------------- answers
def _problem(field: str, url: str, what: str, fix: str, name: str = "data") -> Check:
    return Check(name, Verdict.PROBLEM, f"{field} {url}: {what}", fix)


def _cannot_check(name: str, field: str, url: str, permission: str) -> Check:
    return Check(
        name,
        Verdict.UNKNOWN,
        f"{field} {url}: cannot check: these credentials lack {permission}",
        "not a refusal: the instance reads it with its own role (`spotctl doctor` checks that role's policies)",
    )


def _not_checked(name: str, field: str, url: str) -> Check:
    scheme = urlparse(url).scheme
    return Check(
        name,
        Verdict.UNKNOWN,
        f"{field} {url}: not checked before the boot (spotctl checks {', '.join(s + '://' for s in CHECKED_SCHEMES)}, not {scheme}://)",
    )


def _names(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size} bytes"
