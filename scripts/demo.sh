#!/usr/bin/env bash
# The quickstart on the local cloud (`make demo`): a spot GPU job launched with nothing of yours
# watching it, interrupted part-way, recovered by the controller on another pool from its checkpoint,
# finished; what it cost; what the controller did; the exported models. No AWS account needed.
# Its output also goes to $DEMO_TRANSCRIPT (default runs/demo.txt); `make readme-demo` copies its step 3
# into README.md's quickstart (scripts/update_readme_demo.py).
set -euo pipefail
SPOTCTL="${SPOTCTL:-.venv/bin/spotctl}"
PYTHON="${PYTHON:-.venv/bin/python}"
TRANSCRIPT="${DEMO_TRANSCRIPT:-runs/demo.txt}"
mkdir -p "$(dirname "$TRANSCRIPT")"
exec > >(tee "$TRANSCRIPT") 2>&1
STARTED=$SECONDS

HOME_DIR="${SPOTCTL_HOME:-$HOME/.spotctl}"
# Over: a terminal state (orchestrator.jobs.state: JobState.terminal), and every machine's end known (its cost final).
OVER='import json, sys; j = json.load(sys.stdin); sys.exit(j["state"] not in ("succeeded", "failed", "cancelled", "budget_exceeded", "no_capacity") or any(a["instance_id"] and not a["ended_at"] for a in j["attempts"]))'

echo "== 1. the local cloud: EC2, S3, a spot market and spotctl's controller on this machine (interrupting each job's first attempt at step 40)"
"$SPOTCTL" local up --seed 7 --interrupt-at-step 40

echo "== 2. a small real image dataset (coloured shapes, 5 classes), uploaded to the local S3"
"$SPOTCTL" local data shapes

echo "== 3. launch on the cheapest spot offer, no --watch: nothing of yours runs, the controller recovers the interruption on another pool"
"$SPOTCTL" launch examples/quickstart.yaml --local
JOB_ID="$("$SPOTCTL" status --local --json | "$PYTHON" -c 'import json, sys; print(max(json.load(sys.stdin)["jobs"], key=lambda j: j["created_at"])["job_id"])')"
# Nothing follows the job from here but the controller (`spotctl watch JOB` would follow it live): wait for its end.
until "$SPOTCTL" status "$JOB_ID" --local --json | "$PYTHON" -c "$OVER"; do sleep 3; done
"$SPOTCTL" status "$JOB_ID" --local

echo "== 4. what the controller did, from its log ($HOME_DIR/local/controller.log): EC2's events in, the next attempt out"
sed -n "s/^[0-9-]* \([0-9:]*\),[0-9]* [A-Z]* orchestrator\.controller\.handler \($JOB_ID: .*\)/\1 \2/p" "$HOME_DIR/local/controller.log"

echo "== 5. the exported models, each loaded back and checked on the instance; downloaded with every sha256 verified"
"$SPOTCTL" artifacts "$JOB_ID" --local
"$SPOTCTL" artifacts "$JOB_ID" --local --download "runs/$JOB_ID-model"

echo
echo "The local cloud is still up: try \`spotctl status --local\`, \`spotctl local status\`; \`spotctl local down\` stops it (\`--keep\` keeps its jobs and data)."
ELAPSED=$((SECONDS - STARTED))
echo "demo done in $((ELAPSED / 60))m $((ELAPSED % 60))s (transcript: $TRANSCRIPT)"
