"""Every command the docs tell a person to type parses: the README's bash blocks, the example job
files' headers and scripts/demo.sh. A `spotctl` line goes through click's parsing of each (sub)command
without running it; a `python -m MODULE` line through the module's argparse parser, stopped after
parsing. So a renamed option or a documented flag that does not exist fails here, not for a user."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex

import click
import pytest

from testbed import REPO

# Words that end a command on a line: its output redirected or piped, another command after it.
_ENDS = {">", ">>", "|", "&&", "||", ";", "2>&1"}
# Runnable program names the docs use, with what they are: spotctl, or `python -m MODULE`.
_PYTHONS = {"python", "python3", "$PYTHON", ".venv/bin/python"}
_SPOTCTLS = {"spotctl", "$SPOTCTL", ".venv/bin/spotctl"}


def _readme_commands() -> list[tuple[str, str]]:
    readme = (REPO / "README.md").read_text()
    found = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S):
        found += [("README.md", line) for line in _joined(block)]
    return found


def _example_commands() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#"))
        text = "\n".join(header)
        name = f"examples/{path.name}"
        found += [(name, span) for span in re.findall(r"`([^`]+)`", text)]  # commands named in prose
        found += [(name, line.strip()) for line in header if "`" not in line]  # command lines
    return found


def _demo_commands() -> list[tuple[str, str]]:
    lines = _joined((REPO / "scripts/demo.sh").read_text())
    return [("scripts/demo.sh", line) for line in lines if line.startswith(('"$SPOTCTL"', '"$PYTHON" -m'))]


def _joined(text: str) -> list[str]:
    """The lines of a shell text, continuation lines joined."""
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def command_words(line: str) -> list[str] | None:
    """The words of the one command `line` runs, if it is spotctl or `python -m`; else None. The
    docs' optional parts (`[--bucket NAME]`) count as written."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    for index, word in enumerate(words):
        if word in _ENDS or word.startswith((">", "2>")):
            words = words[:index]
            break
    words = [w.strip("[]") for w in words if w.strip("[]")]
    if words and words[0] in _SPOTCTLS:
        return ["spotctl", *words[1:]]
    if len(words) > 2 and words[0] in _PYTHONS and words[1] == "-m":
        return ["python", "-m", *words[2:]]
    return None


DOCUMENTED = [
    (where, words)
    for where, line in _readme_commands() + _example_commands() + _demo_commands()
    if (words := command_words(line)) is not None
]


class _Parsed(Exception):
    """Raised where a program would start its work: its arguments parsed."""


def parse_spotctl(args: list[str], monkeypatch) -> None:
    """Parse `spotctl ARGS` as click does, down to the last subcommand, with nothing invoked (the
    `--local` option's callback, which would start a local cloud, finds a stand-in)."""
    from orchestrator.cli.context import App
    from orchestrator.cli.main import cli
    from orchestrator.local import client
    from trainer.job.settings import Settings

    monkeypatch.setattr(client, "up", lambda *a, **k: client.Up(None, False, {}, {}))
    monkeypatch.setattr(client, "require", lambda: None)
    command, name, context = cli, "spotctl", None
    while True:  # the group's own callback, which makes the App, is not invoked: it is given
        extra = {"obj": App(Settings.from_env())} if context is None else {}
        context = command.make_context(name, list(args), parent=context, **extra)
        if not isinstance(command, click.Group):
            return
        rest = [*context._protected_args, *context.args]
        assert rest, f"`{name}` needs a subcommand"
        name, command, args = command.resolve_command(context, rest)


def parse_python_module(args: list[str], monkeypatch) -> None:
    """`python -m MODULE ARGS`: the module's argparse parsing, stopped before it runs anything."""
    module, *rest = args
    real = argparse.ArgumentParser.parse_args

    def parse_only(self, argv=None, namespace=None):
        real(self, argv, namespace)  # a wrong argument: SystemExit(2), with argparse's message
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    main = importlib.import_module(module if module != "trainer" else "trainer.__main__").main
    with pytest.raises(_Parsed):
        main(rest)


def test_the_docs_name_commands_to_check():
    places = {where for where, _ in DOCUMENTED}
    assert {"README.md", "examples/quickstart.yaml", "examples/train-here.yaml", "scripts/demo.sh"} <= places
    assert ("examples/quickstart.yaml", ["spotctl", "local", "data", "shapes"]) in DOCUMENTED


@pytest.mark.parametrize(("where", "words"), DOCUMENTED, ids=[f"{w}: {' '.join(c)}" for w, c in DOCUMENTED])
def test_a_documented_command_parses(where, words, monkeypatch, capsys):
    try:
        if words[0] == "spotctl":
            parse_spotctl(words[1:], monkeypatch)
        else:
            parse_python_module(words[2:], monkeypatch)
    except (click.UsageError, SystemExit) as exc:
        message = exc.format_message() if isinstance(exc, click.UsageError) else capsys.readouterr().err
        pytest.fail(f"{where}: `{' '.join(words)}` does not parse: {message}")


def test_a_wrong_command_is_caught(monkeypatch):
    """Bug 6 of issue 16: the quickstart's header documented an option sample_data does not have."""
    with pytest.raises(SystemExit):
        parse_python_module(["trainer.sample_data", "s3://spotctl-local/datasets/shapes", "--local"], monkeypatch)
    with pytest.raises(click.UsageError, match="No such option '--nosuch'"):
        parse_spotctl(["local", "data", "shapes", "--nosuch"], monkeypatch)
    with pytest.raises(click.UsageError, match="No such command"):
        parse_spotctl(["local", "nosuch"], monkeypatch)
