"""`spotctl status` over many jobs: one table from 100 jobs' records, heartbeats and EC2 state.

    python -m bench.status_many [--jobs 100] [--quick] [--json PATH]

A moto server (its own process, as AWS is) holds N jobs, each with a record, a heartbeat and a running tagged spot instance.
Timed: the whole `spotctl status --storage URL --json` command in this process (3 runs, median),
beside the same reads done one job at a time. Target: the command answers in under 2 s for 100 jobs.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import time

import boto3

from bench.common import moto_process_bucket, parser, print_table, verdict, write_json
from orchestrator.aws.clients import Cloud
from orchestrator.cli.main import main as spotctl
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.views import read_views
from trainer.job.documents import Attempt, JobRecord


def populate(store: JobStore, count: int) -> list[str]:
    ec2 = boto3.client("ec2")
    ami = sorted(image["ImageId"] for image in ec2.describe_images(Owners=["amazon"])["Images"])[0]
    ids = []
    for n in range(count):
        job_id = f"bench-{n:03d}"
        tags = [{"Key": "spotctl:job", "Value": job_id}, {"Key": "spotctl:attempt", "Value": "1"}]
        instance = ec2.run_instances(
            ImageId=ami,
            InstanceType="g5.xlarge",
            MinCount=1,
            MaxCount=1,
            InstanceMarketOptions={"MarketType": "spot"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]
        record = JobRecord(
            job_id,
            "bench",
            "us-east-1",
            store.root,
            store.url(job_id, "job.yaml"),
            "s3://x/w.whl",
            ami,
            attempts=[
                Attempt(
                    1, "g5.xlarge", "us-east-1a", 0.4, 1.006, "t", instance["InstanceId"], "2026-11-24T10:00:00+00:00"
                )
            ],
        )
        store.write_record(record)
        store.write(
            job_id,
            "status/heartbeat.json",
            json.dumps(
                {
                    "attempt": 1,
                    "phase": "training",
                    "step": n,
                    "total_steps": 1000,
                    "updated_at": "2026-11-24T10:00:00+00:00",
                }
            ).encode(),
        )
        ids.append(job_id)
    return ids


def main(argv: list[str] | None = None) -> dict:
    args_parser = parser(__doc__)
    args_parser.add_argument("--jobs", type=int, default=100)
    args = args_parser.parse_args(argv)
    count = 20 if args.quick else args.jobs
    with moto_process_bucket("spotctl-status-bench") as bucket:
        store = JobStore(f"{bucket}/spotctl")
        populate(store, count)
        command = []
        for _ in range(3):
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert spotctl(["status", "--storage", store.root, "--json"]) == 0
            command.append(time.perf_counter() - started)
            assert len(json.loads(out.getvalue())["jobs"]) == count
        started = time.perf_counter()
        read_views(store, store.job_ids(), Cloud, threads=1)
        one_at_a_time = time.perf_counter() - started
    median = statistics.median(command)
    print(f"\nspotctl status over {count} jobs on a moto server\n")
    print_table(
        ("reads", "seconds"),
        [
            ("spotctl status --json (parallel), median of 3", median),
            ("the same reads one job at a time", one_at_a_time),
        ],
    )
    print(f"\nparallel / one at a time: {median / one_at_a_time:.2f}")
    verdict(median, 2.0, higher_is_better=False, name="seconds")
    figures = {"jobs": count, "status_s": median, "runs_s": command, "one_at_a_time_s": one_at_a_time}
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
