"""Interruption seen -> the next RunInstances EC2 accepts, with 3 refused pools in front of it.

    python -m bench.failover_refused_pools [--runs 5] [--quick] [--json PATH]

A moto server in its own process sits behind the strict local cloud's proxy (orchestrator.local.strict),
which answers as EC2 does where moto never refuses: the three cheapest pools after the interrupted one
say InsufficientInstanceCapacity with HTTP 500, the fourth grants. A job like examples/aws-resnet50.yaml
has attempt 1 running; EC2 takes the machine just before a watcher poll.

Timed, per run, from the start of that poll to the accepted RunInstances' answer, two ways side by side:

- `before`: RunInstances through a botocore client in `standard` retry mode, 5 attempts (what spotctl
  used for every call until it had a client of its own for it): each 500 is retried 4 times with
  jittered backoff before the launcher sees it;
- `after`: spotctl as it is: one attempt per pool, the next offer at once.

Printed: wall time, RunInstances calls, the time the proxy spent answering (the API calls) and the
rest, spotctl's own time (wall - API; backoff sleeps count as spotctl's). Target: own time under 1 s
after the fix; the ratio before/after of the wall time is the headline.
"""

from __future__ import annotations

import statistics
import time

import boto3

from bench.common import ON_DEMAND, moto_process_bucket, parser, print_table, quiet_logging, running_job, write_json
from orchestrator.aws.clients import Cloud
from orchestrator.aws.prices import FixedPrices
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.watch import Watcher, WatchOptions
from orchestrator.local.strict import Strictness, StrictProxy
from trainer.job.spec_file import dump_spec, load_spec

MARKET = {
    ("g4dn.xlarge", "us-east-1a"): 0.21,  # attempt 1 runs here
    ("g4dn.xlarge", "us-east-1b"): 0.24,  # refused
    ("g6.xlarge", "us-east-1a"): 0.33,  # refused
    ("g5.xlarge", "us-east-1b"): 0.38,  # refused
    ("g5.xlarge", "us-east-1c"): 0.41,  # granted
}
REFUSED = ["g4dn.xlarge/us-east-1b", "g6.xlarge/us-east-1a", "g5.xlarge/us-east-1b"]


class OldRetries(Cloud):
    """A Cloud whose RunInstances client retries like any other (botocore standard mode, 5 attempts)."""

    def client(self, service, region=None, retries="standard"):
        return super().client(service, region, "standard" if retries == "once" else retries)


def measure(proxy: StrictProxy, store: JobStore, spec_text: str, ami: str, n: int, how: str) -> dict:
    job_id = f"failover-{n:03d}"
    instance = running_job(store, spec_text, ami, job_id)
    made, accepted = {}, []

    def cloud_for(region):
        if region not in made:
            made[region] = (OldRetries if how == "before" else Cloud)(region, max_attempts=5)  # botocore's default
            made[region].client("ec2", retries="once").meta.events.register(
                "after-call.ec2.RunInstances", lambda **_: accepted.append((time.perf_counter(), proxy.busy_s))
            )
        return made[region]

    prices = FixedPrices(MARKET, ON_DEMAND)
    watcher = Watcher(store, [job_id], cloud_for, lambda cloud: prices, WatchOptions(), on_event=lambda e: None)
    watcher.poll()  # a running watcher has polled many times: caches warm
    proxy.wait_consistent()
    boto3.client("ec2").terminate_instances(InstanceIds=[instance])
    calls_before, busy_before = dict(proxy.calls), proxy.busy_s
    started = time.perf_counter()
    watcher.poll()
    if not accepted:
        raise RuntimeError(f"run {n} ({how}): no RunInstances was accepted")
    at, busy = accepted[0]
    wall = at - started
    runs = {k: v - calls_before.get(k, 0) for k, v in proxy.calls.items() if k.startswith("ec2:RunInstances:")}
    # The proxy's time answering up to the accepted call (its own answer may be counted a moment late,
    # which only makes spotctl's own time look longer).
    api = busy - busy_before
    return {"wall_s": wall, "calls": sum(runs.values()), "api_s": api, "own_s": max(0.0, wall - api)}


def main(argv: list[str] | None = None) -> dict:
    args_parser = parser(__doc__)
    args_parser.add_argument("--runs", type=int, default=5)
    args = args_parser.parse_args(argv)
    runs = 2 if args.quick else args.runs
    quiet_logging()
    with moto_process_bucket("spotctl-failover-bench") as bucket:
        import os

        moto = os.environ["AWS_ENDPOINT_URL"]
        proxy = StrictProxy(moto, Strictness(refused_pools=REFUSED, consistency_s=0.0, throttle=False)).start()
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        try:
            iam = boto3.client("iam")
            iam.create_instance_profile(InstanceProfileName="spotctl-trainer")
            iam.create_service_linked_role(AWSServiceName="spot.amazonaws.com")
            ami = sorted(i["ImageId"] for i in boto3.client("ec2").describe_images(Owners=["amazon"])["Images"])[0]
            store = JobStore(f"{bucket}/spotctl")
            spec = load_spec("examples/aws-resnet50.yaml")
            compute = spec.compute.model_copy(
                update={"ami": ami, "instance_profile": "spotctl-trainer", "availability_zones": None}
            )
            spec_text = dump_spec(spec.model_copy(update={"storage": store.root, "compute": compute}))
            figures = {}
            for how in ("after", "before"):
                results = [
                    measure(proxy, store, spec_text, ami, n + (500 if how == "before" else 0), how) for n in range(runs)
                ]
                figures[how] = {key: statistics.median(r[key] for r in results) for key in results[0]} | {"runs": runs}
        finally:
            proxy.stop()
            os.environ["AWS_ENDPOINT_URL"] = moto
    print_table(
        ["spotctl", "runs", "RunInstances calls", "wall s", "API s", "own s"],
        [[how, f["runs"], f["calls"], f["wall_s"], f["api_s"], f["own_s"]] for how, f in figures.items()],
    )
    ratio = figures["before"]["wall_s"] / figures["after"]["wall_s"]
    own = figures["after"]["own_s"]
    print(
        f"RESULT before/after wall={ratio:.1f}x, calls {figures['before']['calls']:.0f} -> {figures['after']['calls']:.0f}; "
        f"own time after={own:.3f}s target<1.00 {'PASS' if own < 1.0 else 'FAIL'}"
    )
    write_json(args.json, figures | {"before_over_after_wall": ratio})
    return figures


if __name__ == "__main__":
    main()
