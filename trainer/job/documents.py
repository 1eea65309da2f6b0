"""The objects the two planes exchange through storage (trainer.job.layout says where each lives),
and the states a job and its attempts go through.

Every document ignores fields it does not know (`extra="ignore"`), so an older spotctl reads what a
newer one wrote and the other way round. The record and its attempts are pydantic dataclasses: the
orchestrator changes them in place inside conditional updates (jobs.record.JobStore.update_record).
The trainer's documents are pydantic models: the trainer writes them, the orchestrator only reads.

States (`JobState`), as `spotctl status` derives them (orchestrator.jobs.state):

    pending -> launching -> running -> (interrupted -> launching -> running)* -> exporting -> succeeded
    stopping: asked to stop (spotctl stop, the budget) while the machine still runs
    terminal: succeeded, failed, cancelled, budget_exceeded, no_capacity
    unreadable: record.json cannot be read (a view state: no record holds it)

The string enums compare and serialise as their values: every JSON document stays as it was.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import asdict, field
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from trainer.job import layout, problems

# Unknown fields are ignored (another version's); a number must be finite: JSON's `1e999` reads as
# infinity, which no cost, age or step count survives (and `json.dumps` would write as invalid JSON).
_LENIENT = ConfigDict(extra="ignore", allow_inf_nan=False)


def _timestamp(value: str) -> str:
    """An ISO 8601 time with its zone, as every reader computes ages and costs from them."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("timestamp", "is not a date-time") from None
    if parsed.tzinfo is None:
        raise PydanticCustomError("timestamp", "is a date-time without a time zone")
    return value


def _region(value: str) -> str:
    """A region as EC2 spells them: a record's chooses the endpoint every call of the job goes to."""
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", value):
        raise PydanticCustomError("region", "is not an AWS region")
    return value


Timestamp = Annotated[str, AfterValidator(_timestamp)]
"""A stored time: a string (as written) that is an ISO 8601 date-time with a zone."""
Count = Annotated[int, Field(ge=0)]
Price = Annotated[float, Field(ge=0)]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Values(str, enum.Enum):
    """A string enum that prints, formats and serialises as its value."""

    __str__ = str.__str__
    __format__ = str.__format__


# ------------------------------------------------------------------------------------------ states
class JobState(_Values):
    """What a job is doing (orchestrator.jobs.state.derive_state)."""

    UNKNOWN = "unknown"  # no record: not a spotctl job
    PENDING = "pending"  # recorded, no attempt yet
    LAUNCHING = "launching"  # an attempt is claimed or its instance is booting
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # the machine went (or is going) without the trainer's final word
    STOPPING = "stopping"  # a stop was asked for and the machine still runs
    EXPORTING = "exporting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped by spotctl stop
    BUDGET_EXCEEDED = "budget_exceeded"
    NO_CAPACITY = "no_capacity"
    # record.json is there and cannot be read (trainer.job.problems says why): nothing about the job can be
    # told or done until it is restored or the job removed. Not terminal: it may still run.
    UNREADABLE = "unreadable"

    @classmethod
    def of(cls, value: str) -> JobState:
        """The state a record names; one this version does not know (a newer spotctl's) is unknown, and
        so is `unreadable`, which only a view of the job can be, never a record's word."""
        try:
            state = cls(value)
        except ValueError:
            return cls.UNKNOWN
        return cls.UNKNOWN if state is cls.UNREADABLE else state

    @property
    def terminal(self) -> bool:
        """Nothing more will happen unless someone resumes it."""
        return self in _TERMINAL

    @property
    def idle(self) -> bool:
        """Unfinished, but nothing runs: following it means starting a machine."""
        return self in (JobState.INTERRUPTED, JobState.PENDING)

    @property
    def resume_refusal(self) -> str | None:
        """Why `spotctl resume` refuses a job in this state (None: it may resume)."""
        return _RESUME_REFUSALS.get(self)


_TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.BUDGET_EXCEEDED, JobState.NO_CAPACITY}
)
_RESUME_REFUSALS = {
    JobState.RUNNING: "it is running",
    JobState.LAUNCHING: "it is starting",
    JobState.EXPORTING: "it is exporting its artifacts",
    JobState.STOPPING: "it is stopping",
    JobState.SUCCEEDED: "it has already succeeded",
}


class EndReason(_Values):
    """Why an attempt ended (Attempt.end_reason)."""

    INTERRUPTED = "interrupted"  # spot interruption (EC2's notice or its termination)
    SUCCEEDED = "succeeded"  # the trainer finished the job
    FAILED = "failed"  # the trainer failed, or the instance shut itself down without a word
    STOPPED = "stopped"  # the trainer stopped on request (spotctl stop, the budget) after a final checkpoint
    TERMINATED = "terminated"  # the instance was terminated by a user or spotctl, not by the trainer
    LOST = "lost"  # the instance is gone and nothing says why
    NOT_STARTED = (
        "not_started"  # EC2 could not start it (pending -> terminated: Server.InsufficientInstanceCapacity...)
    )
    # The trainer died without a final word: killed by a signal (the OOM killer's SIGKILL, a native
    # SIGSEGV/SIGABRT), an exit code it never gives, or the instance shut itself down with no word at
    # all. Recovered like an interruption without notice, up to recovery.max_crashes (Crash says how).
    CRASHED = "crashed"

    @property
    def recoverable(self) -> bool:
        """Ended without the trainer's final word: the next attempt continues from the checkpoint."""
        return self in (
            EndReason.INTERRUPTED,
            EndReason.LOST,
            EndReason.TERMINATED,
            EndReason.NOT_STARTED,
            EndReason.CRASHED,
        )

    @property
    def counts_as_interruption(self) -> bool:
        """Counted against recovery.max_interruptions: a machine that never started was not interrupted,
        and a crash counts against recovery.max_crashes instead."""
        return self.recoverable and self not in (EndReason.NOT_STARTED, EndReason.CRASHED)


RECOVERABLE_ENDS = frozenset(reason for reason in EndReason if reason.recoverable)
INTERRUPTION_ENDS = frozenset(reason for reason in EndReason if reason.counts_as_interruption)


class Outcome(_Values):
    """The trainer's final word for an attempt (Final.outcome)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    UNREADABLE = "unreadable"  # a final.json that is not JSON (the trainer reads it so)


class Phase(_Values):
    """What the trainer reports doing (Heartbeat.phase)."""

    STARTING = "starting"
    DOWNLOADING = "downloading data"
    TRAINING = "training"
    VALIDATING = "validating"
    CHECKPOINTING = "checkpointing"
    EXPORTING = "exporting"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"
    DONE = "done"
    FAILED = "failed"

    @property
    def working(self) -> bool:
        """The trainer is at work and has said nothing about ending."""
        return self in (Phase.STARTING, Phase.DOWNLOADING, Phase.TRAINING, Phase.VALIDATING, Phase.CHECKPOINTING)


WORKING_PHASES = frozenset(phase for phase in Phase if phase.working)


def _is(value: Any, member: enum.Enum) -> bool:
    return value == member.value


# --------------------------------------------------------------------- the orchestrator's record
@dataclass(config=_LENIENT)
class Attempt:
    """One instance started for the job (record.json's attempts[])."""

    number: Annotated[int, Field(ge=1)]
    instance_type: str
    zone: str
    spot_price: Price
    on_demand_price: Price | None
    client_token: str  # EC2's idempotency token: a retried run_instances returns the same instance
    instance_id: str | None = None  # None while the attempt is claimed but EC2 has not answered yet
    launched_at: Timestamp | None = None
    ended_at: Timestamp | None = None  # when EC2 says the instance stopped running (billing ends)
    end_reason: str | None = None  # an EndReason
    state_reason: str | None = None  # EC2's own code, e.g. Server.SpotInstanceTermination
    requested_at: Timestamp | None = None  # when this attempt was claimed
    claimed_by: str | None = None  # the orchestrator process that claimed it (jobs.launch)
    start_step: Count | None = None  # the step the trainer resumed from
    end_step: Count | None = None  # the last step it reported
    # Billing (orchestrator.jobs.cost). None in records written before spotctl recorded them.
    running_at: Timestamp | None = None  # first seen `running` (EC2 bills the instance from then; jobs.state.settle)
    disk_gib: Count | None = None  # its root gp3 volume (compute.disk_gib at launch)
    public_ip: bool | None = None  # whether it had a public IPv4 address (compute.public_ip at launch)
    # Why it ended, in words, where the end reason alone does not say (a crash: the signal, a probable
    # out-of-memory kill and the memory figures; orchestrator.jobs.crash). None: nothing more to say.
    end_detail: str | None = None


@dataclass(config=_LENIENT)
class Notified:
    """One notification to one target (record.json's notified[key]; orchestrator.jobs.notify): claimed by
    the driver about to send it, then sent, or failed (retried at a later poll) until given up."""

    state: str  # claimed | sent | failed | gave_up
    at: Timestamp
    by: str | None = None  # the orchestrator process that claimed it
    tries: Count = 0
    error: str | None = None  # the last failure, with the target masked


@dataclass(config=_LENIENT)
class JobRecord:
    """What only the orchestrator knows of a job (record.json); the trainer's objects hold the rest."""

    job_id: str
    name: str
    region: Annotated[str, AfterValidator(_region)]
    storage: str
    job_url: str
    wheel_url: str
    ami: str
    created_at: Timestamp = field(default_factory=now_iso)
    cancelled_at: Timestamp | None = None
    outcome: str | None = None  # a terminal JobState the orchestrator decided (no_capacity, budget_exceeded, failed)
    outcome_reason: str | None = None
    budget_usd: Price | None = None  # budget.max_cost_usd, raised by `resume --budget`
    stop_requested_at: Timestamp | None = None  # control/stop written (by spotctl stop or the budget)
    attempts: list[Attempt] = field(default_factory=list)
    # Each notification sent (or being sent) once: "<event key>@<target index>" -> how it went.
    notified: dict[str, Notified] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return layout.in_job(self.job_id)

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, body: bytes) -> JobRecord:
        """The record `body` holds, read strictly (ValueError: what is wrong with it, in one line). Unlike
        the trainer's documents no field is left out: the orchestrator writes the record back, and a
        record read with a field dropped would be written back without it."""
        data = problems.json_object(body)
        try:
            return _RECORD.validate_python(data)
        except ValidationError as exc:
            wrong = problems.field_problems(exc.errors())
            missing = [where for where, what in wrong.items() if what == "missing"]
            told = [f"{where}: {what}" for where, what in wrong.items() if what != "missing"]
            if missing:
                held = ", ".join(problems.shown(key) for key in list(data)[:3]) + (", ..." if len(data) > 3 else "")
                told.append(f"missing {', '.join(missing)}" + (f" (it holds {held})" if held else ""))
            raise ValueError("; ".join(told)) from None


_RECORD = TypeAdapter(JobRecord)


# ----------------------------------------------------------------------- the trainer's documents
class Document(BaseModel):
    """A JSON object of the job. Read leniently: a field this version does not know, or one whose
    value it cannot read, is left out and the rest still counts (a newer or older writer, a hand edit).
    Written strictly (`of`, `dump`): a field the model does not define is a bug in the writer, not data."""

    model_config = _LENIENT
    _as_written: dict[str, Any] | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, **fields: Any):
        """The document with these fields; a field it does not define is refused (TypeError)."""
        unknown = sorted(set(fields) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)} (add it to trainer/job/documents.py)")
        return cls(**fields)

    @classmethod
    def dump(cls, fields: dict[str, Any]) -> bytes:
        """The JSON a writer stores: `fields` as given, once they are known to be this document."""
        cls.of(**fields)
        return json.dumps(fields, indent=1).encode()

    @classmethod
    def parse(cls, body: bytes | str | None):
        """The document; None when absent, not a JSON object, or empty (a torn write, another program's file)."""
        return cls.read(body)[0]

    @classmethod
    def read(cls, body: bytes | str | None) -> tuple[Any, list[str]]:
        """(the document as `parse` reads it, what is wrong with what was stored: one line each). A
        field whose value cannot be read is left out (unknown) and named; a body that is no JSON
        object at all is None and its one problem."""
        if body is None:
            return None, []
        try:
            data = problems.json_object(body)
        except ValueError as exc:
            return None, [str(exc)]
        if not data:
            return None, ["an empty JSON object"]
        wrong: dict[str, str] = {}
        try:
            found = cls.model_validate(data)
        except ValidationError as exc:  # keep what can be read: one odd field must not hide the rest
            errors = exc.errors()
            wrong = problems.field_problems(errors)
            unreadable = {error["loc"][0] for error in errors if error["loc"]}
            try:
                found = cls.model_validate({key: value for key, value in data.items() if key not in unreadable})
            except ValidationError:
                return None, [f"{where}: {what}" for where, what in wrong.items()]
        found._as_written = data
        told = [f"{where}: {what}" for where, what in wrong.items()]
        if not set(data) & set(cls.model_fields):
            names = ", ".join(problems.shown(key) for key in list(data)[:3])
            told.append(f"no field a {cls.__name__} has (it holds {names}{', ...' if len(data) > 3 else ''})")
        return found, told

    def written(self) -> dict:
        """The document as its file holds it (every field, known or not), for showing it as it is."""
        return self._as_written if self._as_written is not None else self.model_dump(mode="json", exclude_unset=True)


class Heartbeat(Document):
    """status/heartbeat.json: the trainer's state, rewritten every few seconds (trainer.reporting)."""

    attempt: int | None = None
    phase: str | None = None  # a Phase
    # progress
    epoch: int | None = None  # 1-based
    epochs: int | None = None
    step: int | None = None
    batch: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    eta_s: float | None = None  # training steps left at the current pace, in seconds, as of updated_at
    # The pace: over the last minute of training (trainer.metrics.RATE_WINDOW_S), batch waits included;
    # the trainer's log line prints the same figure.
    images_per_sec: float | None = None
    data_wait_fraction: float | None = None
    batch_size: int | None = None
    data_workers: int | None = None
    ranks: int | None = None  # training processes (torchrun's WORLD_SIZE); batch_size is their global batch
    resumed_from_step: int | None = None  # the checkpoint this attempt started from (0: the beginning)
    # metrics
    loss: float | None = None
    acc1: float | None = None
    acc5: float | None = None
    lr: float | None = None
    val_loss: float | None = None
    val_acc1: float | None = None
    val_acc5: float | None = None
    # checkpoints
    last_checkpoint_step: int | None = None
    last_checkpoint_age_s: float | None = None  # at updated_at
    checkpoints_not_deleted: int | None = None  # older checkpoints retention could not delete (no s3:DeleteObject?)
    # GPU telemetry over the last interval, and the health window's averages (orchestrator.jobs.health)
    gpu_count: int | None = None
    gpu_util_pct: float | None = None
    gpu_mem_used_gib: float | None = None
    gpu_mem_total_gib: float | None = None
    gpu_power_w: float | None = None
    gpu_mem_peak_gib: float | None = None  # the most GPU memory NVML saw in use this attempt (all GPUs)
    health_window_s: float | None = None
    gpu_util_window_pct: float | None = None
    gpu_mem_window_fraction: float | None = None
    data_wait_window: float | None = None
    # Memory high-water marks this attempt (trainer.telemetry.HostMemory): what tells an out-of-memory
    # kill from another crash (orchestrator.jobs.crash), since a killed trainer says nothing after.
    mem_rss_peak_gib: float | None = None  # the trainer process's peak resident memory (getrusage ru_maxrss)
    host_mem_used_peak_gib: float | None = None  # the machine's memory in use at its highest heartbeat (all processes)
    host_mem_total_gib: float | None = None  # the machine's memory
    # the process
    startup: dict[str, Any] | None = None  # seconds from start to the first step, by part
    error: str | None = None
    host: str | None = None
    pid: int | None = None
    instance_id: str | None = None
    started_at: Timestamp | None = None
    updated_at: Timestamp | None = None

    def of_attempt(self, number: int | None) -> bool:
        return self.attempt == number

    def in_phase(self, phase: Phase) -> bool:
        return _is(self.phase, phase)


PROGRESS_FIELDS = (
    "phase",
    "epoch",
    "epochs",
    "step",
    "total_steps",
    "steps_per_epoch",
    "eta_s",
    "images_per_sec",
    "data_wait_fraction",
)
METRIC_FIELDS = ("loss", "acc1", "lr", "val_loss", "val_acc1", "val_acc5")
GPU_FIELDS = (
    "gpu_count",
    "gpu_util_pct",
    "gpu_mem_used_gib",
    "gpu_mem_total_gib",
    "gpu_power_w",
    "health_window_s",
    "gpu_util_window_pct",
    "gpu_mem_window_fraction",
    "data_wait_window",
)


class FinalWarning(Document):
    """Something about a finished run a person should look at, though it did not fail (`spotctl
    status` shows each as a health flag): e.g. `chance_level` (trainer.reporting.chance_level)."""

    name: str
    message: str
    hint: str | None = None


class Final(Document):
    """status/final.json: the trainer's (or, when it could not, the bootstrap's) last word."""

    outcome: str | None = None  # an Outcome
    attempt: int | None = None
    reason: str | None = None  # why it stopped (a stop request, the budget)
    step: int | None = None
    epochs_completed: int | None = None
    best: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    error: str | None = None
    traceback: list[str] | None = None
    warnings: list[FinalWarning] | None = None  # the run's result is suspect (a stopped or succeeded run)
    finished_at: Timestamp | None = None

    def is_(self, outcome: Outcome) -> bool:
        return _is(self.outcome, outcome)

    @property
    def finished(self) -> bool:
        """Succeeded or failed: over, whatever anyone asked since."""
        return self.is_(Outcome.SUCCEEDED) or self.is_(Outcome.FAILED)


class Crash(Document):
    """status/crash-attempt-<k>.json: the bootstrap's report of a trainer that died without a final word
    (orchestrator.jobs.userdata), written before the machine shuts down, so the orchestrator can tell a
    crash (recovered, up to recovery.max_crashes) from a trainer that raised (final.json, failed). The
    trainer writes one itself when a data worker was killed (trainer.run: the OOM killer picks the
    largest process, often a worker), and exits EXIT_CRASHED; the bootstrap's then does not replace it."""

    attempt: int | None = None
    process: str | None = None  # whose death: "trainer" (the bootstrap's report) or "data worker" (the trainer's own)
    exit_code: int | None = None  # as the shell saw it: 128 + N when signal N killed the trainer
    signal: str | None = None  # e.g. SIGKILL, SIGSEGV; None when it exited by itself
    oom_killed: bool | None = None  # the kernel log says its OOM killer killed the trainer; None: log unreadable
    kernel_log: list[str] | None = None  # the kernel's lines about the trainer's process, if any
    reported_at: str | None = None


class StopRequest(Document):
    """control/stop: the trainer checkpoints and exits when it finds one."""

    reason: str | None = None
    requested_at: Timestamp | None = None


class ArtifactFile(Document):
    format: str
    path: str | None = None  # relative to artifacts/: <export id>/<name> (older manifests: <name>)
    sha256: str
    size: int
    input_shape: list[int | None] | None = None


class Manifest(Document):
    """artifacts/manifest.json, written last: a file counts as exported once the manifest names it."""

    job_id: str | None = None
    created_at: Timestamp | None = None
    export_id: str | None = None
    checkpoint_step: int | None = None
    source: str | None = None
    metrics: dict[str, Any] | None = None
    torch: str | None = None
    torchvision: str | None = None
    formats: dict[str, dict[str, Any]] = {}
    files: dict[str, ArtifactFile] = {}


# ----------------------------------------------------------------------- who looks after a job
class WatchLease(Document):
    """care/watch.json: a `spotctl watch` follows the job, until `expires_at` unless it renews it."""

    holder: str | None = None  # host:pid of the watch
    updated_at: Timestamp | None = None
    expires_at: Timestamp | None = None


class TickNote(BaseModel):
    model_config = _LENIENT
    job_id: str
    message: str


class ControllerTick(Document):
    """controller/tick.json: the serverless controller's last schedule tick (orchestrator.controller)."""

    at: Timestamp | None = None  # when the tick ended
    version: str | None = None  # spotctl's version the controller runs
    took_s: float | None = None
    jobs_seen: list[str] = []  # the jobs it reconciled (every non-terminal one under the root)
    actions: list[TickNote] = []  # what it did and told, job by job
    errors: list[TickNote] = []  # the jobs it could not handle, and why
