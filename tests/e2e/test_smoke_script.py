"""scripts/aws-smoke.sh --local: the real-account smoke test's steps, all but the FIS call, on the local
cloud, with its output as a user reads it (one line per check), and its teardown after a failure."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import REPO
from tests.e2e.test_local_cloud import processes_mentioning

SCRIPT = REPO / "scripts" / "aws-smoke.sh"
SPOTCTL = Path(sys.executable).with_name("spotctl")  # the CLI of the python running the tests


def run_smoke(work: Path, wheel: Path, spotctl: Path = SPOTCTL) -> tuple[int, list[str], str]:
    """The script under --local in a folder of its own (its SPOTCTL_HOME is work/home); returns its exit
    code, stdout lines and stderr. Whatever happens, nothing it started outlives the call."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_") and name not in ("SPOTCTL_STORAGE", "SPOTCTL_HOME")
    }
    env.update(
        SPOTCTL=str(spotctl),
        PYTHON=sys.executable,
        SPOTCTL_WHEEL=str(wheel),
        SPOTCTL_CACHE_DIR=str(work / "cache"),
        SMOKE_DIR=str(work),
    )
    script = subprocess.Popen(
        ["bash", str(SCRIPT), "--local"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the background watch goes with it
    )
    try:
        out, err = script.communicate(timeout=600)  # about 1 minute; the machine may be loaded
    except subprocess.TimeoutExpired:
        os.killpg(script.pid, signal.SIGTERM)  # its trap tears down
        try:
            out, err = script.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGKILL)
            out, err = script.communicate()
        raise AssertionError(f"the smoke script did not finish:\n{out}\n{err[-3000:]}") from None
    finally:  # its trap stops the local cloud; if it was killed before, this does
        subprocess.run(
            [str(SPOTCTL), "local", "down"], env={**env, "SPOTCTL_HOME": str(work / "home")}, capture_output=True
        )
    return script.returncode, out.splitlines(), err


def no_local_cloud_left(work: Path) -> None:
    assert processes_mentioning(str(work / "home")) == []
    assert not (work / "home" / "local" / "local.json").exists()


@pytest.mark.slow
def test_the_smoke_script_verifies_every_step_on_the_local_cloud(tmp_path, wheel):
    work = tmp_path / "smoke"
    code, lines, err = run_smoke(work, wheel)
    assert code == 0, "\n".join(lines) + "\n" + err[-3000:] + (work / "smoke.log").read_text()[-3000:]
    expected = [
        rf"ok   0\. prerequisites: the local cloud; run [0-9a-f]{{6}}, working in {re.escape(str(work))}",
        r"ok   1\. infrastructure: local cloud up at http://127\.0\.0\.1:\d+ \(pid \d+\): bucket spotctl-local, instance profile spotctl-trainer",
        r"ok   2\. doctor: ready to launch \(\d+ checks(; warnings: [a-z0-9 ,]+)?\)",
        r"ok   3\. launch: (?P<job>smoke-\d{6}-[0-9a-f]{4}) on (?P<instance>i-[0-9a-f]+), \S+ in us-east-1[a-f] at \$0\.\d{4}/h: the cheapest offer",
        r"ok   4\. running: (?P=instance) running; heartbeat \d+ s old: training, step [1-9]\d*/60 \(after \d+ s\)",
        r"ok   5\. spot interruption: spot notice served to (?P=instance) \(job (?P=job) attempt 1\); it goes in 10s; "
        r"attempt 1 ended interrupted at step (?P<step>[1-9]\d*)",
        r"ok   6\. recovery: attempt 1 interrupted \(Server\.SpotInstanceTermination\) at step (?P=step); "
        r"attempt 2 on \S+ in us-east-1[a-f] resumed at step (?P=step) and succeeded at step 60/60",
        r"ok   7\. cost: \$0\.\d{4} \(instance \$0\.\d{4}, volumes \$0\.\d{4}, IPv4 \$0\.\d{4}\), \d+% below on-demand "
        r"\(\$0\.\d{4}\); attempt 1's instance free \(interrupted in its first hour\)",
        r"ok   8\. teardown: local cloud stopped, with every machine it ran",
        r"smoke test passed: 9 checks \(local\)",
    ]
    assert len(lines) == len(expected), "\n".join(lines)
    assert re.fullmatch("\n".join(expected), "\n".join(lines)), "\n".join(lines)
    no_local_cloud_left(work)


@pytest.mark.slow
def test_a_failed_step_is_reported_with_its_reason_and_still_torn_down(tmp_path, wheel):
    work = tmp_path / "smoke"
    refusing = tmp_path / "spotctl-refusing-launch"  # spotctl, but `launch` fails as it would with a hint
    refusing.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = launch ]; then\n'
        "  echo 'error: EC2 refused every offer (InsufficientInstanceCapacity)' >&2\n"
        "  echo 'hint: try other instance types' >&2\n"
        "  exit 1\n"
        "fi\n"
        f'exec {shutil.which(str(SPOTCTL))} "$@"\n'
    )
    refusing.chmod(0o755)
    code, lines, _ = run_smoke(work, wheel, spotctl=refusing)
    assert code == 1
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "ok   0. prerequisites",
        "ok   1. infrastructure",
        "ok   2. doctor",
        "FAIL 3. launch",
        "ok   8. teardown",
    ], "\n".join(lines)
    assert lines[3] == (
        f"FAIL 3. launch: `spotctl launch {work}/job.yaml --json` exited 1: "
        "error: EC2 refused every offer (InsufficientInstanceCapacity) hint: try other instance types"
    )
    assert lines[-1] == f"smoke test FAILED at 3. launch (4 checks passed); logs in {work}"
    no_local_cloud_left(work)
