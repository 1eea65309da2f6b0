"""The instance's bootstrap script (EC2 user-data), rendered from the job.

It logs everything to a file shipped to the attempt's bootstrap log (trainer.job.layout) every
minute and at exit, installs the spotctl wheel (pip keeps what the AMI already has, torch above all),
runs `python -m trainer run` with the job's id, and shuts the instance down when the trainer is done. Not at once when it
was interrupted (exit 75): EC2 is taking the instance, and the next attempt resumes from the
checkpoint. Any failure the trainer could not report itself (install, a crash, the OOM killer) gets a
`final.json` from the script, so it is never mistaken for an interruption.

Safety: every value is validated (ids, region, attempt) or passed through `shlex.quote` (URLs), so no
job name or path can inject shell; nothing secret is in it (the instance profile gives access to S3).
EC2 refuses user-data above 16 KB: `render` checks the size.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from orchestrator.errors import UserError
from trainer.job import layout
from trainer.job.documents import Final, Outcome

# Filled in by the script when it reports a failure (they stand for values only it knows).
ERROR_MARK, TIME_MARK = "@error@", "@now@"

USER_DATA_LIMIT = 16 * 1024
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
# The Deep Learning AMI's PyTorch environment; elsewhere, the first python3 on the PATH.
PYTHON_CANDIDATES = ("/opt/pytorch/bin/python", "/opt/conda/bin/python", "python3")

TEMPLATE = r"""#!/bin/bash
# spotctl bootstrap: job {job_id}, attempt {attempt} (rendered by spotctl {version}).
set -uo pipefail
JOB_URL={job_url}
JOB_PREFIX={job_prefix}
WHEEL_URL={wheel_url}
export SPOTCTL_JOB_URL="$JOB_URL" SPOTCTL_JOB_ID={job_id} SPOTCTL_ATTEMPT={attempt} AWS_DEFAULT_REGION={region} AWS_REGION={region}
BOOTSTRAP_LOG_URL={bootstrap_log_url}
FINAL_URL={final_url}
export AWS_EC2_METADATA_SERVICE_ENDPOINT="${{AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}}"
LOG_DIR="${{SPOTCTL_LOG_DIR:-/var/log/spotctl}}"
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/attempt-$SPOTCTL_ATTEMPT.log"
exec >>"$LOG" 2>&1
echo "spotctl: bootstrap of $SPOTCTL_JOB_ID attempt $SPOTCTL_ATTEMPT starting at $(date -u +%FT%TZ)"

PYTHON=""
for candidate in {python_candidates}; do
  if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
done
if [ -z "$PYTHON" ]; then echo "spotctl: no python found"; shutdown -h now; exit 1; fi

s3_copy() {{  # SOURCE DEST: the AWS CLI where there is one, else boto3
  if command -v aws >/dev/null 2>&1; then aws s3 cp --only-show-errors "$1" "$2"; return; fi
  "$PYTHON" - "$1" "$2" <<'PY'
import sys, boto3
def split(url): bucket, _, key = url[5:].partition("/"); return bucket, key
src, dst = sys.argv[1:3]
s3 = boto3.client("s3")
if src.startswith("s3://"): s3.download_file(*split(src), dst)
else: s3.upload_file(src, *split(dst))
PY
}}
ship_log() {{ s3_copy "$LOG" "$BOOTSTRAP_LOG_URL" >/dev/null 2>&1 || true; }}
( trap 'exit 0' TERM; while :; do sleep 60 & wait $!; ship_log; done ) &
SHIPPER=$!
finish() {{  # CODE: ship the log last (no older copy can land after it), then leave
  kill "$SHIPPER" 2>/dev/null; wait "$SHIPPER" 2>/dev/null
  ship_log
  if [ -z "${{SPOTCTL_NO_SHUTDOWN:-}}" ]; then
    # 75: interrupted; EC2 is taking the instance. Should it not within 5 minutes, go anyway.
    if [ "$1" -eq 75 ]; then (sleep 300; shutdown -h now) & else shutdown -h now; fi
  fi
  exit "$1"
}}
report_failure() {{  # MESSAGE: a final.json, unless the trainer wrote one, so nobody mistakes this for an interruption
  "$PYTHON" - "$FINAL_URL" "$1" {failure} <<'PY' || echo "spotctl: could not write final.json"
import json, sys, datetime, boto3
url, message, failure = sys.argv[1:4]
bucket, _, key = url[5:].partition("/")
now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
body = failure.replace('"{error_mark}"', json.dumps(message)).replace('"{time_mark}"', json.dumps(now))  # a Final document (trainer.job.documents)
try:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body.encode(), IfNoneMatch="*")
except Exception as exc:
    if "PreconditionFailed" not in str(exc):
        raise
PY
}}

if [ -z "${{SPOTCTL_SKIP_INSTALL:-}}" ]; then
  WHEEL="/tmp/$(basename "$WHEEL_URL")"
  if ! s3_copy "$WHEEL_URL" "$WHEEL" || ! "$PYTHON" -m pip install --quiet --upgrade-strategy only-if-needed "$WHEEL[trainer]"; then
    echo "spotctl: installing $WHEEL_URL failed"
    report_failure "the instance could not install spotctl from $WHEEL_URL (see {bootstrap_log})"
    finish 1
  fi
fi

export SPOTCTL_INSTANCE_ID
SPOTCTL_INSTANCE_ID="$(TOKEN=$(curl -fsS -m 2 -X PUT "$AWS_EC2_METADATA_SERVICE_ENDPOINT/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60') && curl -fsS -m 2 -H "X-aws-ec2-metadata-token: $TOKEN" "$AWS_EC2_METADATA_SERVICE_ENDPOINT/latest/meta-data/instance-id")" || SPOTCTL_INSTANCE_ID=""
"$PYTHON" -m trainer run --job "$JOB_URL" --job-id "$SPOTCTL_JOB_ID"
CODE=$?
echo "spotctl: trainer exited with $CODE at $(date -u +%FT%TZ)"
case "$CODE" in
  0|3|75) ;;  # succeeded, stopped, interrupted: the trainer said so itself
  137|143) ;;  # killed by SIGKILL/SIGTERM: the machine is going down (spot reclaim, a stop); EC2's reason tells
  *) report_failure "the trainer exited with code $CODE (see {trainer_log})" ;;
esac
finish "$CODE"
"""


@dataclass(frozen=True)
class Bootstrap:
    job_id: str
    attempt: int
    region: str
    job_url: str  # s3://.../jobs/<id>/job.yaml
    job_prefix: str  # s3://.../jobs/<id>
    wheel_url: str
    version: str


def render(boot: Bootstrap) -> str:
    if not JOB_ID.fullmatch(boot.job_id):
        raise UserError(f"job id '{boot.job_id}' may hold only letters, digits, '.', '_' and '-'")
    if not REGION.fullmatch(boot.region):
        raise UserError(f"'{boot.region}' is not an AWS region")
    if not isinstance(boot.attempt, int) or boot.attempt < 1:
        raise UserError(f"attempt must be a positive number, got {boot.attempt!r}")
    for name in ("job_url", "job_prefix", "wheel_url"):
        value = getattr(boot, name)
        if not value.startswith("s3://") or any(c in value for c in "\n\r\0"):
            raise UserError(f"{name} must be an s3:// URL on one line, got {value!r}")
    script = TEMPLATE.format(
        job_id=boot.job_id,
        attempt=boot.attempt,
        region=boot.region,
        version=re.sub(r"[^A-Za-z0-9.+-]", "", boot.version),
        job_url=shlex.quote(boot.job_url),
        job_prefix=shlex.quote(boot.job_prefix),
        wheel_url=shlex.quote(boot.wheel_url),
        bootstrap_log_url=shlex.quote(f"{boot.job_prefix}/{layout.bootstrap_log(boot.attempt)}"),
        final_url=shlex.quote(f"{boot.job_prefix}/{layout.FINAL}"),
        bootstrap_log=layout.bootstrap_log(boot.attempt),
        trainer_log=layout.trainer_log(boot.attempt),
        failure=shlex.quote(
            Final.of(
                outcome=Outcome.FAILED, attempt=boot.attempt, error=ERROR_MARK, traceback=[], finished_at=TIME_MARK
            ).model_dump_json(exclude_unset=True)
        ),
        error_mark=ERROR_MARK,
        time_mark=TIME_MARK,
        python_candidates=" ".join(PYTHON_CANDIDATES),
    )
    size = len(script.encode())
    if size > USER_DATA_LIMIT:
        raise UserError(f"the bootstrap script is {size} bytes, above EC2's 16 KB user-data limit")
    return script
