"""`spotctl artifacts JOB`: the job's exported models (format, size, sha256), `--download DIR` to fetch
them with every sha256 verified, `--json` for the manifest itself."""

from __future__ import annotations

import json
from pathlib import Path

import click

from orchestrator.cli import options, render
from orchestrator.cli.context import App
from orchestrator.jobs.artifacts import describe, download, manifest_of


@click.command("artifacts")
@click.argument("job_id", metavar="JOB")
@click.option(
    "--download",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="Fetch every artifact into this folder, verifying each sha256.",
)
@options.storage_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(app: App, job_id: str, folder: Path | None, storage: str | None, profile: str | None, as_json: bool) -> int:
    """List JOB's exported artifacts, or download and verify them."""
    context, job_id = app.locate(job_id, storage, profile)  # "no job" when there is none, as status says
    store = context.store
    if folder is not None:
        fetched = download(store, job_id, folder)
        if as_json:
            click.echo(
                json.dumps(
                    [{"name": f.name, "path": str(f.path), "size": f.size, "sha256": f.sha256} for f in fetched],
                    indent=2,
                )
            )
        else:
            for f in fetched:
                click.echo(f"{f.path}  {_size(f.size)}  sha256 {f.sha256[:16]}... verified")
        return 0
    manifest = manifest_of(store, job_id)
    if as_json:
        click.echo(json.dumps(manifest.written(), indent=2))
        return 0
    rows = [
        [name, entry.format, _size(entry.size), entry.sha256[:16]] for name, entry in sorted(manifest.files.items())
    ]
    out = render.console()
    out.print(
        f"artifacts of {job_id} (from step {manifest.checkpoint_step}, {manifest.source})", markup=False
    )  # wider than the table
    out.print(render.table(["file", "format", "size", "sha256"], rows))
    for name, result in manifest.formats.items():
        out.print(describe(name, result), markup=False)
    return 0


def _size(size: int) -> str:
    if size >= 2**20:
        return f"{size / 2**20:.1f} MiB"
    return f"{size / 2**10:.1f} KiB" if size >= 2**10 else f"{size} B"
