"""The CLI frame: help, version, usage errors, unexpected errors."""

from __future__ import annotations

import json

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


# ------------------------------------------------------------------------ validate: filled-in values
JOB = """\
name: tiny
train:
  model: {name: resnet18, weights: null}
  data: {train: s3://spotctl-local/datasets/shapes/train}
"""


@pytest.fixture
def deployed_stack():
    """A `spotctl infra deploy` profile in this test's SPOTCTL_HOME (conftest gives each its own)."""
    from orchestrator.aws import infra

    stack = infra.Deployed(
        "spotctl-team",
        "us-east-1",
        "team-bucket",
        "s3://team-bucket/spotctl",
        "spotctl-team-trainer",
        "sg-0123456789abcdef0",
        "arn:aws:iam::123456789012:role/spotctl-team-trainer",
        "2026-01-01T00:00:00+00:00",
    )
    infra._write_profile(stack)
    return stack


def test_validate_marks_the_values_the_deployed_stack_fills_in(spotctl, tmp_path, deployed_stack):
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    code, out, err = spotctl("validate", str(job))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "├── storage: s3://team-bucket/spotctl  (from the deployed stack spotctl-team)" in lines
    assert "│   ├── instance_profile: spotctl-team-trainer  (from the deployed stack spotctl-team)" in lines
    assert "│   ├── security_group: sg-0123456789abcdef0  (from the deployed stack spotctl-team)" in lines
    assert "├── region: us-east-1  (from the deployed stack spotctl-team)" in lines
    code, out, _ = spotctl("validate", "--json", str(job))
    assert json.loads(out)["filled_in"] == {
        "region": "the deployed stack spotctl-team",
        "storage": "the deployed stack spotctl-team",
        "compute.security_group": "the deployed stack spotctl-team",
        "compute.instance_profile": "the deployed stack spotctl-team",
    }


def test_a_local_job_never_gets_the_deployed_stacks_values(spotctl, tmp_path, deployed_stack, monkeypatch):
    """Bug: a job for the local cloud was given the deployed stack's security group (and `validate`
    showed the stack's values unmarked, with no `--local` to ask what a local launch would use)."""
    from orchestrator.local import client
    from trainer.job.settings import Settings

    local = client.LocalCloud(1, "http://127.0.0.1:1", "http://127.0.0.1:2", 0, "us-east-1", "spotctl-local", "now")
    monkeypatch.setattr(client, "require", lambda: local)
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    code, out, err = spotctl("validate", str(job), "--local")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "├── storage: s3://spotctl-local/spotctl  (from the local cloud)" in lines
    assert "│   ├── instance_profile: spotctl-trainer  (from the local cloud)" in lines
    assert "│   ├── security_group: null  (default)" in lines
    assert "├── region: us-east-1  (default)" in lines
    assert "spotctl-team" not in out
    spec = App(Settings.from_env(), local=local).load_job(str(job))
    assert spec.compute.security_group is None and spec.storage == "s3://spotctl-local/spotctl"
