"""EC2 event handed to the controller -> next instance requested: how long the serverless controller takes.

    python -m bench.controller_latency [--runs 20] [--quick] [--json PATH]

A moto server in its own process (as AWS is) sits behind the strict local cloud's proxy
(orchestrator.local.strict), which times its own answers. Each run makes a job like
examples/aws-resnet50.yaml with attempt 1 running on a tagged spot instance; EC2 terminates it, and
the controller's Lambda entry (orchestrator.controller.handler.handler, in this process, warm: one
invocation came before, as a deployed function has had many) is handed an SQS batch with one of:

- `event`: EC2's "Instance State-change Notification" (terminated) for that instance: the handler
  describes the instance, finds its job by the spotctl:job tag and runs the job's step;
- `tick`: the schedule's tick (the events were lost): the handler lists the jobs under the root and
  steps every one that is not over (only this one here), then writes controller/tick.json.

Timed, per run: from handing the batch over to botocore sending RunInstances for attempt 2, and the
part of it the proxy spent answering (the API calls: S3 and EC2). spotctl's own time is the rest:
what the controller itself costs. On AWS, add EventBridge's and SQS's delivery to the Lambda (no SLA;
AWS quotes typical end-to-end delivery well under a second for events on the default bus) and a cold
start when the function has been idle. No target asserted: the issue's is median own time < 1 s.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
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
from orchestrator.aws.prices import FixedPrices
from orchestrator.controller import handler as controller
from orchestrator.jobs.record import JobStore
from orchestrator.local.strict import Strictness, StrictProxy
from trainer.job.spec_file import dump_spec, load_spec

PLACEHOLDER = "s3://placeholder/storage"
TICK = {"version": "0", "id": "tick", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}


def terminated(instance_id: str) -> dict:
    return {
        "version": "0",
        "id": f"event-{instance_id}",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "region": "us-east-1",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "resources": [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "state": "terminated"},
    }


def batch(body: dict) -> dict:
    return {"Records": [{"messageId": "m0", "receiptHandle": "h0", "body": json.dumps(body)}]}


class InFlight:
    """The time at least one request is being answered by the proxy: the union of the answers' intervals
    (the controller reads a job's objects in parallel; a sum would count overlaps twice)."""

    def __init__(self, proxy: StrictProxy):
        self.lock, self.open, self.since, self.busy_s = threading.Lock(), 0, 0.0, 0.0
        real = proxy._handle

        def handle(handler):
            with self.lock:
                if self.open == 0:
                    self.since = time.perf_counter()
                self.open += 1
            try:
                real(handler)
            finally:
                with self.lock:
                    self.open -= 1
                    if self.open == 0:
                        self.busy_s += time.perf_counter() - self.since

        proxy._handle = handle

    def now(self) -> float:
        with self.lock:
            return self.busy_s + (time.perf_counter() - self.since if self.open else 0.0)


def measure(
    proxy: StrictProxy, flight: InFlight, root: str, spec_text: str, ami: str, n: int, how: str, sent: list
) -> dict:
    job_id = f"controller-{how}-{n:03d}"
    # A root per run: a tick steps this one job, as it would the one job that needs it among many ended.
    store = JobStore(f"{root}/{job_id}")
    os.environ["SPOTCTL_STORAGE"] = store.root
    spec_text = spec_text.replace(PLACEHOLDER, store.root)
    instance = running_job(store, spec_text, ami, job_id)
    boto3.client("ec2").terminate_instances(InstanceIds=[instance])
    proxy.wait_consistent()
    sent.clear()
    busy_before = flight.now()
    started = time.perf_counter()
    answer = controller.handler(batch(terminated(instance) if how == "event" else TICK), None)
    if not sent or answer != {"batchItemFailures": []}:
        raise RuntimeError(f"run {n} ({how}): no instance requested ({answer})")
    at, busy = sent[0]
    # The proxy's time answering up to that call (an answer counted a moment late makes own time longer).
    wall, api = at - started, busy - busy_before
    return {"wall_s": wall, "api_s": api, "own_s": max(0.0, wall - api)}


def main(argv: list[str] | None = None) -> dict:
    args_parser = parser(__doc__)
    args_parser.add_argument("--runs", type=int, default=20)
    args = args_parser.parse_args(argv)
    runs = 5 if args.quick else args.runs
    quiet_logging()
    logging.getLogger("orchestrator").setLevel(logging.WARNING)  # the handler says what it did at INFO otherwise
    with moto_process_bucket("spotctl-controller-bench") as bucket:
        moto = os.environ["AWS_ENDPOINT_URL"]
        proxy = StrictProxy(moto, Strictness(consistency_s=0.0, throttle=False)).start()
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        try:
            iam = boto3.client("iam")
            iam.create_instance_profile(InstanceProfileName="spotctl-trainer")
            iam.create_service_linked_role(AWSServiceName="spot.amazonaws.com")
            ami = sorted(i["ImageId"] for i in boto3.client("ec2").describe_images(Owners=["amazon"])["Images"])[0]
            spec = load_spec("examples/aws-resnet50.yaml")
            compute = spec.compute.model_copy(
                update={"ami": ami, "instance_profile": "spotctl-trainer", "availability_zones": None}
            )
            spec_text = dump_spec(spec.model_copy(update={"storage": PLACEHOLDER, "compute": compute}))
            flight = InFlight(proxy)
            # The function as deployed: its environment, its prices, one warm container.
            os.environ["SPOTCTL_STORAGE"] = f"{bucket}/warm-up"
            prices = FixedPrices(MARKET, ON_DEMAND)
            controller.prices_for = lambda cloud: prices
            sent: list = []
            controller.cloud_for("us-east-1").client("ec2", retries="once").meta.events.register(
                "before-send.ec2.RunInstances", lambda **_: sent.append((time.perf_counter(), flight.now()))
            )
            controller.handler(batch(TICK), None)  # the warm-up invocation
            figures = {}
            for how in ("event", "tick"):
                results = [measure(proxy, flight, bucket, spec_text, ami, n, how, sent) for n in range(runs)]
                figures[how] = {"runs": runs}
                for key in ("wall_s", "api_s", "own_s"):
                    values = sorted(r[key] for r in results)
                    figures[how][key] = {
                        "median": statistics.median(values),
                        "p90": values[int(0.9 * (len(values) - 1))],
                    }
        finally:
            proxy.stop()
            os.environ["AWS_ENDPOINT_URL"] = moto
    print_table(
        ["trigger", "runs", "wall median s", "wall p90 s", "API median s", "own median s", "own p90 s"],
        [
            [
                how,
                f["runs"],
                f"{f['wall_s']['median']:.3f}",
                f"{f['wall_s']['p90']:.3f}",
                f"{f['api_s']['median']:.3f}",
                f"{f['own_s']['median']:.3f}",
                f"{f['own_s']['p90']:.3f}",
            ]
            for how, f in figures.items()
        ],
    )
    own = figures["event"]["own_s"]["median"]
    print(
        f"RESULT event->RunInstances own time median={own:.3f}s p90={figures['event']['own_s']['p90']:.3f}s "
        f"(wall {figures['event']['wall_s']['median']:.3f}s) target<1.00 {'PASS' if own < 1.0 else 'FAIL'}"
    )
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
