"""The instance's bootstrap script (EC2 user-data), rendered from the job.

It logs everything to a file shipped to the attempt's bootstrap log (trainer.job.layout) every
minute and at exit, installs the spotctl wheel, runs `python -m trainer run` with the job's id (under
`torchrun --nproc-per-node=<GPUs>` on a machine with several GPUs: one DDP rank per GPU), and
shuts the instance down when the trainer is done. Not at once when it was interrupted (exit 75, or
killed after a spot notice): EC2 is taking the instance, and the next attempt resumes from the
checkpoint. A node of a multi-node job whose trainer exited 75 with no notice of its own (another node
was lost) waits instead for the next attempt's plan naming its instance and, if one comes in time,
trains on as that attempt's node (trainer.job.rendezvous). What the script reports itself, before the machine shuts down, so that the orchestrator
tells each end from the others:

- a failure before the trainer ran (no python, download, sha256, install, unusable GPUs), and a
  trainer that exited 1 or 2 (its own verdict: failed, an invalid job file) without writing its
  `final.json`: a `final.json` "failed" (create-only: the trainer's own word stands);
- a trainer that died without a final word: killed by a signal with no spot notice (the OOM killer's
  SIGKILL, a SIGSEGV or SIGABRT in a native library, a SIGTERM before it could checkpoint) or an exit
  code the trainer never gives (EXIT_CRASHED: it wrote the report itself, a data worker was killed): the crash report `status/crash-attempt-<k>.json` (documents.Crash:
  exit code, signal, and the kernel log's lines about the trainer's pid, which say whether the OOM
  killer took it). No final.json: the orchestrator recovers it from the last checkpoint like an
  interruption without notice, up to recovery.max_crashes.

The install: into the Deep Learning AMI's PyTorch environment, else into a venv of the image's
python3 that sees its packages (a system python may be externally managed, PEP 668). The download
and pip are retried (RETRY_*); the wheel must have the sha256 the launcher named, and pip installs
it with the tested set the wheel carries as constraints (orchestrator.jobs.wheel), keeping what the
image brings, torch above all. The data cache goes on the instance's NVMe when it has one.

Safety: every value is validated (ids, region, attempt) or passed through `shlex.quote` (URLs), so no
job name or path can inject shell; nothing secret is in it (the instance profile gives access to S3).
EC2 refuses user-data above 16 KB: `render` checks the size.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from orchestrator.errors import UserError
from orchestrator.jobs.wheel import CONSTRAINTS_MEMBER, IMAGE_STACK
from trainer.job import layout
from trainer.job.documents import Final, Outcome, now_iso
from trainer.job.rendezvous import DEFAULT_PORT

# Filled in by the script when it reports a failure (they stand for values only it knows).
ERROR_MARK, TIME_MARK = "@error@", "@now@"

USER_DATA_LIMIT = 16 * 1024
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
SHA256 = re.compile(r"[0-9a-f]{64}")
# The instance store, where the Deep Learning AMI mounts it (G4dn, G5, G6, P4, P5): the data cache.
NVME = "/opt/dlami/nvme"
# Downloads and installs: a few tries with backoff, so a blip of S3, PyPI or DNS fails no job
# (2, 4, 8, 16 s between the 5 tries: about 30 s in all before the failure is reported).
RETRY_TRIES, RETRY_FIRST_S, RETRY_MOST_S = 5, 2, 30
# The Deep Learning AMI's PyTorch environment (older ones: conda's); elsewhere a venv of python3's.
PYTHON_CANDIDATES = ("/opt/pytorch/bin/python", "/opt/conda/bin/python")

TEMPLATE = r"""#!/bin/bash
# spotctl bootstrap: job {job_id}, attempt {attempt} (rendered by spotctl {version}).
set -uo pipefail
JOB_URL={job_url}
JOB_PREFIX={job_prefix}
WHEEL_URL={wheel_url}
WHEEL_SHA256={wheel_sha256}
export SPOTCTL_JOB_URL="$JOB_URL" SPOTCTL_JOB_ID={job_id} SPOTCTL_ATTEMPT={attempt} AWS_DEFAULT_REGION={region} AWS_REGION={region}
export SPOTCTL_NODES={nodes} SPOTCTL_NODE_RANK={node_rank}
BOOTSTRAP_LOG_URL={bootstrap_log_url}
FINAL_URL={final_url}
CRASH_URL={crash_url}
export AWS_EC2_METADATA_SERVICE_ENDPOINT="${{AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}}"
LOG_DIR="${{SPOTCTL_LOG_DIR:-/var/log/spotctl}}"
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/attempt-$SPOTCTL_ATTEMPT.log"
exec >>"$LOG" 2>&1
echo "spotctl: bootstrap of $SPOTCTL_JOB_ID attempt $SPOTCTL_ATTEMPT starting at $(date -u +%FT%TZ)"
WORK="$(mktemp -d)"
# The data cache on the instance store where the DLAMI mounts one: far faster than the gp3 root volume,
# and lost with the machine just the same (every attempt is a new machine).
if [ -z "${{SPOTCTL_CACHE_DIR:-}}" ] && [ -d {nvme} ] && [ -w {nvme} ]; then export SPOTCTL_CACHE_DIR={nvme}/spotctl; fi

retry() {{  # COMMAND...: {tries} tries at most, {first_s}s between the first two, doubling to {most_s}s
  local try=1 delay={first_s}
  until "$@"; do
    if [ "$try" -ge {tries} ]; then echo "spotctl: giving up after {tries} tries: $*"; return 1; fi
    echo "spotctl: try $try of {tries} failed: $*; again in ${{delay}}s"
    sleep "$delay"
    try=$((try + 1)); delay=$((delay * 2 > {most_s} ? {most_s} : delay * 2))
  done
}}
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
ship_log() {{  # the log of the attempt this machine serves now ($WORK/shipping: a kept node's next one)
  local file="$LOG" url="$BOOTSTRAP_LOG_URL"
  if [ -s "$WORK/shipping" ]; then read -r file url <"$WORK/shipping"; fi
  s3_copy "$file" "$url" >/dev/null 2>&1 || true
}}
SHIPPER=""
INTERRUPTED=""
finish() {{  # CODE: ship the log last (no older copy can land after it), then leave
  if [ -n "$SHIPPER" ]; then kill "$SHIPPER" 2>/dev/null; wait "$SHIPPER" 2>/dev/null; fi
  ship_log
  if [ -z "${{SPOTCTL_NO_SHUTDOWN:-}}" ]; then
    # Interrupted: EC2 is taking the instance (its reason must be EC2's). Should it not within 5 minutes, go anyway.
    if [ "$1" -eq 75 ] || [ -n "$INTERRUPTED" ]; then (sleep 300; shutdown -h now) & else shutdown -h now; fi
  fi
  exit "$1"
}}
put_once() {{  # FILE URL: a create-only upload (If-None-Match: *): what is there already stands
  "${{PYTHON:-python3}}" - "$1" "$2" <<'PY' && return
import sys, boto3
body, url = open(sys.argv[1], "rb").read(), sys.argv[2]
bucket, _, key = url[5:].partition("/")
try:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
except Exception as exc:
    if "PreconditionFailed" not in str(exc):
        raise
PY
  local where="${{2#s3://}}"  # no boto3 (a bare image): the AWS CLI, if any
  command -v aws >/dev/null 2>&1 && aws s3api put-object --bucket "${{where%%/*}}" --key "${{where#*/}}" --body "$1" --if-none-match '*' >/dev/null
}}
report_failure() {{  # MESSAGE: a final.json, unless the trainer wrote one, so nobody mistakes this for an interruption
  echo "spotctl: $1"
  "${{PYTHON:-python3}}" - "$1" {failure} "$WORK/final.json" <<'PY' || {{ echo "spotctl: could not write final.json"; return; }}
import json, sys, datetime
message, failure, out = sys.argv[1:4]
now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
with open(out, "w") as f:  # a Final document (trainer.job.documents)
    f.write(failure.replace('"{error_mark}"', json.dumps(message)).replace('"{time_mark}"', json.dumps(now)))
PY
  put_once "$WORK/final.json" "$FINAL_URL" || echo "spotctl: could not write final.json"
}}
report_crash() {{  # CODE: the trainer died without a final word; the crash report (a Crash document) says how
  local pid dmesg_ok=""
  pid="$(cat "$WORK/trainer.pid" 2>/dev/null)"
  # The kernel's lines about the trainer's own pid only: on a shared host (the local cloud) others' OOM kills are not ours.
  if [ -n "$pid" ] && dmesg >"$WORK/dmesg" 2>/dev/null; then
    dmesg_ok=1; grep -E "(Killed process |pid=)$pid[^0-9]" "$WORK/dmesg" | tail -n 5 >"$WORK/kernel.log"
  fi
  "${{PYTHON:-python3}}" - "$1" "$SPOTCTL_ATTEMPT" "$dmesg_ok" "$WORK/kernel.log" "$WORK/crash.json" <<'PY' || {{ echo "spotctl: could not write the crash report"; return; }}
import datetime, json, signal, sys
code, attempt, readable, kernel, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
try:
    name = signal.Signals(code - 128).name if code > 128 else None
except ValueError:
    name = f"signal {{code - 128}}"
lines = open(kernel, errors="replace").read().splitlines() if readable else None
report = {{  # a Crash document (trainer.job.documents)
    "attempt": attempt, "process": "trainer", "exit_code": code, "signal": name,
    "oom_killed": None if lines is None else any("out of memory" in line.lower() or "oom-kill" in line for line in lines),
    "kernel_log": lines or [],
    "reported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}}
json.dump(report, open(out, "w"))
how = f"killed by {{name}}" if name else f"exited with code {{code}}"
print(f"spotctl: the trainer {{how}} with no spot notice and no final word: a crash; the orchestrator resumes it from the last checkpoint")
PY
  put_once "$WORK/crash.json" "$CRASH_URL" || echo "spotctl: could not write the crash report"
}}
imds() {{  # PATH: one instance-metadata value (IMDSv2); fails when there is none
  local token
  token="$(curl -fsS -m 2 -X PUT "$AWS_EC2_METADATA_SERVICE_ENDPOINT/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')" &&
    curl -fsS -m 2 -H "X-aws-ec2-metadata-token: $token" "$AWS_EC2_METADATA_SERVICE_ENDPOINT/latest/meta-data/$1"
}}

tested_set() {{  # OUT: the tested set, from the verified wheel, less what the image brings (orchestrator.jobs.wheel)
  "$PYTHON" - "$WHEEL" {constraints_member} {image_stack} "$1" <<'PY'
import re, sys, zipfile
wheel, member, image, out = sys.argv[1:5]
lines = zipfile.ZipFile(wheel).read(member).decode().splitlines()
def name(line): return re.sub(r"[-_.]+", "-", re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0]).lower()
kept = [line for line in lines if line.strip() and not line.startswith("#") and not re.fullmatch(image, name(line))]
open(out, "w").write("".join(line + "\n" for line in kept))
print(f"spotctl: installing with {{len(kept)}} constraints from the wheel")
PY
}}

PYTHON=""
if [ -n "${{SPOTCTL_SKIP_INSTALL:-}}" ]; then
  PYTHON="$(command -v python3)"  # this environment already is spotctl's
else
  for candidate in {python_candidates}; do  # the Deep Learning AMI's PyTorch environment
    if [ -x "$candidate" ]; then PYTHON="$candidate"; break; fi
  done
fi
if [ -z "$PYTHON" ] && command -v python3 >/dev/null 2>&1; then
  # Another image: its python3 may be externally managed (PEP 668: Ubuntu 24.04 refuses pip outside a
  # venv), so a venv of our own that still sees the image's packages (a torch, if it has one).
  VENV="${{SPOTCTL_CACHE_DIR:-/opt/spotctl}}/venv"
  echo "spotctl: no Deep Learning AMI python; creating the venv $VENV"
  if ! python3 -m venv --clear --system-site-packages "$VENV" && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive  # Debian and Ubuntu ship venv's pip separately
    retry apt-get update -q && retry apt-get install -y -q python3-venv && python3 -m venv --clear --system-site-packages "$VENV"
  fi
  if [ -x "$VENV/bin/python" ]; then PYTHON="$VENV/bin/python"; fi
fi
if [ -z "$PYTHON" ]; then
  report_failure "the instance has no python to install spotctl into (see {bootstrap_log})"
  finish 1
fi
( trap 'exit 0' TERM; while :; do sleep 60 & wait $!; ship_log; done ) &
SHIPPER=$!

if [ -z "${{SPOTCTL_SKIP_INSTALL:-}}" ]; then
  if ! command -v aws >/dev/null 2>&1 && ! "$PYTHON" -c 'import boto3' 2>/dev/null; then
    retry "$PYTHON" -m pip install --quiet boto3  # to reach S3 at all; the install below pins it
  fi
  WHEEL="$WORK/$(basename "$WHEEL_URL")"
  if ! retry s3_copy "$WHEEL_URL" "$WHEEL"; then
    report_failure "the instance could not download spotctl from $WHEEL_URL (see {bootstrap_log})"
    finish 1
  fi
  GOT="$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$WHEEL")"
  if [ "$GOT" != "$WHEEL_SHA256" ]; then
    report_failure "refused to install $WHEEL_URL: its sha256 is $GOT, not $WHEEL_SHA256 (the object changed after launch uploaded it; a new launch uploads it again)"
    finish 1
  fi
  if ! tested_set "$WORK/constraints.txt"; then
    report_failure "the wheel at $WHEEL_URL holds no readable {constraints_member} (see {bootstrap_log})"
    finish 1
  fi
  INSTALL=("$PYTHON" -m pip install --quiet --upgrade-strategy only-if-needed)
  if ! retry "${{INSTALL[@]}}" -c "$WORK/constraints.txt" "$WHEEL[trainer]"; then
    # The tested set may not exist for this image's python (pins resolved on another version).
    echo "spotctl: the tested set did not install; trying once without it (versions then are not the tested ones)"
    if ! "${{INSTALL[@]}}" "$WHEEL[trainer]"; then
      report_failure "the instance could not install spotctl from $WHEEL_URL (see {bootstrap_log})"
      finish 1
    fi
  fi
fi

# GPUs the image's driver cannot drive (a family the AMI does not support) still boot: torch would then
# train on the CPU, slowly and at GPU prices. Where the image has nvidia-smi, it must see them.
if command -v nvidia-smi >/dev/null 2>&1 && ! nvidia-smi -L >"$WORK/gpus" 2>&1; then
  report_failure "this $(imds instance-type || echo instance)'s GPUs are not usable with the AMI's driver: $(head -c 300 "$WORK/gpus" | tr '\n' ' ')(choose instance types the AMI supports: \`spotctl offers\` lists them)"
  finish 1
fi
export SPOTCTL_INSTANCE_ID
SPOTCTL_INSTANCE_ID="$(imds instance-id)" || SPOTCTL_INSTANCE_ID=""
# One training process per GPU: torchrun, when the machine has more than one (nvidia-smi's listing).
GPUS="$(grep -c '^GPU ' "$WORK/gpus" 2>/dev/null)" || GPUS=0
TRAINER=("$PYTHON" -m trainer run --job "$JOB_URL" --job-id "$SPOTCTL_JOB_ID")
NPROC=$(( GPUS > 1 ? GPUS : 1 ))
DISTRIBUTED=$(( GPUS > 1 || SPOTCTL_NODES > 1 ))
while :; do  # once, or again for each next attempt that keeps this node (compute.nodes > 1)
  if [ "$SPOTCTL_NODES" -gt 1 ]; then
    # compute.nodes: meet the other nodes in storage (trainer.job.rendezvous); node 0's address is the master.
    ADDRESS="${{SPOTCTL_NODE_ADDRESS:-$(imds local-ipv4):{master_port}}}"
    export SPOTCTL_EXIT_FILE="$WORK/trainer.exit"
    rm -f "$SPOTCTL_EXIT_FILE".*
    if RDZV="$("$PYTHON" -m trainer.job.rendezvous join --storage "$JOB_PREFIX" --attempt "$SPOTCTL_ATTEMPT" \
        --rank "$SPOTCTL_NODE_RANK" --nodes "$SPOTCTL_NODES" --address "$ADDRESS" --instance-id "$SPOTCTL_INSTANCE_ID")"; then
      echo "spotctl: node $SPOTCTL_NODE_RANK of $SPOTCTL_NODES met the others: $RDZV"
      # shellcheck disable=SC2206  # the rendezvous prints four --name=value words
      TRAINER=("$PYTHON" -m torch.distributed.run $RDZV --nproc-per-node "$NPROC" --max-restarts 0 -m trainer run --job "$JOB_URL" --job-id "$SPOTCTL_JOB_ID")
    else
      # Not the job's fault (a node lost before it joined): a crash report, recovered up to recovery.max_crashes.
      echo "spotctl: node $SPOTCTL_NODE_RANK could not meet the other nodes; this attempt cannot train"
      TRAINER=(bash -c 'exit 70')
    fi
  elif [ "$GPUS" -gt 1 ]; then
    # No restarts: a lost rank ends the attempt and the orchestrator resumes it from the checkpoint.
    export SPOTCTL_EXIT_FILE="$WORK/trainer.exit"
    rm -f "$SPOTCTL_EXIT_FILE".*
    TRAINER=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" --max-restarts 0 -m trainer run --job "$JOB_URL" --job-id "$SPOTCTL_JOB_ID")
  fi
  # In a subshell that becomes the trainer (exec): its pid, which the kernel log names if it kills it.
  ( echo "$BASHPID" >"$WORK/trainer.pid"; exec "${{TRAINER[@]}}" )
  CODE=$?
  if [ "$DISTRIBUTED" -eq 1 ] && [ "$CODE" -ne 0 ]; then
    # torchrun exits 1 for any rank's end but 0: local rank 0's word is the trainer's (75, 3, 2...)
    # when every rank on this machine left one; a rank without one died without a word (a signal): a crash.
    for ((RANK_NO = 0; RANK_NO < NPROC; RANK_NO++)); do
      if [ ! -s "$SPOTCTL_EXIT_FILE.$RANK_NO" ]; then
        # torchrun's summary names the signal ("exitcode  : -9"); else a code the trainer never gives.
        SIG="$(grep -oE 'exitcode +: -[0-9]+' "$LOG" | tail -n 1 | grep -oE '[0-9]+$')"
        echo "spotctl: local rank $RANK_NO died without an exit code"; LOST_RANK=$((${{SIG:-0}} ? 128 + ${{SIG:-0}} : 70)); break
      fi
    done
    CODE="${{LOST_RANK:-$(cat "$SPOTCTL_EXIT_FILE.0")}}"
  fi
  # A survivor of another node's loss (exit 75, no notice of its own): the next attempt keeps this
  # machine if its plan names it (trainer.job.rendezvous wait_for_plan, SPOTCTL_RENDEZVOUS_TIMEOUT_S);
  # then it joins that attempt's rendezvous with its rank there. Else it shuts down as below.
  if [ "$SPOTCTL_NODES" -gt 1 ] && [ "$CODE" -eq 75 ] && [ -n "$SPOTCTL_INSTANCE_ID" ] && ! imds spot/instance-action >/dev/null 2>&1; then
    echo "spotctl: node $SPOTCTL_NODE_RANK exited 75 with no notice of its own: waiting for an attempt that keeps it"
    if NEXT="$("$PYTHON" -m trainer.job.rendezvous plan --storage "$JOB_PREFIX" --instance-id "$SPOTCTL_INSTANCE_ID" --after "$SPOTCTL_ATTEMPT")"; then
      read -r SPOTCTL_ATTEMPT SPOTCTL_NODE_RANK <<<"$NEXT"
      export SPOTCTL_ATTEMPT SPOTCTL_NODE_RANK
      ship_log  # the previous attempt's log, complete; then this attempt's own
      read -r CRASH_URL BOOTSTRAP_LOG_URL <<<"$("$PYTHON" -m trainer.job.rendezvous urls --storage "$JOB_PREFIX" --attempt "$SPOTCTL_ATTEMPT" --rank "$SPOTCTL_NODE_RANK")"
      LOG="$LOG_DIR/attempt-$SPOTCTL_ATTEMPT.log"
      echo "$LOG $BOOTSTRAP_LOG_URL" >"$WORK/shipping"
      exec >>"$LOG" 2>&1
      echo "spotctl: kept for attempt $SPOTCTL_ATTEMPT as node $SPOTCTL_NODE_RANK at $(date -u +%FT%TZ)"
      unset LOST_RANK
      continue
    fi
  fi
  break
done
echo "spotctl: trainer exited with $CODE at $(date -u +%FT%TZ)"
case "$CODE" in
  0|3|75) ;;  # succeeded, stopped, interrupted: the trainer said so itself
  1|2) report_failure "the trainer exited with code $CODE (see {trainer_log})" ;;  # its verdict; final.json has it unless it could not write one
  *)  # died without a final word: a signal (128+N) or a code the trainer never gives
    if [ "$CODE" -gt 128 ] && NOTICE="$(imds spot/instance-action)"; then
      echo "spotctl: killed after the spot notice $NOTICE: an interruption"; INTERRUPTED=1
    else
      dmesg 2>/dev/null | grep -iE 'out of memory|oom-kill|killed process' | tail -n 5  # into the bootstrap log, for a person
      report_crash "$CODE"
    fi ;;
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
    wheel_url: str  # s3://.../wheels/<sha256>/<file>.whl
    version: str
    wheel_sha256: str  # the wheel's digest: the script refuses a wheel with other bytes
    node_rank: int = 0  # compute.nodes > 1: this machine's node rank
    nodes: int = 1  # compute.nodes


def render(boot: Bootstrap) -> str:
    if not JOB_ID.fullmatch(boot.job_id):
        raise UserError(f"job id '{boot.job_id}' may hold only letters, digits, '.', '_' and '-'")
    if not REGION.fullmatch(boot.region):
        raise UserError(f"'{boot.region}' is not an AWS region")
    if not isinstance(boot.attempt, int) or boot.attempt < 1:
        raise UserError(f"attempt must be a positive number, got {boot.attempt!r}")
    if not (isinstance(boot.nodes, int) and isinstance(boot.node_rank, int) and 0 <= boot.node_rank < boot.nodes):
        raise UserError(f"node rank {boot.node_rank!r} is not one of {boot.nodes!r} nodes")
    if not SHA256.fullmatch(boot.wheel_sha256):
        raise UserError(
            f"wheel_sha256 must be 64 lower-case hex digits (the sha256 its URL {boot.wheel_url} names), got {boot.wheel_sha256!r}"
        )
    for name in ("job_url", "job_prefix", "wheel_url"):
        value = getattr(boot, name)
        if not value.startswith("s3://") or any(c in value for c in "\n\r\0"):
            raise UserError(f"{name} must be an s3:// URL on one line, got {value!r}")
    script = TEMPLATE.format(
        job_id=boot.job_id,
        attempt=boot.attempt,
        nodes=boot.nodes,
        node_rank=boot.node_rank,
        master_port=DEFAULT_PORT,
        region=boot.region,
        version=re.sub(r"[^A-Za-z0-9.+-]", "", boot.version),
        job_url=shlex.quote(boot.job_url),
        job_prefix=shlex.quote(boot.job_prefix),
        wheel_url=shlex.quote(boot.wheel_url),
        wheel_sha256=boot.wheel_sha256,
        nvme=shlex.quote(NVME),
        tries=RETRY_TRIES,
        first_s=RETRY_FIRST_S,
        most_s=RETRY_MOST_S,
        constraints_member=CONSTRAINTS_MEMBER,
        image_stack=shlex.quote(IMAGE_STACK),
        bootstrap_log_url=shlex.quote(f"{boot.job_prefix}/{layout.bootstrap_log(boot.attempt, boot.node_rank)}"),
        final_url=shlex.quote(f"{boot.job_prefix}/{layout.FINAL}"),
        crash_url=shlex.quote(f"{boot.job_prefix}/{layout.crash_of(boot.attempt)}"),
        bootstrap_log=layout.bootstrap_log(boot.attempt, boot.node_rank),
        trainer_log=layout.trainer_log(boot.attempt),
        failure=shlex.quote(
            # Checked with a real time (finished_at must be a date-time), then given the mark the instance replaces.
            Final.of(
                outcome=Outcome.FAILED, attempt=boot.attempt, error=ERROR_MARK, traceback=[], finished_at=now_iso()
            )
            .model_copy(update={"finished_at": TIME_MARK})
            .model_dump_json(exclude_unset=True)
        ),
        error_mark=ERROR_MARK,
        time_mark=TIME_MARK,
        python_candidates=" ".join(PYTHON_CANDIDATES),
    )
    size = len(script.encode())
    if size > USER_DATA_LIMIT:
        raise UserError(f"the bootstrap script is {size} bytes, above EC2's 16 KB user-data limit")
    return script
