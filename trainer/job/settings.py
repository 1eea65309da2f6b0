"""Every SPOTCTL_* environment variable, defined and documented once (README.md lists them, from here).

Four kinds: what a person may set (where spotctl keeps its state, a default storage root, a prebuilt
wheel), what the instance's user-data passes to the trainer (the job, the attempt, the instance), the
knobs the local cloud turns on its instances, and the hooks tests and CPU benches set (never a
production run). Code reads them through `Settings.from_env()` (or
`BootEnv.from_env()` on the instance), never through os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    meaning: str
    set_by: str  # "you", "user-data", "local cloud" or "tests"


VARIABLES = (
    Variable(
        "SPOTCTL_HOME",
        "~/.spotctl",
        "where spotctl keeps its own state: the deployed stack's profile (infra.json), the local cloud",
        "you",
    ),
    Variable(
        "SPOTCTL_STORAGE",
        "",
        "storage root of the jobs for commands given no --storage (`spotctl local env` sets it)",
        "you",
    ),
    Variable("SPOTCTL_CACHE_DIR", "~/.cache/spotctl", "downloaded datasets and built wheels", "you"),
    Variable(
        "SPOTCTL_WHEEL",
        "",
        "a prebuilt spotctl wheel to ship to instances, for an installation without the sources",
        "you",
    ),
    Variable("SPOTCTL_JOB_ID", "", "the job the trainer runs (its prefix is `<storage>/jobs/<id>`)", "user-data"),
    Variable("SPOTCTL_JOB_URL", "", "the job file the trainer runs", "user-data"),
    Variable(
        "SPOTCTL_ATTEMPT",
        "",
        "the attempt number the trainer reports under (else one past the attempts that left a log)",
        "user-data",
    ),
    Variable(
        "SPOTCTL_INSTANCE_ID", "", "the instance the trainer runs on, read from IMDS by the user-data", "user-data"
    ),
    Variable("SPOTCTL_NODES", "1", "the machines the job trains on together (compute.nodes)", "user-data"),
    Variable("SPOTCTL_NODE_RANK", "0", "this machine's node rank among them (0: the rendezvous' master)", "user-data"),
    Variable(
        "SPOTCTL_RENDEZVOUS_TIMEOUT_S",
        "900",
        "seconds a node of a multi-node job waits for the others to register before its attempt gives up",
        "you",
    ),
    Variable(
        "SPOTCTL_NODE_ADDRESS",
        "",
        "HOST:PORT this machine's ranks listen on for the other nodes (default: its private IPv4 from IMDS, port 29500)",
        "local cloud",
    ),
    Variable("SPOTCTL_LOG_DIR", "/var/log/spotctl", "where the user-data writes the bootstrap log", "local cloud"),
    Variable(
        "SPOTCTL_SKIP_INSTALL",
        "",
        "non-empty: the user-data does not install the wheel (the environment already is spotctl's)",
        "local cloud",
    ),
    Variable(
        "SPOTCTL_NO_SHUTDOWN", "", "non-empty: the user-data does not shut the machine down at the end", "local cloud"
    ),
    Variable("SPOTCTL_HEARTBEAT_SECONDS", "15", "seconds between the trainer's heartbeats", "local cloud"),
    Variable("SPOTCTL_IMDS_POLL_SECONDS", "5", "seconds between the trainer's polls of the spot notice", "local cloud"),
    Variable(
        "SPOTCTL_COLLECTIVE_TIMEOUT_S",
        "300",
        "seconds a multi-GPU trainer's collective waits for a silent peer before it exits as interrupted",
        "you",
    ),
    Variable(
        "SPOTCTL_EXIT_FILE",
        "",
        "under torchrun: each rank writes its exit code to `<this>.<LOCAL_RANK>`, which the user-data reads",
        "user-data",
    ),
    Variable(
        "SPOTCTL_TEST_PROBE_MEMORY",
        "",
        "`<bytes>[@<GPU name>]`: batch_size auto's probe runs out of memory past that many bytes of "
        "activations, on that GPU name (a CPU test's stand-in for a GPU; trainer/batch_probe.py)",
        "tests",
    ),
)


def _path(value: str | None, default: Path) -> Path:
    return Path(value).expanduser() if value else default


@dataclass(frozen=True)
class Settings:
    """What a person (or the local cloud) set, with the defaults filled in."""

    home: Path
    storage: str | None
    cache_dir: Path
    wheel: Path | None
    heartbeat_seconds: float
    imds_poll_seconds: float
    collective_timeout_s: float = 300.0
    exit_file: str | None = None
    rendezvous_timeout_s: float = 900.0
    region: str | None = None  # AWS_REGION (else AWS_DEFAULT_REGION): the controller's own region
    test_probe_memory: str | None = None  # SPOTCTL_TEST_PROBE_MEMORY, parsed by trainer.batch_probe.inject

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            home=_path(env.get("SPOTCTL_HOME"), Path.home() / ".spotctl"),
            storage=env.get("SPOTCTL_STORAGE") or None,
            cache_dir=_path(env.get("SPOTCTL_CACHE_DIR"), Path.home() / ".cache" / "spotctl"),
            wheel=Path(env["SPOTCTL_WHEEL"]) if env.get("SPOTCTL_WHEEL") else None,
            heartbeat_seconds=float(env.get("SPOTCTL_HEARTBEAT_SECONDS") or 15),
            imds_poll_seconds=float(env.get("SPOTCTL_IMDS_POLL_SECONDS") or 5),
            collective_timeout_s=float(env.get("SPOTCTL_COLLECTIVE_TIMEOUT_S") or 300),
            exit_file=env.get("SPOTCTL_EXIT_FILE") or None,
            rendezvous_timeout_s=float(env.get("SPOTCTL_RENDEZVOUS_TIMEOUT_S") or 900),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            test_probe_memory=env.get("SPOTCTL_TEST_PROBE_MEMORY") or None,
        )


@dataclass(frozen=True)
class BootEnv:
    """What the user-data passes to the trainer (orchestrator.jobs.userdata exports these variables)."""

    job_id: str | None = None
    job_url: str | None = None
    attempt: int | None = None
    instance_id: str | None = None
    nodes: int = 1  # compute.nodes: the machines of the job
    node_rank: int = 0  # this machine's node rank (trainer.job.rendezvous)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BootEnv:
        env = os.environ if environ is None else environ
        attempt = env.get("SPOTCTL_ATTEMPT")
        return cls(
            env.get("SPOTCTL_JOB_ID") or None,
            env.get("SPOTCTL_JOB_URL") or None,
            int(attempt) if attempt else None,
            env.get("SPOTCTL_INSTANCE_ID") or None,
            int(env.get("SPOTCTL_NODES") or 1),
            int(env.get("SPOTCTL_NODE_RANK") or 0),
        )


def markdown_table() -> str:
    """The variables as README.md lists them (a test keeps the two equal)."""
    rows = ["| variable | default | set by | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{v.name}` | {f'`{v.default}`' if v.default else '-'} | {v.set_by} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(rows) + "\n"
