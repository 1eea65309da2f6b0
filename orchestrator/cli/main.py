"""`spotctl`: the entry point. Turns every known error into one clear message and an exit code."""

from __future__ import annotations

import os
import sys

import botocore.exceptions
import click

from orchestrator import __version__
from orchestrator.cli import artifacts, infra, launch, local, logs, offers, resume, schema, status, stop, validate, watch
from orchestrator.aws import as_user_error
from orchestrator.errors import UserError
from trainer.spec_file import SpecError

EXIT_USAGE = 2  # bad arguments or a bad job spec, as click and most CLIs use it


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(__version__, prog_name="spotctl")
def cli(debug: bool) -> None:
    """Fine-tune PyTorch vision models on AWS spot GPUs; an interruption costs minutes, not the run.

    Start with `spotctl validate examples/quickstart.yaml`.
    """


for module in (validate, schema, offers, launch, status, watch, resume, stop, logs, artifacts, local, infra):
    cli.add_command(module.command)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    saved_environment = dict(os.environ)  # --local points AWS clients at the local cloud for this command only
    try:
        result = cli.main(args=args, prog_name="spotctl", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: unknown option, missing file argument...
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except SpecError as exc:
        if debug:
            raise
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"error: {exc.summary}", err=True)
        return exc.exit_code
    except (UserError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, PermissionError) as exc:
        if debug:
            raise
        error = exc if isinstance(exc, UserError) else cloud_error(exc, args)
        click.echo(f"error: {error.message}", err=True)
        if error.hint:
            click.echo(f"hint: {error.hint}", err=True)
        return error.exit_code
    except Exception as exc:
        if debug:
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: run again with --debug for the traceback, and report it if it is a bug", err=True)
        return 1
    finally:
        if os.environ != saved_environment:
            os.environ.clear()
            os.environ.update(saved_environment)


DOING = {"offers": "listing offers", "launch": "launching the job", "status": "reading the jobs' status", "stop": "stopping the job", "logs": "reading the logs",
         "watch": "watching the jobs", "resume": "resuming the job", "artifacts": "reading the artifacts", "infra": "setting up the AWS resources"}


def cloud_error(exc: Exception, args: list[str]) -> UserError:
    """An AWS error no command handled itself, as one message saying what was being done."""
    command = next((a for a in args if a in DOING), None)
    doing = DOING.get(command, "talking to AWS")
    if isinstance(exc, PermissionError):
        return UserError(f"access denied while {doing}: {exc}", "check the credentials and the bucket policy")
    return as_user_error(exc, doing)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
