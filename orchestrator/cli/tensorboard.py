"""`spotctl tensorboard JOB [JOB...]`: sync the jobs' TensorBoard events to this machine and start
TensorBoard on them, syncing new segments while it runs (`--sync-only`: sync once and exit)."""

from __future__ import annotations

import json
import subprocess
import time
import webbrowser
from pathlib import Path

import click

from orchestrator.cli import options
from orchestrator.cli.context import App
from orchestrator.jobs.tensorboard import Synced, folder_of, require_tensorboard, sync, viewer_command
from trainer.job.shown import printable


@click.command("tensorboard")
@click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
@click.option("--port", type=click.IntRange(1, 65535), default=6006, show_default=True, help="TensorBoard's port.")
@click.option("--no-open", is_flag=True, help="Do not open a browser.")
@click.option("--sync-only", is_flag=True, help="Sync the events once and exit (no TensorBoard).")
@click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local folder of the synced events, a subfolder per job (default: $SPOTCTL_CACHE_DIR/tensorboard).",
)
@click.option(
    "--interval",
    type=click.FloatRange(1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds between syncs while TensorBoard runs.",
)
@options.storage_option
@options.local_option
@options.profile_option
@options.json_option
@click.pass_obj
def command(
    app: App,
    job_ids: tuple[str, ...],
    port: int,
    no_open: bool,
    sync_only: bool,
    root: Path | None,
    interval: float,
    storage: str | None,
    profile: str | None,
    as_json: bool,
) -> int:
    """Show the TensorBoard events of one or more jobs (their ids or unique prefixes)."""
    if not sync_only:
        require_tensorboard()  # before anything is fetched
    root = root or app.settings.cache_dir / "tensorboard"
    jobs = {}
    for given in dict.fromkeys(job_ids):
        context, job_id = app.locate(given, storage, profile)
        jobs[job_id] = context.store

    def sync_all() -> list[Synced]:
        return [sync(store, job_id, folder_of(root, job_id)) for job_id, store in jobs.items()]

    done = sync_all()
    if as_json:
        click.echo(json.dumps([_as_dict(s) for s in done], indent=2))
    else:
        for synced in done:
            click.echo(_line(synced))
    if sync_only:
        return 0
    viewer = subprocess.Popen(viewer_command({job_id: folder_of(root, job_id) for job_id in jobs}, port))
    url = f"http://localhost:{port}/"
    click.echo(f"TensorBoard at {url} (new segments synced every {interval:g} s; Ctrl-C ends it)", err=True)
    if not no_open:
        webbrowser.open(url)
    try:
        while viewer.poll() is None:
            time.sleep(interval)
            for synced in sync_all():
                if synced.new:
                    click.echo(_line(synced), err=True)
    except KeyboardInterrupt:
        pass
    finally:
        if viewer.poll() is None:
            viewer.terminate()
            viewer.wait(timeout=10)
    return 0


def _line(synced: Synced) -> str:
    job = printable(synced.job_id)
    if not synced.segments:
        return (
            f"{job}: no TensorBoard events yet (the trainer uploads a segment every train.tensorboard.segment_seconds)"
        )
    return f"{job}: {synced.new} new segment{'' if synced.new == 1 else 's'} ({synced.new_bytes:,} bytes), {synced.segments} in {synced.folder}"


def _as_dict(synced: Synced) -> dict:
    return {
        "job": synced.job_id,
        "folder": str(synced.folder),
        "new": synced.new,
        "new_bytes": synced.new_bytes,
        "segments": synced.segments,
    }
