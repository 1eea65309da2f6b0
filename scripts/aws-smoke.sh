#!/usr/bin/env bash
# A smoke test of spotctl in a real AWS account: the whole product once, against AWS itself.
#
#   scripts/aws-smoke.sh [--region REGION]   on AWS, with your credentials (AWS_PROFILE, `aws configure`, ...)
#   scripts/aws-smoke.sh --local             the same steps on the local cloud (no account, no cost)
#
# It deploys a stack of its own, checks the account with `spotctl doctor`, launches a tiny job (resnet18
# from scratch on 32-pixel shapes it draws and uploads) on the cheapest spot pool, serves a real spot
# interruption with AWS FIS once the job trains, lets `spotctl watch` resume it from its checkpoint on
# another pool, checks the cost report, and tears everything down, a failure included (trap). It prints
# one line per check, `ok` or `FAIL` with the reason, and exits 1 if any check failed. Never run in CI.
#
# Cost: about $0.30. FIS bills its action by the minute ($0.10 per action-minute; the two-minute notice
#   is $0.20); two short g4dn.xlarge spot attempts (the first free: AWS does not bill an instance it
#   interrupts in its first hour) and their volumes and IPv4 addresses come to a few cents; S3 and
#   CloudFormation to less than a cent.
# Time: about 20 minutes (the stack 2-3, each attempt's boot on the Deep Learning AMI 4-6, training 2-3,
#   the teardown 3). Under --local: 1-2 minutes.
# Permissions: an administrator's, or: CloudFormation and what the stack creates (S3 bucket, IAM role and
#   instance profile, EC2 security group), iam:CreateServiceLinkedRole for the Spot role, the operator
#   policy (`spotctl infra policy`), iam:CreateRole/PutRolePolicy/DeleteRolePolicy/DeleteRole/PassRole
#   for the FIS role it creates, fis:CreateExperimentTemplate/StartExperiment/GetExperiment/
#   DeleteExperimentTemplate, and ec2:TerminateInstances. Tools: the AWS CLI, and the python of a
#   spotctl installed with its trainer extra (it draws the dataset).
# Left behind: EC2's Spot service-linked role, if `infra deploy` had to create it (account-wide, free,
#   and what every spot launch needs).
#
# Environment: SPOTCTL and PYTHON (the CLI and the python to use; default .venv/bin/ if present, else
# PATH), SMOKE_DIR (where it works and logs; default a new temporary folder, removed after a pass),
# SMOKE_POLL_S (seconds between polls on AWS; 15), SMOKE_EPOCHS, SMOKE_PER_CLASS and SMOKE_BATCH (the
# job's size: the first attempt must still be training when the notice comes).
set -Eeuo pipefail

MODE=aws
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
while (($#)); do
  case "$1" in
    --local) MODE=local ;;
    --region) REGION="${2:?--region needs a value}"; shift ;;
    -h | --help) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--local] [--region REGION]" >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
default_tool() { if [[ -x "$ROOT/.venv/bin/$1" ]]; then echo "$ROOT/.venv/bin/$1"; else echo "$2"; fi; }
SPOTCTL="${SPOTCTL:-$(default_tool spotctl spotctl)}"
PYTHON="${PYTHON:-$(default_tool python python3)}"
CHECKS="$ROOT/scripts/smoke_checks.py"
export AWS_PAGER="" # the AWS CLI's output goes to files and variables, never to less

if [[ -n "${SMOKE_DIR:-}" ]]; then
  WORK="$(mkdir -p "$SMOKE_DIR" && cd "$SMOKE_DIR" && pwd)" KEEP_WORK=1
else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/spotctl-smoke.XXXXXX")" KEEP_WORK=""
fi
LOG="$WORK/smoke.log"
export SPOTCTL_HOME="$WORK/home" # its own: the stack's profile (infra.json) or local cloud, never yours
RUN="$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"

if [[ "$MODE" == local ]]; then
  REGION=us-east-1 # the local cloud's
  POLL_S=1 BOOT_S=150 SETTLE_S=90 FINISH_S=240 NOTICE_S=10
  EPOCHS="${SMOKE_EPOCHS:-3}" PER_CLASS="${SMOKE_PER_CLASS:-16}" BATCH="${SMOKE_BATCH:-4}"
else
  POLL_S="${SMOKE_POLL_S:-15}" BOOT_S=1500 SETTLE_S=300 FINISH_S=2400
  EPOCHS="${SMOKE_EPOCHS:-100}" PER_CLASS="${SMOKE_PER_CLASS:-40}" BATCH="${SMOKE_BATCH:-16}"
  STACK="spotctl-smoke-$RUN" FIS_ROLE="spotctl-smoke-fis-$RUN"
fi

# ------------------------------------------------------------------------------------ reporting
CURRENT="0. prerequisites" # the step running now: a command failing in it is its FAIL
FAILED="" PASSED=0 SAID=""
exec 3>&1 # the check lines: stdout, whatever a function's own output is captured into
note() { printf '.. %s\n' "$*" >&2; }
ok() { printf 'ok   %s: %s\n' "$CURRENT" "$*" >&3; PASSED=$((PASSED + 1)); }
bad() { printf 'FAIL %s: %s\n' "$CURRENT" "$*" >&3; FAILED="${FAILED:-$CURRENT}"; }
fail() { bad "$@"; exit 1; }
step() { CURRENT="$1"; note "$1"; }
on_error() { # set -e is about to end the script: the command that failed is the current step's FAIL
  local status="$1" line="$2" command="$3"
  ((BASH_SUBSHELL == 0)) || exit "$status" # inside $(...): the command it feeds reports it
  fail "\`$command\` exited $status at line $line (its output is in $LOG)"
}
trap 'on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# spotctl itself; on the local cloud every command but `infra` and `local` gets --local. What it says on
# stderr goes to the log. `spot` makes a failure the current step's FAIL, with spotctl's own message;
# `spot_may_fail` leaves the failure to its caller.
spot_may_fail() {
  local status=0
  if [[ "$MODE" == local && "$1" != infra && "$1" != local ]]; then set -- "$@" --local; fi
  "$SPOTCTL" "$@" 2>"$WORK/stderr" || status=$?
  cat "$WORK/stderr" >>"$LOG"
  return "$status"
}
spot() { spot_may_fail "$@" || fail "\`spotctl $*\` exited $?: $(paste -sd ' ' "$WORK/stderr")"; }

# judge CHECK FILE: one of scripts/smoke_checks.py's checks on a JSON document; it prints the detail,
# or the reason with exit 1.
judge() { "$PYTHON" "$CHECKS" "$@"; }
value() { "$PYTHON" "$CHECKS" value "$@"; } # value FILE KEY...: those fields, one line
check() { # check CHECK FILE: the current step's ok line, or its FAIL
  local said
  if said="$(judge "$@")"; then ok "$said"; else fail "$said"; fi
}

# status_until CHECK SECONDS: poll `spotctl status JOB --json` into $WORK/status.json until CHECK passes;
# its detail is then in SAID. On timeout, or once the check says it never will pass: fail with its reason.
status_until() {
  local check="$1" deadline=$((SECONDS + $2)) said="" last="" verdict
  while :; do
    if spot_may_fail status "$JOB_ID" --json >"$WORK/status.json"; then
      if said="$(judge "$check" "$WORK/status.json")"; then verdict=0; else verdict=$?; fi
      ((verdict != 0)) || { SAID="$said" && return 0; }
      ((verdict != 2)) || fail "$said"
      [[ "$said" == "$last" ]] || note "   $said"
      last="$said"
    fi
    ((SECONDS < deadline)) || fail "not within $2 s: $said"
    sleep "$POLL_S"
  done
}

retry() { # retry TRIES DELAY COMMAND...: IAM is eventually consistent (a new role takes seconds to be usable)
  local tries="$1" delay="$2" n=1
  shift 2
  until "$@" 2>>"$LOG"; do
    ((n < tries)) || return 1
    n=$((n + 1))
    sleep "$delay"
  done
}

# ------------------------------------------------------------------------------------ the interruption
# The one step that differs: on AWS a real spot interruption, served by FIS (EC2's two-minute notice on
# the instance's metadata, then EC2 terminates it); on the local cloud, its own notice and termination.
# Each sets SAID to what it did.
interrupt_with_fis() {
  local instance="$1" experiment state
  "$PYTHON" "$CHECKS" fis-template "$WORK/fis-template.json" \
    "arn:$PARTITION:ec2:$REGION:$ACCOUNT:instance/$instance" "$FIS_ROLE_ARN" "$RUN"
  FIS_TEMPLATE="$(retry 12 5 aws fis create-experiment-template --region "$REGION" \
    --cli-input-json "file://$WORK/fis-template.json" --query experimentTemplate.id --output text)" ||
    fail "FIS refused the experiment template (aws fis create-experiment-template; see $LOG)"
  FIS_EXPERIMENT="$(retry 12 5 aws fis start-experiment --region "$REGION" --experiment-template-id "$FIS_TEMPLATE" \
    --query experiment.id --output text)" || fail "FIS did not start experiment $FIS_TEMPLATE (see $LOG)"
  experiment="$FIS_EXPERIMENT"
  for _ in $(seq 1 30); do
    state="$(aws fis get-experiment --region "$REGION" --id "$experiment" --query experiment.state.status --output text)"
    case "$state" in
      running | completed) SAID="FIS experiment $experiment $state: the spot notice is served to $instance"; return 0 ;;
      failed | stopped | cancelled)
        fail "FIS experiment $experiment $state: $(aws fis get-experiment --region "$REGION" --id "$experiment" \
          --query experiment.state.reason --output text 2>&1)" ;;
    esac
    sleep 2
  done
  fail "FIS experiment $experiment still $state after 60 s"
}

interrupt_locally() {
  spot local interrupt "$JOB_ID" --notice "$NOTICE_S" >"$WORK/interrupt.txt"
  SAID="$(cat "$WORK/interrupt.txt")"
}

# ------------------------------------------------------------------------------------ teardown
stop_watch() {
  if [[ -n "${WATCH_PID:-}" ]] && kill -0 "$WATCH_PID" 2>/dev/null; then
    kill "$WATCH_PID" 2>/dev/null || true # before anything is deleted: it would start the next attempt
    wait "$WATCH_PID" 2>/dev/null || true
  fi
}

teardown_aws() {
  local listed ids
  if [[ -n "${JOB_ID:-}" ]]; then
    if listed="$(aws ec2 describe-instances --region "$REGION" --output text \
      --query 'Reservations[].Instances[].InstanceId' --filters "Name=tag:spotctl:job,Values=$JOB_ID" \
      "Name=instance-state-name,Values=pending,running,stopping,stopped" 2>>"$LOG")"; then
      read -r -a ids <<<"$listed"
      if ((${#ids[@]} == 0)); then
        ok "no instance of $JOB_ID left running"
      elif aws ec2 terminate-instances --region "$REGION" --instance-ids "${ids[@]}" >>"$LOG" 2>&1 &&
        aws ec2 wait instance-terminated --region "$REGION" --instance-ids "${ids[@]}" 2>>"$LOG"; then
        ok "terminated what was left of $JOB_ID: ${ids[*]}"
      else
        bad "instances of $JOB_ID may still run (${ids[*]}): \`aws ec2 terminate-instances --instance-ids ${ids[*]}\`"
      fi
    else
      bad "could not list the instances of $JOB_ID (tag spotctl:job): check none is left running"
    fi
  fi
  if [[ -n "${STACK_STARTED:-}" ]]; then
    if ! spot_may_fail infra status --stack "$STACK" --region "$REGION" --json >>"$LOG"; then
      ok "no stack $STACK left" # --json: exit 1 only when there is none
    elif spot_may_fail infra delete --stack "$STACK" --region "$REGION" --force --terminate-instances >>"$LOG"; then
      ok "stack $STACK deleted"
    else
      bad "stack $STACK not deleted: \`spotctl infra delete --stack $STACK --region $REGION --force\` (see $LOG)"
    fi
    if ! aws s3api head-bucket --bucket "$BUCKET" >>"$LOG" 2>&1; then
      ok "bucket $BUCKET gone"
    elif aws s3 rb "s3://$BUCKET" --force >>"$LOG" 2>&1; then
      ok "bucket $BUCKET emptied and deleted"
    else
      bad "bucket $BUCKET not deleted: \`aws s3 rb s3://$BUCKET --force\`"
    fi
  fi
  if [[ -n "${FIS_TEMPLATE:-}" ]]; then
    if [[ -n "${FIS_EXPERIMENT:-}" ]]; then # still serving its notice if the script failed early; else a no-op
      aws fis stop-experiment --region "$REGION" --id "$FIS_EXPERIMENT" >>"$LOG" 2>&1 || true
    fi
    if aws fis delete-experiment-template --region "$REGION" --id "$FIS_TEMPLATE" >>"$LOG" 2>&1; then
      ok "FIS experiment template $FIS_TEMPLATE deleted"
    else
      bad "FIS experiment template $FIS_TEMPLATE not deleted: \`aws fis delete-experiment-template --id $FIS_TEMPLATE\`"
    fi
  fi
  if [[ -n "${FIS_ROLE_ARN:-}" ]]; then
    if aws iam delete-role-policy --role-name "$FIS_ROLE" --policy-name interrupt-spot >>"$LOG" 2>&1 &&
      aws iam delete-role --role-name "$FIS_ROLE" >>"$LOG" 2>&1; then
      ok "FIS role $FIS_ROLE deleted"
    else
      bad "FIS role $FIS_ROLE not deleted: \`aws iam delete-role-policy\`, then \`aws iam delete-role --role-name $FIS_ROLE\`"
    fi
  fi
}

teardown_local() {
  [[ -n "${CLOUD_STARTED:-}" ]] || return 0
  if spot_may_fail local down >>"$LOG" && ! spot_may_fail local status >>"$LOG"; then
    ok "local cloud stopped, with every machine it ran"
  else
    bad "the local cloud may still run: \`SPOTCTL_HOME=$SPOTCTL_HOME spotctl local down\`"
  fi
}

teardown() {
  local status="$?"
  trap - ERR INT TERM EXIT
  set +e
  exec 1>&3 # a failure inside a redirected command leaves stdout pointing at that command's file
  [[ "$status" == 0 || -n "$FAILED" ]] || bad "stopped (exit $status)"
  stop_watch
  if [[ -n "$FAILED" && -n "${JOB_ID:-}" ]]; then # what the instance said, for the diagnosis
    spot_may_fail logs "$JOB_ID" >"$WORK/trainer.log"
    spot_may_fail logs "$JOB_ID" --bootstrap >"$WORK/bootstrap.log"
  fi
  CURRENT="8. teardown"
  note "$CURRENT"
  if [[ "$MODE" == local ]]; then teardown_local; elif [[ -n "${ACCOUNT:-}" ]]; then teardown_aws; fi
  if [[ -n "$FAILED" ]]; then
    echo "smoke test FAILED at ${FAILED} ($PASSED checks passed); logs in $WORK" >&3
    exit 1
  fi
  echo "smoke test passed: $PASSED checks ($MODE)" >&3
  [[ -n "$KEEP_WORK" ]] || rm -rf "$WORK"
}
trap teardown EXIT

# ------------------------------------------------------------------------------------ the steps
step "0. prerequisites"
"$SPOTCTL" --version >>"$LOG" 2>&1 || fail "no spotctl at '$SPOTCTL' (set SPOTCTL)"
"$PYTHON" -c 'import trainer.sample_data' 2>>"$LOG" || fail "'$PYTHON' has no spotctl trainer (set PYTHON; pip install '.[trainer]')"
if [[ "$MODE" == aws ]]; then
  command -v aws >/dev/null || fail "no AWS CLI (aws) on PATH: FIS and the teardown use it"
  identity="$(aws sts get-caller-identity --output text --query '[Account, Arn]' 2>>"$LOG")" ||
    fail "no AWS credentials (AWS_PROFILE, \`aws configure\`, or the environment)"
  read -r ACCOUNT CALLER <<<"$identity"
  PARTITION="$(cut -d: -f2 <<<"$CALLER")"
  BUCKET="spotctl-smoke-$ACCOUNT-$RUN"
  ok "$CALLER in $REGION; run $RUN, working in $WORK"
else
  ok "the local cloud; run $RUN, working in $WORK"
fi

step "1. infrastructure"
if [[ "$MODE" == aws ]]; then
  STACK_STARTED=1 # from here on the teardown deletes it, even half-made
  spot infra deploy --stack "$STACK" --region "$REGION" --bucket "$BUCKET" --json >"$WORK/deploy.json"
  check deployed "$WORK/deploy.json"
  STORAGE="$(value "$WORK/deploy.json" storage)"
  # FIS's role, made now: IAM takes a while before a service may assume a new role.
  "$PYTHON" "$CHECKS" fis-documents "$WORK" "$ACCOUNT" "$PARTITION" "$REGION"
  FIS_ROLE_ARN="$(aws iam create-role --role-name "$FIS_ROLE" --assume-role-policy-document "file://$WORK/fis-trust.json" \
    --tags "Key=spotctl:smoke,Value=$RUN" --query Role.Arn --output text 2>>"$LOG")"
  aws iam put-role-policy --role-name "$FIS_ROLE" --policy-name interrupt-spot \
    --policy-document "file://$WORK/fis-policy.json" 2>>"$LOG"
  ok "FIS role $FIS_ROLE: may send spot interruptions to this account's instances in $REGION"
else
  CLOUD_STARTED=1
  spot local up --seed 7 --notice "$NOTICE_S" --json >"$WORK/local.json"
  check local-up "$WORK/local.json"
  spot local env >"$WORK/local.env"
  source "$WORK/local.env" # `export` lines: the upload below goes to the local S3
  STORAGE="$SPOTCTL_STORAGE"
fi
export SPOTCTL_STORAGE="$STORAGE" # where status and watch find the job

step "2. doctor"
DATA="$STORAGE/datasets/smoke-$RUN" # under the stack's prefix: the instance role may read it
"$PYTHON" -m trainer.sample_data "$DATA" --per-class "$PER_CLASS" --size 32 >>"$LOG" 2>&1
cat >"$WORK/job.yaml" <<YAML
# spotctl's smoke test (scripts/aws-smoke.sh). Storage, instance profile and security group come from
# the stack (or the local cloud).
name: smoke
region: $REGION
compute:
  instance_types: [g4dn.xlarge, g5.xlarge, g6.xlarge]   # the cheapest spot pool of these is taken
  public_ip: true            # a default VPC has no NAT gateway; nothing inbound is allowed
  max_price_per_hour: 0.60
recovery:
  max_interruptions: 2
budget:
  max_cost_usd: 2            # watch stops the job before it costs more
train:
  model: {name: resnet18, weights: null}
  data:
    train: $DATA/train
    val: $DATA/val
    image_size: 32
    workers: 2
  epochs: $EPOCHS
  batch_size: $BATCH
  checkpoint: {keep: 2}
  export: {formats: [state_dict]}
YAML
spot_may_fail doctor "$WORK/job.yaml" --json >"$WORK/doctor.json" || # exit 1 on a problem: the document says which
  [[ -s "$WORK/doctor.json" ]] || fail "\`spotctl doctor\` gave no verdict: $(paste -sd ' ' "$WORK/stderr")"
check doctor "$WORK/doctor.json"

step "3. launch"
spot launch "$WORK/job.yaml" --json >"$WORK/launch.json"
check launched "$WORK/launch.json"
read -r JOB_ID INSTANCE_ID <<<"$(value "$WORK/launch.json" job_id instance_id)"
# Followed from now on, as `launch --watch` would be: it recovers the interruption to come.
watch_args=(watch "$JOB_ID" --poll "$POLL_S")
if [[ "$MODE" == local ]]; then watch_args+=(--local); fi
"$SPOTCTL" "${watch_args[@]}" >"$WORK/watch.log" 2>&1 &
WATCH_PID=$!

step "4. running"
started=$SECONDS
status_until running "$BOOT_S"
ok "$SAID (after $((SECONDS - started)) s)"

step "5. spot interruption"
if [[ "$MODE" == aws ]]; then interrupt_with_fis "$INSTANCE_ID"; else interrupt_locally; fi
note "   $SAID"
served="$SAID"
status_until interrupted "$SETTLE_S"
ok "$served; $SAID"

step "6. recovery"
deadline=$((SECONDS + FINISH_S))
while kill -0 "$WATCH_PID" 2>/dev/null; do
  ((SECONDS < deadline)) || fail "the job had not ended after $FINISH_S s (see $WORK/watch.log)"
  sleep "$POLL_S"
done
if wait "$WATCH_PID"; then watched=0; else watched=$?; fi
WATCH_PID=""
((watched == 0)) || fail "spotctl watch exited $watched: $(tail -n 3 "$WORK/watch.log" | paste -sd ' ' -)"
grep -q "resuming from the latest checkpoint: attempt 2" "$WORK/watch.log" ||
  fail "spotctl watch never said it resumed attempt 2 (see $WORK/watch.log)"
spot status "$JOB_ID" --json >"$WORK/status.json"
check recovered "$WORK/status.json"

step "7. cost"
check cost "$WORK/status.json"
