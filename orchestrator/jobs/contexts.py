"""Where spotctl looks for jobs when a command is given neither `--storage` nor `--local`: the
*contexts*, each a storage root and the account that reaches it.

In order: `SPOTCTL_STORAGE`; the storage roots this machine launched into (`remember`, written by
`spotctl launch` into `$SPOTCTL_HOME/storage.json`); the deployed stack's (`$SPOTCTL_HOME/infra.json`);
and the local cloud when one runs (orchestrator.cli.context finds it). A job id is looked up in all of
them (`locate`, any unique prefix), and `spotctl status` lists them all, each job with its context's
name (`local`, or the storage root). A root that cannot be read is one line (`Unreachable`), never
the end of the listing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import PriceSource
from orchestrator.errors import UserError
from orchestrator.jobs.record import JobStore
from trainer.job.documents import now_iso
from trainer.job.settings import Settings
from trainer.job.spec import did_you_mean

REMEMBERED_FILE = "storage.json"  # under $SPOTCTL_HOME: the roots `spotctl launch` wrote to
REMEMBERED_MAX = 20  # roots kept, newest first: a machine launches into a handful
LOCAL = "local"  # the name of the local cloud's context


@dataclass(frozen=True)
class Remembered:
    """A storage root this machine launched a job into."""

    storage: str
    local: bool = False
    """launched with --local: the root is the local cloud's, read only while it runs"""
    profile: str | None = None
    """the AWS profile the launch used (--profile), to read the root with again"""
    launched_at: str | None = None


def remembered_path() -> Path:
    return Settings.from_env().home / REMEMBERED_FILE


def remembered() -> list[Remembered]:
    """The roots launched into, newest first; an unreadable file counts as none (it is only a hint)."""
    try:
        entries = json.loads(remembered_path().read_text())["roots"]
        return [Remembered(**entry) for entry in entries]
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return []


def remember(storage: str, local: bool = False, profile: str | None = None) -> bool:
    """Note a root `spotctl launch` wrote a job to; False when $SPOTCTL_HOME cannot be written (the
    launch still stands: its follow-up commands then name the root)."""
    root = storage.rstrip("/")
    kept = [r for r in remembered() if (r.storage, r.local) != (root, local)]
    entries = [Remembered(root, local, profile, now_iso()), *kept][:REMEMBERED_MAX]
    path = remembered_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"roots": [asdict(e) for e in entries]}, indent=1))
        os.replace(temporary, path)  # whole or not at all: another launch may be reading it
    except OSError:
        return False
    return True


@dataclass
class Context:
    """One storage root and how to reach its account: the local cloud's, or AWS's (a profile)."""

    name: str  # "local", or the storage root
    store: JobStore
    clouds: Callable[[str], Cloud]  # a Cloud per region
    prices: Callable[[Cloud], PriceSource]
    local: bool = False
    job_ids: list[str] = field(default_factory=list)  # filled by `reach`


@dataclass(frozen=True)
class Unreachable:
    """A context that could not be read (no credentials, a bucket gone): why, in one line."""

    name: str
    error: str


def reach(contexts: list[Context], error_of: Callable[[Exception, str], str]) -> list[Unreachable]:
    """List each context's job ids; the contexts that fail are taken out and returned, with why
    (`error_of(exception, what was being done)`)."""
    failed = []
    for context in list(contexts):
        try:
            context.store.check()
            context.job_ids = context.store.job_ids()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the other roots are still listed
            failed.append(Unreachable(context.name, error_of(exc, f"reading {context.store.root}")))
            contexts.remove(context)
    return failed


def matches(job_id: str, ids: list[str]) -> list[str]:
    """The ids `job_id` names: itself, else every id it is a prefix of."""
    return [job_id] if job_id in ids else [i for i in ids if i.startswith(job_id)]


def locate(contexts: list[Context], job_id: str, unreachable: list[Unreachable] = ()) -> tuple[Context, str]:
    """The context holding the job `job_id` names (the whole id or any unique prefix), and its id."""
    exact = [(c, job_id) for c in contexts if job_id in c.job_ids]
    found = exact or [(c, i) for c in contexts for i in matches(job_id, c.job_ids)]
    if len(found) == 1:
        return found[0]
    several = len(contexts) > 1
    if found:
        names = ", ".join(f"{i} ({c.name})" if several else i for c, i in found)
        raise UserError(
            f"'{job_id}' names {len(found)} jobs: {names}",
            "give more of the id" + ("; --storage URL or --local picks one context" if exact else ""),
        )
    where = " or ".join(f"{c.store.root} (the local cloud)" if c.local else c.store.root for c in contexts)
    missing = "; ".join(f"{u.name} could not be read ({u.error})" for u in unreachable)
    raise UserError(
        f"no job '{job_id}' under {where or 'any storage root'}"
        f"{did_you_mean(job_id, [i for c in contexts for i in c.job_ids])}",
        "`spotctl status` lists the jobs there" + (f"; {missing}" if missing else ""),
    )


NO_CONTEXT_HINT = (
    "pass --storage s3://bucket/prefix (the job file's `storage`) or set SPOTCTL_STORAGE; "
    "for the local cloud, --local (`spotctl local up` starts it)"
)
