"""The CLI frame: help, version, usage errors, unexpected errors."""

from __future__ import annotations

import pytest

from orchestrator import __version__
from orchestrator.cli.context import App


def test_help_lists_the_commands(spotctl):
    code, out, _ = spotctl("--help")
    assert code == 0
    assert "Usage: spotctl [OPTIONS] COMMAND [ARGS]..." in out
    commands = out.split("Commands:")[1].split()
    assert [word for word in commands if word in ("schema", "validate")] == ["schema", "validate"]


def test_version(spotctl):
    assert spotctl("--version") == (0, f"spotctl, version {__version__}\n", "")


def test_unknown_command_is_a_usage_error(spotctl):
    code, out, err = spotctl("lanch")
    assert (code, out) == (2, "")
    assert "No such command 'lanch'" in err


def test_missing_argument_is_a_usage_error(spotctl):
    code, _, err = spotctl("validate")
    assert code == 2
    assert "Missing argument 'JOB.yaml'" in err


def test_unexpected_errors_are_one_message_without_debug(spotctl, monkeypatch):

    def broken(path):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(App, "load_job", lambda self, path, region=None: broken(path))
    code, out, err = spotctl("validate", "job.yaml")
    assert (code, out) == (1, "")
    assert err == (
        "error: unexpected RuntimeError: disk on fire\n"
        "hint: run again with --debug for the traceback, and report it if it is a bug\n"
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        spotctl("--debug", "validate", "job.yaml")


def test_module_entry_point():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "orchestrator", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == f"spotctl, version {__version__}\n"


def test_user_errors_are_a_message_and_a_hint(spotctl, monkeypatch):
    from orchestrator.errors import UserError

    def refused(path):
        raise UserError("bucket 'b' does not exist", hint="create it, or fix storage: in job.yaml")

    monkeypatch.setattr(App, "load_job", lambda self, path, region=None: refused(path))
    assert spotctl("validate", "job.yaml") == (
        1,
        "",
        "error: bucket 'b' does not exist\nhint: create it, or fix storage: in job.yaml\n",
    )
