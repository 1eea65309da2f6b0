"""Checkpoint upload: our path to S3 vs boto3's `upload_file`, the same file to the same endpoint.

On a spot notice the final checkpoint must reach S3 within the two minutes' warning, so the upload
must go as fast as the standard tool does. A ~190 MB file of random bytes (a checkpoint does not
compress either) is uploaded to S3 on a moto server in its own process on 127.0.0.1 (as AWS is not in
ours; bench/common.py's moto_process_bucket):

  boto3  boto3.client("s3").upload_file(file, bucket, key): its default TransferConfig (8 MiB parts
         from 8 MiB up, 10 threads);
  ours   trainer.job.storage.Storage(...).upload(file, key, tags=...): what Checkpointer.write does
         with state.pt, tags included, retries and all.

The two alternate, and which goes first alternates too (boto3 then ours, ours then boto3, ...), so
drifts in the machine's load hit both; each object is deleted after its upload to keep moto's memory
flat. Throughput is MB/s (10^6 bytes); the
ratio is ours / boto3 of the median throughputs. Loopback moto is not S3: no TLS, no network, and the
server shares the CPUs with the client, so the absolute figures say little and the ratio is the point.

Run:    python -m bench.checkpoint_upload [--quick] [--json PATH]   (from the repository root)
Target: ours / boto3 >= 0.90
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from bench.common import moto_process_bucket, parser, print_table, quiet_logging, verdict, write_json

TARGET = 0.90


def random_file(path: str, size: int) -> None:
    with open(path, "wb") as handle:
        for start in range(0, size, 1 << 24):
            handle.write(os.urandom(min(1 << 24, size - start)))


def timed(upload) -> float:
    started = time.perf_counter()
    upload()
    return time.perf_counter() - started


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--mb", type=int, default=190, help="file size in MB (default 190)")
    options.add_argument("--repeats", type=int, default=5, help="uploads of each kind, alternating (default 5)")
    args = options.parse_args()
    if args.quick:
        args.mb, args.repeats = 64, 2
    quiet_logging()
    size = args.mb * 10**6

    import boto3

    from trainer.job.storage import Storage

    runs = []
    with moto_process_bucket() as url, tempfile.TemporaryDirectory(prefix="bench-upload-") as spool:
        bucket = url.removeprefix("s3://")
        local = os.path.join(spool, "state.pt")
        random_file(local, size)
        client = boto3.client("s3")
        storage = Storage(url)  # objects at the same keys: <kind>/state.pt
        storage.upload(local, "warm-up/ours.pt")  # both clients connected and their models loaded first
        client.upload_file(local, bucket, "warm-up/boto3.pt")
        upload = {
            "boto3": lambda file: client.upload_file(file, bucket, "boto3/state.pt"),
            "ours": lambda file: storage.upload(file, "ours/state.pt", tags={"spotctl:kind": "checkpoint"}),
        }
        for repeat in range(1, args.repeats + 1):
            times = {}
            for kind in ("boto3", "ours") if repeat % 2 else ("ours", "boto3"):  # neither always goes first
                times[kind] = timed(lambda kind=kind: upload[kind](local))
                client.delete_object(Bucket=bucket, Key=f"{kind}/state.pt")
            plain, ours = times["boto3"], times["ours"]
            runs.append({"repeat": repeat, "boto3_s": plain, "ours_s": ours})
            print(f"repeat {repeat}: boto3 {plain:.2f} s, ours {ours:.2f} s", flush=True)

    mbps = lambda seconds: args.mb / seconds  # noqa: E731
    median = {"boto3_mb_s": statistics.median(mbps(r["boto3_s"]) for r in runs)}
    median["ours_mb_s"] = statistics.median(mbps(r["ours_s"]) for r in runs)
    ratio = median["ours_mb_s"] / median["boto3_mb_s"]
    print()
    print_table(
        ["repeat", "boto3 s", "ours s", "boto3 MB/s", "ours MB/s", "ours/boto3"],
        [
            [r["repeat"], r["boto3_s"], r["ours_s"], mbps(r["boto3_s"]), mbps(r["ours_s"]), r["boto3_s"] / r["ours_s"]]
            for r in runs
        ],
    )
    print(f"\n{args.mb} MB to moto on 127.0.0.1 (its own process; loopback, no TLS)")
    print(f"median: boto3 upload_file {median['boto3_mb_s']:.1f} MB/s, ours {median['ours_mb_s']:.1f} MB/s")
    passed = verdict(ratio, TARGET, higher_is_better=True)
    config = {"mb": args.mb, "repeats": args.repeats, "quick": args.quick, "storage": "s3 (moto, own process)"}
    write_json(
        args.json,
        {
            "benchmark": "checkpoint_upload",
            "config": config,
            "runs": runs,
            "median": median,
            "ratio": ratio,
            "target": TARGET,
            "pass": passed,
        },
    )


if __name__ == "__main__":
    main()
