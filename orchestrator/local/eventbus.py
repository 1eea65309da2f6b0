"""The local cloud plays EC2's and EventBridge's part for the controller (orchestrator.controller).

moto's EC2 emits no events and its EventBridge fires no schedule, so the daemon publishes what AWS
would, when AWS would, to moto's default bus, whose rules (the controller's EVENT_PATTERNS, as the
stack's template has them) deliver to an SQS queue with a dead-letter queue:

- `interruption_warning`: "EC2 Spot Instance Interruption Warning" when the spot notice is served on
  the instance's IMDS (AWS: two minutes before the machine goes).
- `state_change`: "EC2 Instance State-change Notification" for every state an instance passes
  through (`state_path`: EC2 goes running -> shutting-down -> terminated even when one describe
  sees only the end).
- `tick`: the schedule's "Scheduled Event" from aws.events, every `tick_s` seconds, sent to the queue
  as EventBridge's schedule rule would (moto never fires one).

Only the local cloud may publish `Source: aws.ec2` (real EventBridge refuses it with
NotAuthorizedForSourceException; moto accepts it): it publishes past the strict proxy, to moto
itself, as the AWS service it stands in for. `deliver=False` drops the EC2 events (counted as
suppressed), the tick still runs: the events are best effort on AWS too.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timezone
from importlib import import_module

log = logging.getLogger(__name__)

SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE = "EC2 Instance State-change Notification"
EC2_SOURCE = "aws.ec2"
SCHEDULE_SOURCE = "aws.events"
QUEUE = "spotctl-controller"
DEAD_LETTERS = "spotctl-controller-dlq"
RULE_PREFIX = "spotctl-"
SCHEDULE_RULE = f"{RULE_PREFIX}schedule"
DEFAULT_EVENTS_MODULE = "orchestrator.controller.events"  # EVENT_PATTERNS, SCHEDULE_EXPRESSION, TICK_DETAIL_TYPE
DEFAULT_TICK_S = 60.0  # the stack's schedule: rate(1 minute)
DEFAULT_VISIBILITY_S = 30.0  # how long a batch the function failed stays invisible before it is delivered again
DEFAULT_MAX_RECEIVES = 5  # deliveries of one message before it goes to the dead-letter queue
RETENTION_S = 4 * 24 * 3600  # SQS's default: an event nobody consumed is kept four days
# What EventBridge delivers to a target without an input transformer: the whole event. moto's own
# default leaves out `account` (and its stand-in for the whole event would add moto's `ingestion-time`),
# so the local targets spell AWS's envelope out. `<time>` is unquoted: moto holds it as a number
# until it writes the message, as an ISO time.
ENVELOPE_FIELDS = ("version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail")
WHOLE_EVENT = {
    "InputPathsMap": {k: f"$.{k}" for k in ENVELOPE_FIELDS if k != "version"},
    "InputTemplate": (
        '{"version": "0", "id": "<id>", "detail-type": "<detail-type>", "source": "<source>", '
        '"account": "<account>", "time": <time>, "region": "<region>", "resources": <resources>, '
        '"detail": <detail>}'
    ),
}

# EC2's lifecycle: the states an instance passes through to reach each one (pending -> running ->
# stopping -> stopped / shutting-down -> terminated). A describe may skip some (moto terminates at
# once); EC2 would still have sent an event for each.
_BEFORE = {
    "pending": (),
    "running": ("pending",),
    "stopping": ("running",),
    "stopped": ("stopping",),
    "shutting-down": (),
    "terminated": ("shutting-down",),
}


def state_path(before: str | None, now: str) -> list[str]:
    """The states EC2 announces going from `before` (None: not seen yet) to `now`, in order."""
    if before == now or now not in _BEFORE:
        return []
    path = [now]
    while _BEFORE[path[0]] and _BEFORE[path[0]][0] != before:
        path.insert(0, _BEFORE[path[0]][0])
    return path


def load_events_module(dotted: str):
    """The module with EVENT_PATTERNS, SCHEDULE_EXPRESSION and TICK_DETAIL_TYPE (imported late: the
    controller's package may be absent; the daemon then deploys no controller and says why)."""
    module = import_module(dotted)
    for name in ("EVENT_PATTERNS", "SCHEDULE_EXPRESSION", "TICK_DETAIL_TYPE"):
        if not hasattr(module, name):
            raise ImportError(f"{dotted} has no {name}")
    return module


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aws_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class EventBus:
    def __init__(
        self,
        events,
        sqs,
        sts,
        region: str,
        events_module,
        tick_s: float = DEFAULT_TICK_S,
        deliver: bool = True,
        visibility_s: float = DEFAULT_VISIBILITY_S,
        max_receives: int = DEFAULT_MAX_RECEIVES,
    ):
        """`events`, `sqs`, `sts`: boto3 clients of moto itself (not the strict proxy: see the module)."""
        self.events, self.sqs, self.region = events, sqs, region
        self.account = sts.get_caller_identity()["Account"]
        self.module = events_module
        self.tick_s, self.deliver = tick_s, deliver
        self.visibility_s, self.max_receives = visibility_s, max_receives
        self.queue_url = self.queue_arn = self.dead_letters_url = ""
        self.published = self.suppressed = self.failed = self.ticks = 0
        self.last_tick: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ set-up
    def deploy(self) -> EventBus:
        """The queue (its dead-letter queue, a policy letting EventBridge send to it) and the rules,
        as the stack's template has them."""
        dead = self.sqs.create_queue(
            QueueName=DEAD_LETTERS, Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)}
        )["QueueUrl"]
        dead_arn = self._arn_of(dead)
        self.dead_letters_url = dead
        self.queue_url = self.sqs.create_queue(
            QueueName=QUEUE,
            Attributes={
                "VisibilityTimeout": str(int(self.visibility_s)),
                "MessageRetentionPeriod": str(RETENTION_S),
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": self.max_receives}),
            },
        )["QueueUrl"]
        self.queue_arn = self._arn_of(self.queue_url)
        statement = {
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": self.queue_arn,
        }
        self.sqs.set_queue_attributes(
            QueueUrl=self.queue_url,
            Attributes={"Policy": json.dumps({"Version": "2012-10-17", "Statement": [statement]})},
        )
        for name, pattern in self.module.EVENT_PATTERNS.items():
            self.events.put_rule(Name=f"{RULE_PREFIX}{name}", EventPattern=json.dumps(pattern), State="ENABLED")
            self.events.put_targets(
                Rule=f"{RULE_PREFIX}{name}",
                Targets=[{"Id": "controller", "Arn": self.queue_arn, "InputTransformer": WHOLE_EVENT}],
            )
        # The schedule rule exists as on AWS, but without a target here: moto matches a rule that has no
        # pattern against every event (it would get each one twice) and never fires it; `tick` is its firing.
        self.events.put_rule(Name=SCHEDULE_RULE, ScheduleExpression=self.module.SCHEDULE_EXPRESSION, State="ENABLED")
        return self

    def _arn_of(self, url: str) -> str:
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def start(self) -> EventBus:
        """The schedule: a tick every `tick_s` seconds (the first one `tick_s` after the start, as a rate does)."""
        self._thread = threading.Thread(target=self._schedule, name="schedule", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _schedule(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception as exc:  # the next one comes all the same
                log.warning("schedule: tick failed: %s: %s", type(exc).__name__, exc)

    # ------------------------------------------------------------------ EC2's events
    def instance_arn(self, instance_id: str) -> str:
        return f"arn:aws:ec2:{self.region}:{self.account}:instance/{instance_id}"

    def interruption_warning(self, instance_id: str, action: str = "terminate") -> None:
        self._publish(SPOT_WARNING, instance_id, {"instance-id": instance_id, "instance-action": action})

    def rebalance_recommendation(self, instance_id: str) -> None:
        self._publish(REBALANCE, instance_id, {"instance-id": instance_id})

    def state_change(self, instance_id: str, state: str) -> None:
        self._publish(STATE_CHANGE, instance_id, {"instance-id": instance_id, "state": state})

    def _publish(self, detail_type: str, instance_id: str, detail: dict) -> None:
        with self._lock:
            if not self.deliver:  # lost on the way, as a best-effort event may be
                self.suppressed += 1
                log.info("events: not delivered (delivery off): %s %s", detail_type, detail)
                return
        answer = self.events.put_events(
            Entries=[
                {
                    "Source": EC2_SOURCE,
                    "DetailType": detail_type,
                    "Detail": json.dumps(detail),
                    "Resources": [self.instance_arn(instance_id)],
                    "Time": _now(),
                }
            ]
        )
        with self._lock:
            if answer.get("FailedEntryCount"):
                self.failed += 1
                log.warning("events: put_events refused %s: %s", detail_type, answer["Entries"])
            else:
                self.published += 1
                log.info("events: published %s %s", detail_type, detail)

    # ------------------------------------------------------------------ the schedule
    def tick(self) -> dict:
        """The schedule rule firing: EventBridge's Scheduled Event, sent to the rule's target queue."""
        at = _now()
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": self.module.TICK_DETAIL_TYPE,
            "source": SCHEDULE_SOURCE,
            "account": self.account,
            "time": _aws_time(at),
            "region": self.region,
            "resources": [f"arn:aws:events:{self.region}:{self.account}:rule/{SCHEDULE_RULE}"],
            "detail": {},
        }
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(event))
        with self._lock:
            self.ticks += 1
            self.last_tick = event["time"]
        return event

    def dead_letters(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.dead_letters_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "events": self.deliver,
                "tick_s": self.tick_s,
                "published": self.published,
                "suppressed": self.suppressed,
                "refused": self.failed,
                "ticks": self.ticks,
                "last_tick": self.last_tick,
                "queue": self.queue_url,
            }
