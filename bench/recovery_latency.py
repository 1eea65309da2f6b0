"""Interruption detected -> next instance requested: how long `spotctl watch` takes to act.

    python -m bench.recovery_latency [--runs 20] [--quick] [--json PATH]

A moto server in its own process (as AWS is) holds a job like examples/aws-resnet50.yaml with
attempt 1 running on a tagged spot instance. Each run makes a fresh job, then one of two things
happens just before a watcher poll begins:

- `ec2`: EC2 terminates the instance (no notice seen by anyone): the poll must notice it's gone;
- `notice`: the trainer wrote its `interrupted` heartbeat after checkpointing on the spot notice
  (the instance still runs, as it does for up to two minutes on AWS).

Timed, per run: from the start of that poll to the moment botocore sends RunInstances for attempt 2
(read job state, EC2 view, settle the record, rank offers, claim the attempt by a conditional write,
AMI, subnet, security group). The median over the runs is the figure; with a poll interval P the
wait for the poll adds P/2 on average (P=10 s by default). No target: a figure for the note, beside
the 15 s to 2 min other tools take to notice a lost machine.
"""

from __future__ import annotations

import json
import statistics
import time

import boto3

from bench.common import (
    MARKET,
    ON_DEMAND,
    moto_process_bucket,
    parser,
    print_table,
    quiet_logging,
    running_job,
    write_json,
)
from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import FixedPrices
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.watch import Watcher, WatchOptions
from trainer.job.spec_file import dump_spec, load_spec


def measure(store: JobStore, spec_text: str, ami: str, n: int, how: str) -> float:
    job_id = f"bench-{n:03d}"
    instance = running_job(store, spec_text, ami, job_id)
    sent = []
    made = {}

    def cloud_for(region):
        if region not in made:
            made[region] = Cloud(region)
            made[region].client("ec2", retries="once").meta.events.register(  # the client RunInstances goes through
                "before-send.ec2.RunInstances", lambda **_: sent.append(time.perf_counter())
            )
        return made[region]

    watcher = Watcher(
        store,
        [job_id],
        cloud_for,
        lambda cloud: FixedPrices(MARKET, ON_DEMAND),
        WatchOptions(),
        on_event=lambda event: None,
    )
    watcher.poll()  # a first poll, as a running watcher has done many: caches warm
    if how == "ec2":
        boto3.client("ec2").terminate_instances(InstanceIds=[instance])
    else:
        store.write(
            job_id,
            "status/heartbeat.json",
            json.dumps(
                {
                    "attempt": 1,
                    "phase": "interrupted",
                    "step": 100,
                    "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                }
            ).encode(),
        )
    started = time.perf_counter()
    watcher.poll()
    if not sent:
        raise RuntimeError(f"run {n} ({how}): the poll requested no instance")
    return sent[0] - started


def main(argv: list[str] | None = None) -> dict:
    args_parser = parser(__doc__)
    args_parser.add_argument("--runs", type=int, default=20)
    args = args_parser.parse_args(argv)
    runs = 5 if args.quick else args.runs
    quiet_logging()
    with moto_process_bucket("spotctl-recovery-bench") as bucket:
        iam = boto3.client("iam")
        iam.create_instance_profile(InstanceProfileName="spotctl-trainer")
        ami = sorted(image["ImageId"] for image in boto3.client("ec2").describe_images(Owners=["amazon"])["Images"])[0]
        store = JobStore(f"{bucket}/spotctl")
        spec = load_spec("examples/aws-resnet50.yaml")
        spec = spec.model_copy(update={"storage": store.root, "compute": spec.compute.model_copy(update={"ami": ami})})
        spec_text = dump_spec(spec)
        figures = {}
        for how in ("ec2", "notice"):
            times = [measure(store, spec_text, ami, n + (0 if how == "ec2" else 500), how) for n in range(runs)]
            figures[how] = {
                "median_s": statistics.median(times),
                "p90_s": sorted(times)[int(0.9 * (len(times) - 1))],
                "min_s": min(times),
                "max_s": max(times),
                "runs": runs,
            }
    print_table(
        ["trigger", "runs", "median s", "p90 s", "min s", "max s"],
        [
            [how, f["runs"], f"{f['median_s']:.3f}", f"{f['p90_s']:.3f}", f"{f['min_s']:.3f}", f"{f['max_s']:.3f}"]
            for how, f in figures.items()
        ],
    )
    print(
        f"RESULT detected->requested median={figures['ec2']['median_s']:.3f}s (EC2 termination), {figures['notice']['median_s']:.3f}s (trainer's notice); "
        f"add P/2 on average for a poll interval P"
    )
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
