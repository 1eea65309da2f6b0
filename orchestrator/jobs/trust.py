"""What the next instance boots with is checked, not trusted: record.json lives in the bucket, so
before an attempt starts, its `ami` and `wheel_url` are held to what the operator resolved.

- `ami` must be the AMI the job's `compute.ami` resolves to now; or, when that is an `ssm:` parameter
  (a moving "latest", so an older attempt may have resolved it to an earlier image), an image owned by
  Amazon or by this account.
- `wheel_url` must be a content-addressed wheel under the job's own storage: `<storage>/wheels/<sha256>/<name>.whl`.

The instance role may not write record.json (infra/spotctl.yaml); this is the second line, for a
record written some other way.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import botocore.exceptions

from orchestrator.aws.clients import Cloud, ErrorKind, as_user_error, classify
from orchestrator.errors import UserError
from trainer.job import layout
from trainer.job.documents import JobRecord
from trainer.job.spec import JobSpec

AMAZON = "amazon"  # describe_images' ImageOwnerAlias of Amazon's images (the Deep Learning AMIs among them)
WHEEL_NAME = re.compile(r"[0-9a-f]{64}/[A-Za-z0-9_.+-]+\.whl")  # layout.wheel_key(sha256, name), below wheels/


Resolve = Callable[
    [Cloud, str], tuple[str, str]
]  # orchestrator.aws.ec2.resolve_ami: compute.ami -> (AMI id, root device)


def check_launch_inputs(cloud: Cloud, spec: JobSpec, record: JobRecord, resolve: Resolve) -> None:
    """Refuse (UserError) a record whose AMI or wheel URL is not what the operator would launch."""
    check_wheel_url(spec, record)
    check_ami(cloud, spec, record, resolve)


def check_wheel_url(spec: JobSpec, record: JobRecord) -> None:
    wheels = f"{spec.storage.rstrip('/')}/{layout.WHEELS}/"
    url = record.wheel_url
    if not (url.startswith(wheels) and WHEEL_NAME.fullmatch(url[len(wheels) :])):
        raise UserError(
            f"record.json of job {record.job_id}: wheel_url {url!r} is not a wheel under this job's storage; "
            f"expected {wheels}<sha256>/<name>.whl",
            "someone other than spotctl changed record.json; check who can write the bucket, "
            "then set wheel_url back to the wheel the job was launched with",
        )


def check_ami(cloud: Cloud, spec: JobSpec, record: JobRecord, resolve: Resolve) -> None:
    expected, _ = resolve(cloud, spec.compute.ami)
    if record.ami == expected:
        return
    refusal = f"record.json of job {record.job_id}: ami {record.ami!r} is not {expected}, which compute.ami ({spec.compute.ami}) resolves to"
    hint = "someone other than spotctl changed record.json; check who can write the bucket, then set ami back"
    if not spec.compute.ami.startswith("ssm:"):
        raise UserError(refusal, hint)
    try:
        images = cloud.client("ec2").describe_images(ImageIds=[record.ami])["Images"]
    except botocore.exceptions.ClientError as exc:
        if classify(exc) not in (ErrorKind.CONFIG, ErrorKind.NOT_FOUND):  # InvalidAMIID.*: no such image
            raise as_user_error(exc, f"describing {record.ami}") from None
        images = []
    account = cloud.client("sts").get_caller_identity()["Account"]
    owner = (images[0].get("ImageOwnerAlias"), images[0].get("OwnerId")) if images else (None, None)
    if owner[0] != AMAZON and owner[1] != account:
        raise UserError(
            f"{refusal}, and it is owned by {owner[1] or 'nobody (it does not exist)'}, neither Amazon nor account {account}",
            hint,
        )
