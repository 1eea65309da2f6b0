"""`spotctl`: the entry point. Turns every known error into one clear message and an exit code."""

from __future__ import annotations

import sys

import botocore.exceptions
import click

from orchestrator import __version__
from orchestrator.aws.clients import as_user_error
from orchestrator.cli import (
    artifacts,
    doctor,
    infra,
    launch,
    local,
    logs,
    offers,
    resume,
    rm,
    schema,
    status,
    stop,
    sweep,
    tensorboard,
    validate,
    watch,
)
from orchestrator.cli.context import App
from orchestrator.errors import ExitCode, UserError
from trainer.job.settings import Settings
from trainer.job.shown import printable
from trainer.job.spec_file import SpecError


class InOrder(click.Group):
    """`--help` lists the commands in the order a job meets them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=InOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(__version__, prog_name="spotctl")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fine-tune PyTorch vision models on AWS spot GPUs; an interruption costs minutes, not the run.

    Start with `spotctl validate examples/quickstart.yaml`.
    """
    ctx.obj = App(Settings.from_env())


# A job's life: write its file (schema for the editor), check it and the account, see what it would run on, launch,
# follow, stop or resume, fetch its models; then the one-time AWS setup and the local cloud.
for module in (
    schema,
    validate,
    doctor,
    offers,
    launch,
    watch,
    status,
    logs,
    tensorboard,
    stop,
    resume,
    artifacts,
    rm,
    sweep,
    infra,
    local,
):
    cli.add_command(module.command)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = cli.main(args=args, prog_name="spotctl", standalone_mode=False)
        return result if isinstance(result, int) else ExitCode.OK
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: unknown option, missing file argument...
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return ExitCode.ABORTED
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
        click.echo(printable(f"error: {error.message}"), err=True)  # it may quote a name from a file or a flag
        if error.hint:
            click.echo(printable(f"hint: {error.hint}"), err=True)
        return error.exit_code
    except Exception as exc:
        if debug:
            raise
        click.echo(printable(f"error: unexpected {type(exc).__name__}: {exc}"), err=True)
        click.echo("hint: run again with --debug for the traceback, and report it if it is a bug", err=True)
        return ExitCode.FAILED


DOING = {
    "offers": "listing offers",
    "launch": "launching the job",
    "status": "reading the jobs' status",
    "stop": "stopping the job",
    "logs": "reading the logs",
    "watch": "watching the jobs",
    "resume": "resuming the job",
    "artifacts": "reading the artifacts",
    "rm": "removing the job",
    "infra": "setting up the AWS resources",
}


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
