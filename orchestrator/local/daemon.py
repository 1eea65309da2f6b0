"""The local cloud's process (`spotctl local up` starts it in the background):

    python -m orchestrator.local.daemon --home DIR [--seed N] [--interrupt-rate R] [--notice S] [--interrupt-at-step N]
                                       [--strictness JSON | --lenient]
                                       [--no-controller] [--no-events] [--tick S] [--controller-handler MODULE:NAME]
                                       [--controller-events MODULE] [--visibility-timeout S] [--max-receives N]

It runs a moto server on 127.0.0.1 (EC2, SSM, IAM, S3) behind the strict proxy (orchestrator.local.strict:
AWS's answers where moto's are kinder; `--lenient` leaves it out), seeds it with what a spotctl account
has (the Deep Learning AMI parameter, the `spotctl-local` bucket, the `spotctl-trainer` instance
profile with its trainer role, the Spot service-linked role), runs the instance runner, deploys the
controller as the stack does on AWS (unless --no-controller: EC2's events and the schedule's tick to
an SQS queue, orchestrator.local.eventbus; the function runner calling the handler,
orchestrator.local.functions; its log in DIR/controller.log), and answers a small control API on
127.0.0.1:

    GET  /status                          the cloud, its settings and its running machines
    GET  /contents                        what its bucket holds (orchestrator.local.bucket.Contents)
    POST /interrupt {"instance_id", "notice_s"}   a spot interruption
    POST /crash {"instance_id", "signal"}   a signal (a name: KILL, SEGV...) to the instance's trainer alone
    POST /config {"interrupt_at_step", "interrupt_rate", "notice_s", "events", "tick_s"}   change the
                                          interruptions to come, EC2 events' delivery, the schedule
    POST /shutdown {"keep": bool}         stop everything it started (keep: the bucket's objects to
                                          DIR/kept/, which the next start puts back), then exit

Its address, pid and seed go to DIR/local.json once it is ready (after a kept bucket is restored); the
file is removed at exit.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.local import eventbus, functions

REGION = "us-east-1"
BUCKET = "spotctl-local"
INSTANCE_PROFILE = "spotctl-trainer"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}  # moto accepts any; not secrets
STATE_FILE = "local.json"
CONTROLLER_LOG = "controller.log"
LOCAL_MAX_ATTEMPTS = 3  # botocore's attempts per call: a local endpoint that fails is not busy, it is down
STORAGE_PREFIX = "spotctl"  # the local storage root is s3://BUCKET/STORAGE_PREFIX
DATASETS = "datasets"  # s3://BUCKET/DATASETS/<name>: the sample datasets (orchestrator.local.datasets)
# The user's own AWS set-up, which must not reach the local cloud's processes (a profile named in the
# shell would win over the local credentials, or name one that does not exist).
USER_AWS_SETTINGS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client_environment(endpoint: str) -> dict[str, str]:
    """What an AWS client (boto3, s3fs, the AWS CLI) needs to use the local cloud, and only it."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        **CREDENTIALS,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": str(LOCAL_MAX_ATTEMPTS),
    }


def seed_trainer_role(iam) -> None:
    """The instance profile with a trainer role in it that grants what the stack's does
    (infra/spotctl.yaml): read under the storage prefix, write only the trainer's own objects, and
    read the sample datasets, as a stack deployed with `--data-read s3://BUCKET/DATASETS/`. The
    instances use the local credentials, not the role, but `spotctl doctor --local` reads its reach
    as on AWS, and a profile without a role is a problem there."""
    from orchestrator.aws.infra import DEFAULT_PREFIX, data_arns, trainer_denied_arns, trainer_write_arns

    bucket = f"arn:aws:s3:::{BUCKET}"
    trust = {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    grants = [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket}/{DEFAULT_PREFIX}/*"},
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": [DEFAULT_PREFIX, f"{DEFAULT_PREFIX}/*"]}},
        },
        {
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:DeleteObject"],
            "Resource": trainer_write_arns(bucket, DEFAULT_PREFIX),
        },
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": data_arns(f"s3://{BUCKET}/{DATASETS}/"),
        },
        {"Effect": "Deny", "Action": "s3:*", "Resource": trainer_denied_arns(bucket, DEFAULT_PREFIX)},
    ]
    iam.create_role(
        RoleName=INSTANCE_PROFILE,
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
    )
    iam.put_role_policy(
        RoleName=INSTANCE_PROFILE,
        PolicyName="spotctl-storage",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": grants}),
    )
    iam.create_instance_profile(InstanceProfileName=INSTANCE_PROFILE)
    iam.add_role_to_instance_profile(InstanceProfileName=INSTANCE_PROFILE, RoleName=INSTANCE_PROFILE)


def serve(
    home: Path,
    seed: int,
    interrupt_rate: float,
    notice_s: float,
    interrupt_at_step: int | None = None,
    strictness: dict | None = None,
    controller: ControllerSettings | None = None,
) -> None:
    """`strictness`: None for moto as it is (lenient), else the strict proxy's settings to change
    (orchestrator.local.strict.Strictness; {} for its defaults). `controller`: None for none."""
    import boto3
    from moto.server import ThreadedMotoServer

    from orchestrator.aws.clients import Cloud, Endpoint
    from orchestrator.aws.infra import ensure_spot_service_linked_role
    from orchestrator.local import bucket
    from orchestrator.local.aws import route_default_vpc_to_the_internet, seed_deep_learning_ami
    from orchestrator.local.runner import InstanceRunner
    from orchestrator.local.strict import Strictness, StrictProxy

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint, proxy = f"http://127.0.0.1:{port}", None
    moto_endpoint = endpoint  # the bucket is copied past the proxy: none of its rules applies to that
    if strictness is not None:  # every client, the instances' included, meets AWS's answers
        settings = Strictness()
        settings.update(strictness)
        proxy = StrictProxy(endpoint, settings).start()
        endpoint = proxy.endpoint
    os.environ.update(client_environment(endpoint))
    for name in USER_AWS_SETTINGS:
        os.environ.pop(name, None)
    ec2 = boto3.client("ec2")
    ami = seed_deep_learning_ami(ec2, REGION)
    route_default_vpc_to_the_internet(ec2)  # as in AWS: instances without a public IP are then refused
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    moto_s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    restored = bucket.restore(moto_s3, BUCKET, home / bucket.KEPT)  # what `local down --keep` kept
    seed_trainer_role(boto3.client("iam"))
    ensure_spot_service_linked_role(
        Cloud(REGION, endpoint=Endpoint(endpoint, *CREDENTIALS.values()))
    )  # as `infra deploy` does
    deployed = (
        deploy_controller(home, controller, moto_endpoint, seed)
        if controller
        else Controller(None, None, "--no-controller")
    )
    runner = InstanceRunner(
        ec2,
        REGION,
        home,
        client_environment(endpoint),
        interrupt_rate_per_hour=interrupt_rate,
        notice_s=notice_s,
        seed=seed,
        interrupt_at_step=interrupt_at_step,
        s3=boto3.client("s3"),
        events=deployed.bus,
    ).start()
    finished = threading.Event()
    keep = threading.Event()  # /shutdown {"keep": true}: the bucket is copied out once the machines stopped
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    class Control(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, code: int, document: dict) -> None:
            body = json.dumps(document).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/contents":
                return self._reply(200, bucket.contents(moto_s3, BUCKET, STORAGE_PREFIX).as_dict())
            if self.path != "/status":
                return self._reply(404, {"error": f"no {self.path}"})
            self._reply(
                200,
                {
                    "endpoint": endpoint,
                    "pid": os.getpid(),
                    "seed": seed,
                    "started_at": started_at,
                    "region": REGION,
                    "bucket": BUCKET,
                    "ami": ami,
                    "strict": proxy is not None,
                    "strictness_changed": _changed(proxy.strictness) if proxy else {},
                    "interruptions": interruptions(),
                    "restored_objects": restored,
                    "machines": runner.snapshot(),
                    "controller": deployed.snapshot(),
                },
            )

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/interrupt":
                try:
                    machine = runner.interrupt(request["instance_id"], float(request.get("notice_s", notice_s)))
                except KeyError:
                    return self._reply(404, {"error": f"no running local instance {request.get('instance_id')}"})
                return self._reply(200, machine.as_dict())
            if self.path == "/crash":
                try:
                    sig = signal.Signals[f"SIG{str(request.get('signal', 'KILL')).upper().removeprefix('SIG')}"]
                except KeyError:
                    return self._reply(400, {"error": f"no signal {request.get('signal')!r}"})
                try:
                    machine, pid = runner.crash(request["instance_id"], sig)
                except KeyError:
                    return self._reply(404, {"error": f"no running local instance {request.get('instance_id')}"})
                except LookupError as exc:
                    return self._reply(409, {"error": str(exc)})
                return self._reply(200, {**machine.as_dict(), "signal": sig.name, "trainer_pid": pid})
            if self.path == "/config":  # `spotctl local up` on a running cloud: the new schedule applies
                if "interrupt_at_step" in request:
                    runner.interrupt_at_step = request["interrupt_at_step"] or None
                if "interrupt_rate" in request:
                    runner.interrupt_rate_per_hour = float(request["interrupt_rate"])
                if "notice_s" in request:
                    runner.notice_s = float(request["notice_s"])
                if deployed.bus is not None and "events" in request:
                    deployed.bus.deliver = bool(request["events"])
                if deployed.bus is not None and request.get("tick_s"):
                    deployed.bus.tick_s = float(request["tick_s"])  # from the next tick on
                return self._reply(200, {**interruptions(), **deployed.settings()})
            if self.path == "/shutdown":
                self._reply(200, {"stopping": True, "keep": bool(request.get("keep"))})
                if request.get("keep"):
                    keep.set()
                finished.set()
                return None
            return self._reply(404, {"error": f"no {self.path}"})

    def interruptions() -> dict:
        return {
            "interrupt_at_step": runner.interrupt_at_step,
            "interrupt_rate": runner.interrupt_rate_per_hour,
            "notice_s": runner.notice_s,
        }

    control = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Control)
    threading.Thread(target=control.serve_forever, name="control", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: finished.set())
    signal.signal(signal.SIGINT, lambda *_: finished.set())
    state = home / STATE_FILE
    temporary = home / f".{STATE_FILE}.tmp"
    temporary.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "endpoint": endpoint,
                "control": f"http://127.0.0.1:{control.server_address[1]}",
                "seed": seed,
                "region": REGION,
                "bucket": BUCKET,
                "started_at": started_at,
            },
            indent=1,
        )
    )
    os.replace(temporary, state)
    logging.info("local cloud up: %s (control %s), seed %d", endpoint, control.server_address, seed)
    try:
        finished.wait()
    finally:
        deployed.stop()
        runner.stop()
        if keep.is_set():  # after the machines stopped: nothing writes to the bucket any more
            kept = bucket.save(moto_s3, BUCKET, home / bucket.KEPT, {"seed": seed})
            logging.info("kept %d objects of the bucket in %s", kept, home / bucket.KEPT)
        control.shutdown()
        control.server_close()
        if proxy is not None:
            proxy.stop()
        moto.stop()
        state.unlink(missing_ok=True)
        logging.info("local cloud down")


@dataclass
class ControllerSettings:
    """How the local cloud deploys the controller (`spotctl local up`'s options, the daemon's flags)."""

    handler: str = functions.DEFAULT_HANDLER  # module:function, Lambda's entry point
    events_module: str = eventbus.DEFAULT_EVENTS_MODULE  # EVENT_PATTERNS, SCHEDULE_EXPRESSION, TICK_DETAIL_TYPE
    events: bool = True  # deliver EC2's events (False: lost, as best-effort events may be; the tick still runs)
    tick_s: float = eventbus.DEFAULT_TICK_S  # seconds between the schedule's ticks (the stack's rate(1 minute))
    visibility_s: float = eventbus.DEFAULT_VISIBILITY_S  # a failed message comes again after this long
    max_receives: int = eventbus.DEFAULT_MAX_RECEIVES  # deliveries of a message before the dead-letter queue


@dataclass
class Controller:
    """The deployed controller: its bus (EC2's events, the schedule) and its function runner, or
    neither and why not."""

    bus: object | None
    functions: object | None
    why_not: str | None = None

    def snapshot(self) -> dict:
        if self.bus is None:
            return {"deployed": False, "why_not": self.why_not}
        return {
            "deployed": True,
            **self.bus.snapshot(),
            **self.functions.snapshot(),
            "dead_letters": _quietly(self.bus.dead_letters),
        }

    def settings(self) -> dict:
        return {"events": self.bus.deliver, "tick_s": self.bus.tick_s} if self.bus else {}

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.stop()
            self.functions.stop()


def _quietly(read):
    try:
        return read()
    except Exception:
        return None


def deploy_controller(home: Path, settings: ControllerSettings, moto_endpoint: str, seed: int = 0) -> Controller:
    """The controller as the stack deploys it on AWS: rules feeding a queue, a function consuming it.
    Its parts that play AWS (the events' source, the queue's consumer) talk to moto itself; the
    handler runs in this process, whose environment is the function's: SPOTCTL_STORAGE and the
    endpoint of the strict proxy; it prices with the market of `seed`, as `spotctl --local` does (a
    handler module's `price_with`, if it has one). A handler or events module that cannot be imported
    deploys nothing (`local status` says why)."""
    import boto3

    try:
        module = eventbus.load_events_module(settings.events_module)
        handler = functions.load_handler(settings.handler)
    except (ImportError, AttributeError) as exc:
        logging.warning("controller not deployed: %s", exc)
        return Controller(None, None, f"{type(exc).__name__}: {exc}")
    price_with = getattr(sys.modules.get(handler.__module__), "price_with", None)
    if price_with is not None:  # moto's spot price history is not the local market's
        from orchestrator.local.market import SimulatedMarket

        price_with(lambda cloud: SimulatedMarket(seed))
    function_environment = {"SPOTCTL_STORAGE": f"s3://{BUCKET}/{STORAGE_PREFIX}"}  # what the stack's function is given
    os.environ.update(function_environment)  # written for the handler; it reads it through Settings
    to_file = logging.FileHandler(home / CONTROLLER_LOG)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("orchestrator.controller", "orchestrator.local.functions", "orchestrator.local.eventbus"):
        logging.getLogger(name).addHandler(to_file)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint)
    bus = eventbus.EventBus(
        boto3.client("events", endpoint_url=moto_endpoint),
        sqs,
        boto3.client("sts", endpoint_url=moto_endpoint),
        REGION,
        module,
        tick_s=settings.tick_s,
        deliver=settings.events,
        visibility_s=settings.visibility_s,
        max_receives=settings.max_receives,
    ).deploy()
    runner = functions.FunctionRunner(sqs, bus.queue_url, bus.queue_arn, REGION, bus.account, handler, settings.handler)
    logging.info("controller deployed: %s, queue %s, tick every %gs", settings.handler, bus.queue_url, settings.tick_s)
    # A first tick, handled before the cloud answers `local up`: controller/tick.json then says the
    # controller runs, so a job launched right away is told it is looked after (jobs.caretaker), not
    # warned that nobody recovers it until the schedule's first minute has passed.
    bus.tick()
    try:
        runner.poll_once(1)
    except Exception as exc:  # the schedule's next tick comes all the same
        logging.warning("controller: the first tick failed: %s: %s", type(exc).__name__, exc)
    return Controller(bus.start(), runner.start())


def _changed(strictness) -> dict:
    """The strict proxy's settings that differ from its defaults (what `local up` or a test changed)."""
    import dataclasses

    default = dataclasses.asdict(type(strictness)())
    return {k: v for k, v in dataclasses.asdict(strictness).items() if v != default[k]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--interrupt-rate", type=float, default=0.0, help="spot interruptions per instance-hour, drawn from the seed"
    )
    parser.add_argument(
        "--notice", type=float, default=5.0, help="seconds between a spot notice and the machine going away"
    )
    parser.add_argument(
        "--interrupt-at-step",
        type=int,
        default=None,
        help="interrupt each job's first attempt once its trainer reports this step",
    )
    parser.add_argument(
        "--strictness",
        type=json.loads,
        default={},
        help="JSON of the strict proxy's settings to change (orchestrator.local.strict.Strictness)",
    )
    parser.add_argument("--lenient", action="store_true", help="no strict proxy: moto's own answers")
    defaults = ControllerSettings()
    parser.add_argument("--no-controller", action="store_true", help="deploy no controller (no events, no schedule)")
    parser.add_argument("--no-events", action="store_true", help="deliver none of EC2's events (the tick still runs)")
    parser.add_argument("--tick", type=float, default=defaults.tick_s, help="seconds between the schedule's ticks")
    parser.add_argument(
        "--controller-handler", default=defaults.handler, help="the function's handler, module:function"
    )
    parser.add_argument("--controller-events", default=defaults.events_module, help="the module of EVENT_PATTERNS")
    parser.add_argument("--visibility-timeout", type=float, default=defaults.visibility_s)
    parser.add_argument("--max-receives", type=int, default=defaults.max_receives)
    args = parser.parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(
        args.home,
        args.seed,
        args.interrupt_rate,
        args.notice,
        args.interrupt_at_step,
        None if args.lenient else args.strictness,
        None
        if args.no_controller
        else ControllerSettings(
            args.controller_handler,
            args.controller_events,
            not args.no_events,
            args.tick,
            args.visibility_timeout,
            args.max_receives,
        ),
    )


if __name__ == "__main__":
    main()
