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

from orchestrator.errors import UserError
from orchestrator.local.daemon import (
    BUCKET,
    CREDENTIALS,
    INSTANCE_PROFILE,
    LOCAL_MAX_ATTEMPTS,
    STATE_FILE,
    client_environment,
)
from trainer.job.settings import Settings

START_TIMEOUT_S = 60.0
LOCAL_STORAGE = f"s3://{BUCKET}/spotctl"


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
    seed: int = 0,
    interrupt_rate: float | None = None,
    notice_s: float = 5.0,
    interrupt_at_step: int | None = None,
    strictness: dict | None = None,
    lenient: bool = False,
) -> tuple[LocalCloud, bool]:
    """(the cloud, whether it was started now). Idempotent: a running one is returned as it is, with
    the interruptions asked for (rate, scheduled step) and the strictness changes applied to it.
    `strictness`: changes to the strict proxy's settings (orchestrator.local.strict.Strictness);
    `lenient`: no strict proxy (moto's own answers), for a cloud started now."""
    running = find()
    if running:
        changes = {
            k: v
            for k, v in (("interrupt_at_step", interrupt_at_step), ("interrupt_rate", interrupt_rate))
            if v is not None
        }
        if changes:
            running.call("POST", "/config", changes)
        if strictness:
            running.strict(strictness)
        return running, False
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
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
                str(notice_s),
                *(["--interrupt-at-step", str(interrupt_at_step)] if interrupt_at_step is not None else []),
                *(["--lenient"] if lenient else ["--strictness", json.dumps(strictness or {})]),
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
            return cloud, True
        time.sleep(0.2)
    process.kill()
    raise UserError(f"the local cloud did not start within {START_TIMEOUT_S:.0f}s", f"see {folder / 'daemon.log'}")


def down(timeout_s: float = 30.0) -> LocalCloud | None:
    """Stop the local cloud and everything it started; None if none was running."""
    cloud = find()
    if cloud is None:
        return None
    try:
        cloud.call("POST", "/shutdown")
    except OSError:
        os.kill(cloud.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(cloud.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(cloud.pid):
        os.kill(cloud.pid, signal.SIGKILL)
    (home() / STATE_FILE).unlink(missing_ok=True)
    return cloud


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
