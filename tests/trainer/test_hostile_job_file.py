"""`python -m trainer run --job FILE` on hostile job files: exit code 2 (invalid job file, nothing
started), the problem as one escaped line with its line number, the summary, no traceback, no hang.
The classes of hazard and their cases are in tests/unit/test_spec_hostile.py; these are the
representative ones, through the trainer's own entry point."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testbed import REPO
from testbed.trainer_runs import trainer_env
from trainer.run import EXIT_BAD_SPEC


def laughs() -> str:
    lines = ["name: lol", "storage: ./runs", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


CASES = {
    # name: (file contents, or None for a FIFO; the problem's line as printed, after the file name)
    "billion laughs": (laughs(), ":7: more than 10000 keys and values, aliases expanded (alias *a3 stands for 7381)"),
    "a FIFO": (None, ": is a named pipe (FIFO), not a file; give the path of a job .yaml file"),
    "a terminal escape in a key": (
        'name: x\n"\\e]0;owned\\a": 1\n',
        ":2: '\\x1b]0;owned\\x07' holds the control character \\x1b; keys and values are names, paths and numbers",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_trainer_refuses_a_hostile_job_file_in_one_line(case, tmp_path):
    text, problem = CASES[case]
    job = tmp_path / "job.yaml"
    if text is None:
        os.mkfifo(job)  # opened, it would block the trainer until a writer came
    else:
        job.write_text(text)
    answer = subprocess.run(
        [sys.executable, "-m", "trainer", "run", "--job", str(job)],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
        env={**trainer_env(), "PYTHONPATH": str(REPO)},
    )
    err = answer.stderr.decode()
    assert (answer.returncode, answer.stdout) == (EXIT_BAD_SPEC, b""), err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{job}{problem}"), lines
    assert lines[1] == f"error: {job} is not a valid job spec (1 problem)"
    assert all(line.isprintable() for line in lines)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_bad_job_file_is_refused_before_torch_is_imported(tmp_path):
    """Refusing a file takes the parse, not torch's import (seconds): the entry point loads the job
    file first. Here torch cannot be imported at all, and the answer is still the one line and exit 2."""
    job = tmp_path / "job.yaml"
    job.write_text(laughs())
    block_torch = "import sys; sys.modules['torch'] = None; from trainer.__main__ import main; sys.exit(main())"
    answer = subprocess.run(
        [sys.executable, "-c", block_torch, "run", "--job", str(job)],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
        env={**trainer_env(), "PYTHONPATH": str(REPO)},
    )
    err = answer.stderr.decode()
    assert answer.returncode == EXIT_BAD_SPEC and "Traceback" not in err, err
    assert err.splitlines()[-1] == f"error: {job} is not a valid job spec (1 problem)"


def test_a_loader_bug_is_still_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """The last guard: were the loader to raise something other than SpecError (a bug), the trainer
    still says so in one escaped line and exits 2, starting nothing; no traceback."""
    import trainer.job.spec_file
    from trainer.__main__ import main

    def broken(url):
        raise RuntimeError("a bug\n\x1b[31m")

    monkeypatch.setattr(trainer.job.spec_file, "load_spec", broken)
    assert main(["run", "--job", str(tmp_path / "job.yaml")]) == EXIT_BAD_SPEC
    assert capsys.readouterr().err == f"error: {tmp_path / 'job.yaml'}: unexpected RuntimeError: a bug\\n\\x1b[31m\n"
