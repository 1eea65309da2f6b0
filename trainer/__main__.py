"""`python -m trainer run --job URL`: train a job (or continue it from its latest checkpoint).
`python -m trainer export --job URL [--formats onnx int8]`: export its best checkpoint again, no training.

Exit codes are documented in trainer/run.py: 0 succeeded, 1 failed, 2 invalid job file, 3 stopped on
request, 75 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import argparse
import sys

from trainer.job.spec import EXPORT_FORMATS as FORMATS
from trainer.job.spec_file import EXIT_BAD_SPEC, load_or_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description="spotctl's resumable trainer (the data plane)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train a job, resuming from its latest checkpoint if it has one")
    run.add_argument(
        "--job", required=True, metavar="URL", help="the job file: a local path or s3://bucket/.../job.yaml"
    )
    run.add_argument("--job-id", help="job id (default: from a .../jobs/<id>/job.yaml URL, else the job's name)")
    run.add_argument("--attempt", type=int, help="attempt number (default: SPOTCTL_ATTEMPT, else the next free one)")
    export = commands.add_parser(
        "export", help="export the job's best checkpoint (else its latest) again, without training"
    )
    export.add_argument(
        "--job", required=True, metavar="URL", help="the job file: a local path or s3://bucket/.../job.yaml"
    )
    export.add_argument("--job-id", help="job id (default: from a .../jobs/<id>/job.yaml URL, else the job's name)")
    export.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        metavar="FORMAT",
        help=f"formats to export (default: the job's train.export.formats); any of {', '.join(FORMATS)}",
    )
    args = parser.parse_args(argv)

    # The job file first, before torch is imported (seconds): a bad file is refused at once.
    spec = load_or_report(args.job)
    if spec is None:
        return EXIT_BAD_SPEC
    if args.command == "export":
        from trainer.reexport import export_job

        formats = list(dict.fromkeys(args.formats)) if args.formats else None
        return export_job(args.job, job_id=args.job_id, formats=formats, spec=spec)
    from trainer.run import run as run_job

    return run_job(args.job, job_id=args.job_id, attempt=args.attempt, spec=spec)


if __name__ == "__main__":
    sys.exit(main())
