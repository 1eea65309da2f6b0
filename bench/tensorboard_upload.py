"""TensorBoard upload bytes: the trainer's closed segments vs `SummaryWriter("s3://...")`.

S3 has no append, so TensorBoard's own S3 filesystem uploads the whole event file again on every
flush: the bytes sent grow with the square of the run's length. The trainer (trainer.tensorboard)
writes locally and uploads each closed segment once. Both write the same scalars of a simulated run to
S3 on a moto server in this process (bench/common.py's moto_bucket):

  direct    SummaryWriter("s3://bench/direct"), flushed every 120 s of simulated time (its default
            flush_secs), closed at the end;
  segments  trainer.tensorboard.EventLog (the trainer's writer, on a simulated clock), its segments
            closed every 300 s (train.tensorboard's default) and at the end, uploaded by Storage.upload.

The run: `--minutes` of training (default 120), a step record every 10 s (loss, acc1, acc5, lr,
images/s, data wait) and a heartbeat every 15 s (GPU and memory figures), an epoch record every 10
minutes. Every PutObject and UploadPart body is counted (a spy on botocore's API call); the final size
is what the listing shows under each prefix. The ratio is uploaded bytes / final size.

Run:    python -m bench.tensorboard_upload [--quick] [--json PATH]   (from the repository root)
Target: segments' uploaded / final <= 1.1
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.common import moto_bucket, parser, print_table, quiet_logging, verdict, write_json

TARGET = 1.1
FLUSH_S, STEP_EVERY_S, HEARTBEAT_EVERY_S, EPOCH_EVERY_S = 120, 10, 15, 600


def body_size(body) -> int:
    if body is None:
        return 0
    if isinstance(body, bytes | bytearray | str):
        return len(body)
    if hasattr(body, "__len__"):
        return len(body)
    here = body.tell()
    end = body.seek(0, os.SEEK_END)
    body.seek(here)
    return end - here


def timeline(minutes: int):
    """(seconds, kind, values) of the simulated run, in time order."""
    events = []
    for t in range(0, minutes * 60 + 1):
        step = t // 2  # a step every 2 s
        if t % STEP_EVERY_S == 0:
            values = {
                "step": step,
                "loss": 1 / (1 + step),
                "acc1": 0.5,
                "acc5": 0.9,
                "lr": 0.01,
                "images_per_sec": 250.0,
                "data_wait_fraction": 0.02,
            }
            events.append((t, "step", values))
        if t % HEARTBEAT_EVERY_S == 0:
            events.append(
                (
                    t,
                    "heartbeat",
                    {
                        "step": step,
                        "gpu_util_pct": 95.0,
                        "gpu_mem_used_gib": 14.2,
                        "gpu_power_w": 250.0,
                        "gpu_mem_peak_gib": 15.0,
                        "mem_rss_peak_gib": 3.1,
                    },
                )
            )
        if t and t % EPOCH_EVERY_S == 0:
            events.append(
                (t, "epoch", {"step": step, "train_loss": 0.5, "val_loss": 0.6, "val_acc1": 0.8, "val_acc5": 0.95})
            )
    return events


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--minutes", type=int, default=120, help="simulated training minutes (default 120)")
    args = options.parse_args()
    if args.quick:
        args.minutes = 20
    quiet_logging()
    import boto3
    import botocore.client

    from trainer.job.spec import TensorBoardSpec
    from trainer.job.storage import Storage
    from trainer.tensorboard import EPOCH_TAGS, STEP_TAGS, TELEMETRY_TAGS, EventLog

    sent = {"direct": [0, 0], "segments": [0, 0]}  # bytes, requests
    counting = ["direct"]
    real_call = botocore.client.BaseClient._make_api_call

    def spy(self, operation, params):
        if operation in ("PutObject", "UploadPart"):
            sent[counting[0]][0] += body_size(params.get("Body"))
            sent[counting[0]][1] += 1
        return real_call(self, operation, params)

    botocore.client.BaseClient._make_api_call = spy
    run = timeline(args.minutes)
    with moto_bucket("bench") as bucket:
        os.environ["S3_ENDPOINT"] = os.environ["AWS_ENDPOINT_URL"]  # TensorBoard's S3 filesystem reads this
        from torch.utils.tensorboard import SummaryWriter

        tags = {"step": STEP_TAGS, "heartbeat": TELEMETRY_TAGS, "epoch": EPOCH_TAGS}
        writer = SummaryWriter(f"{bucket}/direct", flush_secs=10**6, max_queue=10**6)
        last_flush = 0
        for t, kind, values in run:
            for name, tag in tags[kind].items():
                if name in values:
                    writer.add_scalar(tag, float(values[name]), values["step"])
            if t - last_flush >= FLUSH_S:
                writer.flush()
                last_flush = t
        writer.close()

        counting[0] = "segments"
        now = [0.0]
        with tempfile.TemporaryDirectory(prefix="tensorboard-bench-") as local:
            events = EventLog(
                Storage(f"{bucket}/segments"), 1, TensorBoardSpec(), local_dir=Path(local) / "tb", clock=lambda: now[0]
            )
            events.begin(0)
            for t, kind, values in run:
                now[0] = float(t)
                if kind == "heartbeat":
                    events.telemetry(values)
                else:
                    events.record(kind, values)
            assert events.close(), "the last segment did not upload"

        s3 = boto3.client("s3")
        final = {}
        for name in sent:
            listed = s3.list_objects_v2(Bucket="bench", Prefix=f"{name}/").get("Contents", [])
            final[name] = (sum(o["Size"] for o in listed), len(listed))
    botocore.client.BaseClient._make_api_call = real_call

    rows, figures = [], {"minutes": args.minutes}
    for name in ("direct", "segments"):
        uploaded, requests = sent[name]
        size, objects = final[name]
        ratio = uploaded / max(size, 1)
        rows.append([name, requests, objects, size, uploaded, ratio])
        figures[name] = {
            "requests": requests,
            "objects": objects,
            "final_bytes": size,
            "uploaded_bytes": uploaded,
            "ratio": ratio,
        }
    print(f"{args.minutes} simulated minutes of training, the same scalars both ways")
    print_table(["writer", "uploads", "objects", "final bytes", "uploaded bytes", "uploaded / final"], rows)
    print(f"direct / segments uploaded bytes: {sent['direct'][0] / max(sent['segments'][0], 1):.1f}x")
    write_json(args.json, figures)
    verdict(figures["segments"]["ratio"], TARGET, higher_is_better=False)


if __name__ == "__main__":
    main()
