"""The CLI's side of the local cloud: where it lives (`$SPOTCTL_HOME`, default ~/.spotctl), starting
it in the background, finding it, talking to it and stopping it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from orchestrator.errors import UserError
from orchestrator.local import bucket
from orchestrator.local.daemon import (
    BUCKET,
    CREDENTIALS,
    INSTANCE_PROFILE,
    LOCAL_MAX_ATTEMPTS,
    STATE_FILE,
    STORAGE_PREFIX,
    client_environment,
)
from trainer.job.settings import Settings

START_TIMEOUT_S = 60.0  # the daemon's start, a kept bucket's restore included
STOP_TIMEOUT_S = 30.0
KEEP_TIMEOUT_S = 300.0  # a stop that first copies the bucket out (checkpoints: tens of MB each)
LOCAL_STORAGE = f"s3://{BUCKET}/{STORAGE_PREFIX}"
DEFAULT_SEED = 0
DEFAULT_NOTICE_S = 5.0


def home() -> Path:
    return Settings.from_env().home / "local"


@dataclass
class LocalCloud:
    pid: int
    endpoint: str
    control: str
    seed: int
    region: str
    bucket: str
    started_at: str

    # What its account has, as `spotctl local up` seeds it: job files under --local default to these.
    storage = LOCAL_STORAGE
    instance_profile = INSTANCE_PROFILE
    max_attempts = LOCAL_MAX_ATTEMPTS  # botocore's attempts per call: a local endpoint that fails is down, not busy

    @property
    def credentials(self) -> tuple[str, str]:
        """(access key, secret key): moto accepts any; these are not secrets."""
        return CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]

    def environment(self) -> dict[str, str]:
        return client_environment(self.endpoint)

    def strict(self, changes: dict) -> dict:
        """Change what its strict proxy refuses (orchestrator.local.strict.Strictness); its settings."""
        try:
            return _request(f"{self.endpoint}/_strict/config", "POST", changes, 10.0)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # moto's own answer: no proxy in front of it
                raise UserError(
                    "the local cloud runs without the strict proxy (started with --lenient)",
                    "`spotctl local down`, then `spotctl local up`",
                ) from None
            raise _refused(exc) from None

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> dict:
        try:
            return _request(f"{self.control}{path}", method, body, timeout)
        except urllib.error.HTTPError as exc:
            raise _refused(exc) from None

    def contents(self) -> bucket.Contents:
        """What its bucket holds: jobs, wheels, data."""
        return bucket.Contents(**self.call("GET", "/contents", timeout=60.0))


class Up(NamedTuple):
    """What `up` did: the cloud, whether it was started now, and on a running one, the settings
    changed live ({name: (before, after)}) and those it cannot change while it runs ({name: asked})."""

    cloud: LocalCloud
    started: bool
    changed: dict
    ignored: dict


def _request(url: str, method: str, body: dict | None, timeout: float) -> dict:
    """One JSON request to the local cloud (its control API, or its strict proxy's)."""
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body or {}).encode() if method == "POST" else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _refused(exc: urllib.error.HTTPError) -> UserError:
    return UserError(f"local cloud: {json.loads(exc.read()).get('error', exc.reason)}")


def find() -> LocalCloud | None:
    """The running local cloud of this SPOTCTL_HOME, or None (a stale state file is removed)."""
    state = home() / STATE_FILE
    try:
        cloud = LocalCloud(**json.loads(state.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    try:
        cloud.call("GET", "/status", timeout=3)
        return cloud
    except (OSError, UserError):
        if not _alive(cloud.pid):
            state.unlink(missing_ok=True)
        return None


def up(
    seed: int | None = None,
    interrupt_rate: float | None = None,
    notice_s: float | None = None,
    interrupt_at_step: int | None = None,
    strictness: dict | None = None,
    lenient: bool = False,
    controller: bool = True,
    events: bool | None = None,
    tick_s: float | None = None,
) -> Up:
    """Start the local cloud, or change the running one. None (or False): not asked for. A new cloud
    takes the defaults for those (its seed: the kept cloud's, else DEFAULT_SEED) and puts back the
    bucket `down(keep=True)` kept. A running one gets the interruptions (rate, scheduled step, notice)
    and `strictness` (changes to its strict proxy's settings, orchestrator.local.strict.Strictness)
    applied live; a seed other than its own and `lenient` need a new cloud, so they are ignored, and
    said so in `Up.ignored`. `controller` False: a new cloud deploys none; `events` (EC2's events
    delivered to it) and `tick_s` (its schedule) apply to a running one too."""
    running = find()
    if running:
        return _change(
            running, seed, interrupt_rate, notice_s, interrupt_at_step, strictness, lenient, controller, events, tick_s
        )
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    if seed is None:  # the kept jobs' attempts were priced by that market
        seed = (kept() or {}).get("seed", DEFAULT_SEED)
    with open(folder / "daemon.log", "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator.local.daemon",
                "--home",
                str(folder),
                "--seed",
                str(seed),
                "--interrupt-rate",
                str(interrupt_rate or 0.0),
                "--notice",
                str(DEFAULT_NOTICE_S if notice_s is None else notice_s),
                *(["--interrupt-at-step", str(interrupt_at_step)] if interrupt_at_step is not None else []),
                *(["--lenient"] if lenient else ["--strictness", json.dumps(strictness or {})]),
                *([] if controller else ["--no-controller"]),
                *(["--no-events"] if events is False else []),
                *(["--tick", str(tick_s)] if tick_s is not None else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(
                f"the local cloud did not start (exit {process.returncode})", f"see {folder / 'daemon.log'}"
            )
        cloud = find()
        if cloud and cloud.pid == process.pid:
            return Up(cloud, True, {}, {})
        time.sleep(0.2)
    process.kill()
    raise UserError(f"the local cloud did not start within {START_TIMEOUT_S:.0f}s", f"see {folder / 'daemon.log'}")


def _change(
    cloud: LocalCloud,
    seed: int | None,
    interrupt_rate: float | None,
    notice_s: float | None,
    interrupt_at_step: int | None,
    strictness: dict | None,
    lenient: bool,
    controller: bool = True,
    events: bool | None = None,
    tick_s: float | None = None,
) -> Up:
    asked = {"interrupt_at_step": interrupt_at_step, "interrupt_rate": interrupt_rate, "notice_s": notice_s}
    asked = {k: v for k, v in asked.items() if v is not None}
    live = {k: v for k, v in {"events": events, "tick_s": tick_s}.items() if v is not None}
    ignored = {}
    if seed is not None and seed != cloud.seed:  # its prices are what the jobs' attempts were charged
        ignored["seed"] = seed
    if not (asked or live or strictness or lenient or not controller):  # nothing to change (`launch --local`)
        return Up(cloud, False, {}, ignored)
    described = cloud.call("GET", "/status")
    if lenient and described["strict"]:
        ignored["lenient"] = True
    deployed = (described.get("controller") or {}).get("deployed")
    if not controller and deployed:
        ignored["controller"] = True
    if deployed:
        before_live = {"events": described["controller"]["events"], "tick_s": described["controller"]["tick_s"]}
        asked.update(live)
    else:
        before_live = {}
    before = {**described["interruptions"], **before_live}
    after = cloud.call("POST", "/config", asked) if asked else before
    changed = {k: (before[k], after[k]) for k in asked if before[k] != after[k]}
    if strictness:
        was = cloud.strict({})  # no change: its settings as they are
        now = cloud.strict(strictness)
        changed.update({k: (was[k], now[k]) for k in strictness if was[k] != now[k]})
    return Up(cloud, False, changed, ignored)


class Down(NamedTuple):
    """What `down` did: the cloud it stopped, what its bucket held, and whether that was kept."""

    cloud: LocalCloud
    contents: bucket.Contents | None  # None: the cloud did not say
    kept: bool


def down(keep: bool = False) -> Down | None:
    """Stop the local cloud and everything it started; None if none was running. `keep`: its bucket
    is copied to `home()/kept/` first, for the next `up` to put back."""
    cloud = find()
    if cloud is None:
        return None
    try:
        contents = cloud.contents()
    except (OSError, UserError):  # a daemon that does not answer it: stopped all the same
        contents = None
    try:
        cloud.call("POST", "/shutdown", {"keep": keep})
    except OSError:
        keep = False
        os.kill(cloud.pid, signal.SIGTERM)
    deadline = time.monotonic() + (KEEP_TIMEOUT_S if keep else STOP_TIMEOUT_S)
    while _alive(cloud.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(cloud.pid):
        os.kill(cloud.pid, signal.SIGKILL)
    (home() / STATE_FILE).unlink(missing_ok=True)
    return Down(cloud, contents, keep and kept() is not None)


def kept_folder() -> Path:
    return home() / bucket.KEPT


def kept() -> dict | None:
    """The settings of a cloud `down(keep=True)` kept for the next `up`, or None."""
    return bucket.kept_settings(kept_folder())


def require() -> LocalCloud:
    cloud = find()
    if cloud is None:
        raise UserError(
            "the local cloud is not running",
            "start it with `spotctl local up` (or `spotctl launch --local`, which starts it)",
        )
    return cloud


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is not alive
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
