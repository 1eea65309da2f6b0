#!/usr/bin/env bash
# The quickstart on the local cloud (`make demo`): a spot GPU job launched, interrupted part-way,
# recovered on another pool from its checkpoint, finished; what it cost; the exported models. No AWS account needed.
# Its output also goes to $DEMO_TRANSCRIPT (default runs/demo.txt); `make readme-demo` copies its step 3
# into README.md's quickstart (scripts/update_readme_demo.py).
set -euo pipefail
SPOTCTL="${SPOTCTL:-.venv/bin/spotctl}"
PYTHON="${PYTHON:-.venv/bin/python}"
TRANSCRIPT="${DEMO_TRANSCRIPT:-runs/demo.txt}"
mkdir -p "$(dirname "$TRANSCRIPT")"
exec > >(tee "$TRANSCRIPT") 2>&1
STARTED=$SECONDS

echo "== 1. the local cloud: EC2, S3 and a spot market on this machine (interrupting each job's first attempt at step 40)"
"$SPOTCTL" local up --seed 7 --interrupt-at-step 40

echo "== 2. a small real image dataset (coloured shapes, 5 classes), uploaded to the local S3"
"$SPOTCTL" local data shapes

echo "== 3. launch on the cheapest spot offer and watch: the interruption is recovered on another pool"
"$SPOTCTL" launch examples/quickstart.yaml --local --watch --poll 2

echo "== 4. the exported models, each loaded back and checked on the instance; downloaded with every sha256 verified"
JOB_ID="$("$SPOTCTL" status --local --json | "$PYTHON" -c 'import json, sys; print(max(json.load(sys.stdin)["jobs"], key=lambda j: j["created_at"])["job_id"])')"
"$SPOTCTL" artifacts "$JOB_ID" --local
"$SPOTCTL" artifacts "$JOB_ID" --local --download "runs/$JOB_ID-model"

echo
echo "The local cloud is still up: try \`spotctl status --local\`, \`spotctl local status\`; \`spotctl local down\` stops it (\`--keep\` keeps its jobs and data)."
ELAPSED=$((SECONDS - STARTED))
echo "demo done in $((ELAPSED / 60))m $((ELAPSED % 60))s (transcript: $TRANSCRIPT)"
