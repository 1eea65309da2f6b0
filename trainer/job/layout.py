"""Where everything of a job lives: the one place an object path is spelled.

    <storage>/jobs/<job id>/                the job's prefix (job_prefix)
        job.yaml                            the spec as launched
        record.json                         the orchestrator's record: attempts, stop, outcome
        status/heartbeat.json               the trainer's heartbeat
        status/final.json                   the trainer's final word (succeeded, failed, stopped)
        status/final-attempt-<k>.json       attempt k's final word, set aside when the job resumed
        status/crash-attempt-<k>.json       attempt k's crash report: how its trainer died without a final word
        control/stop                        a stop request
        metrics/a<kkk>-<nnnnnn>.jsonl       metric records, in parts
        tensorboard/events.out.tfevents.a<kkk>-<nnnnnn>  TensorBoard event files, closed segments
        logs/attempt-<k>.log                the trainer's log
        logs/attempt-<k>.bootstrap.log      the instance's bootstrap log
        checkpoints/step-<N>/               committed checkpoints (trainer.checkpoint)
        best/step-<N>/                      the best model so far
        artifacts/manifest.json             the exported models, described (written last)
        artifacts/<export id>/<file>        the exported models
        batch/chosen.json                   batch_size: auto's global batch, fixed by the first attempt
        batch/probe-<key>.json              its probe's figure per (model, image size, GPU type, AMP, ranks)
        care/watch.json                     a running `spotctl watch`'s lease on the job (jobs.caretaker)
        care/controller.json                what the controller remembers of the job between steps
        rendezvous/attempt-<k>/plan.json    compute.nodes > 1: which instance is which node rank in attempt k
        rendezvous/attempt-<k>/node-<r>.json  node r's address, registered create-only (trainer.job.rendezvous)
    <storage>/sweeps/<sweep id>/            a sweep's prefix (sweep_prefix; orchestrator.sweeps)
        sweep.yaml                          the sweep as launched, its base job resolved
        study/<nnnnnnnn>.json               the Optuna study's journal: one create-only segment per append
        driver.json                         the lease of the one driver advancing the sweep
        stop                                a stop request (`spotctl sweep stop`)
                                            trial k is the job <sweep id>-t<k> (trial_job)
    <storage>/wheels/<sha256>/<file>.whl    the spotctl wheel instances install
    <storage>/lambda/<sha256>/<file>.zip    the controller's code (the wheel without torch, and its dependencies)
    <storage>/controller/tick.json          the controller's last tick
    <storage>/secrets/<job id>/notify.json  the job's notify targets (webhook URLs): the operator and the
                                            controller read it, the trainer role is denied it

Paths of a job's objects are relative to its prefix (the trainer's storage root); `in_job` gives the
same path relative to the storage root (the orchestrator's).
"""

from __future__ import annotations

import re

JOBS = "jobs"
JOB_FILE = "job.yaml"
RECORD = "record.json"
HEARTBEAT = "status/heartbeat.json"
FINAL = "status/final.json"
CONTROL_STOP = "control/stop"
METRICS = "metrics"
TENSORBOARD = "tensorboard"
LOGS = "logs"
CHECKPOINTS = "checkpoints"
BEST = "best"
POINTER = "LATEST.json"  # under checkpoints/ and best/: the newest committed step (trainer.checkpoint)
BEST_POINTER = f"{BEST}/{POINTER}"
ARTIFACTS = "artifacts"
MANIFEST = f"{ARTIFACTS}/manifest.json"
WHEELS = "wheels"
LAMBDA_CODE = "lambda"
CONTROLLER = "controller"
CONTROLLER_TICK = f"{CONTROLLER}/tick.json"
SECRETS = "secrets"  # outside every job's prefix; infra/spotctl.yaml denies the trainer role all of it
BATCH_CHOSEN = "batch/chosen.json"  # batch_size: auto's global batch, fixed by the first attempt
WATCH_LEASE = "care/watch.json"
CONTROLLER_MEMORY = "care/controller.json"

SWEEPS = "sweeps"
SWEEP_FILE = "sweep.yaml"
SWEEP_STUDY = "study"
SWEEP_DRIVER = "driver.json"
SWEEP_STOP = "stop"

_TRAINER_LOG = re.compile(r"attempt-(\d+)(\.bootstrap)?\.log")
_METRICS_PART = re.compile(r"a(\d+)-\d+\.jsonl")
_TENSORBOARD_SEGMENT = re.compile(r"events\.out\.tfevents\.a\d+-\d+")
_WHEEL = re.compile(rf"(?:^|/){WHEELS}/([0-9a-f]{{64}})/[^/]+\.whl\Z")


def job_prefix(storage: str, job_id: str) -> str:
    """The URL of a job's prefix under a storage root."""
    return f"{storage.rstrip('/')}/{JOBS}/{job_id}"


def job_url(storage: str, job_id: str) -> str:
    """The URL of the job file `spotctl launch` writes."""
    return f"{job_prefix(storage, job_id)}/{JOB_FILE}"


def job_id_in(url: str) -> str | None:
    """The job id of a job file at `job_url(storage, id)`, for a person who names only that URL
    (`python -m trainer export --job URL`); spotctl itself always passes the id."""
    match = re.search(rf"/{JOBS}/([^/]+)/job\.ya?ml$", url)  # JOB_FILE, or a job.yml put there by hand
    return match.group(1) if match else None


def in_job(job_id: str, relative: str = "") -> str:
    """A job object's path relative to the storage root."""
    return f"{JOBS}/{job_id}/{relative}".rstrip("/")


def final_of(attempt: int) -> str:
    """Where attempt k's final word is kept once the job resumed."""
    return f"status/final-attempt-{attempt}.json"


def crash_of(attempt: int) -> str:
    """Attempt k's crash report (the bootstrap's, trainer.job.documents.Crash): one per attempt, never
    set aside or overwritten, so the next attempt cannot be mistaken for the one that crashed."""
    return f"status/crash-attempt-{attempt}.json"


RENDEZVOUS = "rendezvous"


def rendezvous_of(attempt: int) -> str:
    """The folder of attempt k's rendezvous (compute.nodes > 1)."""
    return f"{RENDEZVOUS}/attempt-{attempt}"


def node_join(attempt: int, rank: int) -> str:
    return f"{rendezvous_of(attempt)}/node-{rank}.json"


def node_plan(attempt: int) -> str:
    return f"{rendezvous_of(attempt)}/plan.json"


def trainer_log(attempt: int) -> str:
    return f"{LOGS}/attempt-{attempt}.log"


def bootstrap_log(attempt: int, node: int = 0) -> str:
    """The instance's bootstrap log; each further node of a multi-node attempt has its own (node 0's
    keeps the one-instance name, which `spotctl logs` shows)."""
    if node:
        return f"{LOGS}/attempt-{attempt}.node-{node}.bootstrap.log"
    return f"{LOGS}/attempt-{attempt}.bootstrap.log"


def metrics_part(attempt: int, part: int) -> str:
    return f"{METRICS}/a{attempt:03d}-{part:06d}.jsonl"


def tensorboard_segment(attempt: int, segment: int) -> str:
    """An event file the trainer closed and uploaded. "tfevents" in the name is what TensorBoard
    looks for; the names sort by attempt, then segment, the order TensorBoard reads a folder in."""
    return f"{TENSORBOARD}/events.out.tfevents.a{attempt:03d}-{segment:06d}"


def is_tensorboard_segment(name: str) -> bool:
    """Whether `name` (a name under tensorboard/) is one of tensorboard_segment's."""
    return _TENSORBOARD_SEGMENT.fullmatch(name) is not None


def attempt_of_log(name: str) -> int | None:
    """The attempt whose log (the trainer's or the bootstrap's) is named `name` (a name under logs/)."""
    match = _TRAINER_LOG.fullmatch(name)
    return int(match.group(1)) if match else None


def attempt_of_metrics(name: str) -> int | None:
    """The attempt whose metrics part is named `name` (a name under metrics/)."""
    match = _METRICS_PART.fullmatch(name)
    return int(match.group(1)) if match else None


def artifact(export_id: str, name: str) -> str:
    """An exported file; the manifest names it by `export_id/name`, relative to artifacts/."""
    return f"{ARTIFACTS}/{export_id}/{name}"


def batch_probe(key: str) -> str:
    """batch_size: auto's probe of one (model, image size, GPU type, AMP, world size), `key` naming it."""
    return f"batch/probe-{key}.json"


def notify_targets(job_id: str) -> str:
    """The job's notify targets, relative to the storage root (never under the job's own prefix)."""
    return f"{SECRETS}/{job_id}/notify.json"


def wheel_key(sha256: str, name: str) -> str:
    """A wheel's path relative to the storage root: content-addressed, uploaded once."""
    return f"{WHEELS}/{sha256}/{name}"


def wheel_sha256(url: str) -> str | None:
    """The sha256 a wheel's key or URL names (wheel_key's), None if it names none."""
    match = _WHEEL.search(url)
    return match.group(1) if match else None


def lambda_code(sha256: str, name: str) -> str:
    """Where the controller's code is kept, relative to the storage root: content-addressed, so a
    deploy of unchanged code uploads nothing and CloudFormation sees a new key for new code."""
    return f"{LAMBDA_CODE}/{sha256}/{name}"


def in_sweep(sweep_id: str, relative: str = "") -> str:
    """A sweep object's path relative to the storage root."""
    return f"{SWEEPS}/{sweep_id}/{relative}".rstrip("/")


def study_segment(number: int) -> str:
    """The journal's segment `number` (0, 1, ...), relative to the sweep's prefix."""
    return f"{SWEEP_STUDY}/{number:08d}.json"


def trial_job(sweep_id: str, trial: int) -> str:
    """The job id of the sweep's trial `trial` (Optuna's trial number): one job per trial, ever."""
    return f"{sweep_id}-t{trial}"


def trial_of(sweep_id: str, job_id: str) -> int | None:
    """The trial number a job id has in the sweep (trial_job's inverse); None: not one of its trials."""
    match = re.fullmatch(rf"{re.escape(sweep_id)}-t(\d+)", job_id)
    return int(match.group(1)) if match else None
