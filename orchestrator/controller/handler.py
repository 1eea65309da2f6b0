"""The controller's Lambda entry: `handler(event, context)` takes an SQS batch of EventBridge events
(EC2's events about instances, and the schedule's tick) and runs the decision step `spotctl watch`
runs (orchestrator.jobs.step) on the jobs they concern.

- An EC2 event (events.parse): the instance's `spotctl:job` tag names the job (instances spotctl did
  not start are ignored, as are jobs under another storage root); ONE step for that job.
- The tick (every minute, events.SCHEDULE_EXPRESSION): one step for every job under the root that is
  not over (or whose machine's end is not recorded yet), then controller/tick.json says when, with
  which version, which jobs, what it did and what failed (jobs.caretaker reads it: "deployed" is a
  recent tick). EC2's events are best effort; the tick is the backstop.

Nothing waits inside an invocation (Lambda stops one at 15 minutes): a job waiting for capacity, for
the trainer's checkpoint or for EC2 to take the machine is looked at again at the next event or tick,
or, after a spot warning, when the warning comes back: the controller sends it to its own queue again
with a delay (events.LOOK_AGAIN_S, up to events.MAX_LOOKS times) until the attempt's end is recorded,
with what its step must remember kept in the job's care/controller.json (jobs.step.StepMemory). A tick
steps jobs for at most TICK_BUDGET_S and leaves the rest to the next one.

Errors are classified: a transient one (throttling, a 5xx, the network) returns the message in
`batchItemFailures`, so SQS delivers it again (then its dead-letter queue); anything else (a record
that cannot be read, a refused permission) is logged and noted in the tick, and never fails the
other messages of the batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import botocore.exceptions

import orchestrator
from orchestrator.aws.clients import Cloud, ErrorKind, as_user_error, classify
from orchestrator.aws.instances import TAG_JOB
from orchestrator.aws.prices import AwsPrices, PriceSource
from orchestrator.controller import events
from orchestrator.errors import UserError
from orchestrator.jobs.record import JobStore, Unreadable
from orchestrator.jobs.state import JobView
from orchestrator.jobs.step import Event, StepMemory, Stepper, WatchOptions
from orchestrator.jobs.views import read_views
from trainer.job import layout
from trainer.job.documents import ControllerTick, TickNote
from trainer.job.settings import Settings

log = logging.getLogger(__name__)

TICK_BUDGET_S = 40.0  # a tick steps jobs this long at most: well inside the minute to the next tick
# The step's horizon for the budget (jobs.policy.decide): the next look is the next tick at the latest.
OPTIONS = WatchOptions(poll_s=60.0)


class Transient(Exception):
    """A message to deliver again: what stopped it may pass (throttling, a 5xx, the network)."""


def transient(exc: BaseException) -> bool:
    """Whether trying the same thing again later may work."""
    if isinstance(exc, (Unreadable, FileNotFoundError, PermissionError)):
        return False
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        kind = classify(exc)
        return kind is ErrorKind.THROTTLE or (kind is ErrorKind.OTHER and status >= 500)
    return isinstance(exc, OSError)  # S3 through s3fs: a dropped connection, a 503 SlowDown


def said(exc: BaseException, doing: str) -> str:
    if isinstance(exc, UserError):
        return exc.message
    if isinstance(exc, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
        return as_user_error(exc, doing).message
    return f"{doing} failed: {exc}"


class Controller:
    """One invocation's worth of the controller for one storage root."""

    def __init__(
        self,
        store: JobStore,
        clouds: Callable[[str], Cloud],
        prices: Callable[[Cloud], PriceSource],
        clock: Callable[[], float] = time.time,
        on_event: Callable[[Event], None] | None = None,
        tick_budget_s: float = TICK_BUDGET_S,
        region: str = "us-east-1",
    ):
        self.store, self.clouds, self.clock = store, clouds, clock
        self.region = region  # for an event that names none (EventBridge's always do)
        self.forward = on_event or (lambda event: None)
        self.told: list[TickNote] = []  # what the steps said since the last take
        # Epoch seconds: a StepMemory outlives the invocation (care/controller.json).
        self.stepper = Stepper(store, clouds, prices, OPTIONS, clock, self._on_event)
        self.tick_budget_s = tick_budget_s
        self.last_view: JobView | None = None  # the job as the last step left it
        self._queue_urls: dict[str, str] = {}  # queue ARN -> URL

    def _on_event(self, event: Event) -> None:
        log.log(event.level, "%s: %s", event.job_id, event.message)
        self.told.append(TickNote(job_id=event.job_id, message=event.message))
        self.forward(event)

    # ------------------------------------------------------------------------------ the batch
    def handle(self, batch: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
        failures = []
        for message in batch.get("Records") or ():
            message_id = message.get("messageId", "")
            try:
                self.handle_message(message.get("body") or "", message.get("eventSourceARN"))
            except Exception as exc:  # noqa: BLE001 - one message's trouble must not fail the batch
                if isinstance(exc, Transient) or transient(exc):  # e.g. S3 throttled listing the jobs
                    log.warning("message %s: will be delivered again: %s", message_id, exc)
                    failures.append({"itemIdentifier": message_id})
                else:  # delivering it again would end the same way: logged, and the tick tries the job again
                    log.exception("message %s: cannot be handled", message_id)
        return {"batchItemFailures": failures}

    def handle_message(self, body: str, queue_arn: str | None = None) -> None:
        """One message; `queue_arn`: the queue it came from (a warning is sent back there to look again)."""
        try:
            event = json.loads(body)
        except ValueError as exc:
            log.warning("a message that is no JSON (%s): ignored", exc)
            return
        if isinstance(event, dict) and events.is_tick(event):
            self.tick()
            return
        try:
            found = events.parse(event)
        except events.NotAnInstanceEvent as exc:
            log.warning("not an event the controller acts on (%s): ignored", exc)
            return
        job_id = self.on_instance(found)
        if job_id is not None and found.kind is events.Kind.INTERRUPTION and queue_arn:
            self._look_again(event, found, queue_arn)

    # ------------------------------------------------------------------------------ one EC2 event
    def on_instance(self, found: events.InstanceEvent) -> str | None:
        """One step for the job of the event's instance; the job's id, or None when it is none of ours."""
        job_id = self._job_of(found)
        if job_id is None:
            return None
        view = read_views(self.store, [job_id], self.clouds)[0]
        if view.record is None and view.unreadable is None:
            log.info("%s (%s): job %s is not under %s: ignored", found.instance_id, found.kind, job_id, self.store.root)
            return None
        log.info("%s: %s of %s", job_id, found.kind, found.instance_id)
        error = self.step(view)
        if isinstance(error, Transient):
            raise error
        return job_id

    def _look_again(self, event: dict, found: events.InstanceEvent, queue_arn: str) -> None:
        """Send the warning back to the queue, delayed, while its attempt's end is not recorded: the next
        look comes in LOOK_AGAIN_S, not at the next tick. A failed send is only logged: the state change
        and the tick still come."""
        view = self.last_view
        if view is None or view.record is None or view.state.terminal or found.look >= events.MAX_LOOKS:
            return
        attempt = next((a for a in view.record.attempts if a.instance_id == found.instance_id), None)
        if attempt is None or attempt.end_reason is not None:
            return  # its end is recorded (the next attempt is started or the job decided): no need
        queue = events.queue_of(queue_arn)
        if queue is None:
            return
        region, account, name = queue
        sqs = self.clouds(region).client("sqs")
        try:
            if queue_arn not in self._queue_urls:
                self._queue_urls[queue_arn] = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)[
                    "QueueUrl"
                ]
            sqs.send_message(
                QueueUrl=self._queue_urls[queue_arn],
                MessageBody=json.dumps(events.look_again(event, found.look + 1)),
                DelaySeconds=events.LOOK_AGAIN_S,
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            log.warning("%s: cannot look again in %ds: %s", view.job_id, events.LOOK_AGAIN_S, said(exc, "re-queuing"))
            return
        log.info("%s: %s of %s: looking again in %ds", view.job_id, found.kind, found.instance_id, events.LOOK_AGAIN_S)

    def _job_of(self, found: events.InstanceEvent) -> str | None:
        cloud = self.clouds(found.region or self.region)
        try:
            reservations = cloud.client("ec2").describe_instances(InstanceIds=[found.instance_id])["Reservations"]
        except botocore.exceptions.ClientError as exc:
            if classify(exc) is ErrorKind.NOT_FOUND:  # gone from EC2's listing already, or never ours
                log.info("%s: EC2 does not know it: ignored", found.instance_id)
                return None
            if transient(exc):
                raise Transient(said(exc, f"describing {found.instance_id}")) from None
            raise
        except botocore.exceptions.BotoCoreError as exc:
            raise Transient(said(exc, f"describing {found.instance_id}")) from None
        tags = {
            tag["Key"]: tag["Value"]
            for reservation in reservations
            for instance in reservation["Instances"]
            for tag in instance.get("Tags") or ()
        }
        if TAG_JOB not in tags:
            log.info("%s: not started by spotctl (no %s tag): ignored", found.instance_id, TAG_JOB)
            return None
        return tags[TAG_JOB]

    # ------------------------------------------------------------------------------ the tick
    def tick(self) -> ControllerTick:
        """A step for every job that is not over, then controller/tick.json."""
        started = self.clock()
        self.told = []
        errors: list[TickNote] = []
        views = read_views(self.store, self.store.job_ids(), self.clouds)
        seen = []
        for view in views:
            if view.unreadable is not None:
                errors.append(TickNote(job_id=view.job_id, message=str(view.unreadable)))
                continue
            if not _needs_care(view):
                continue
            if self.clock() - started > self.tick_budget_s:
                errors.append(TickNote(job_id=view.job_id, message="left for the next tick (this one ran out of time)"))
                continue
            seen.append(view.job_id)
            error = self.step(view)
            if error is not None:
                errors.append(TickNote(job_id=view.job_id, message=str(error)))
        tick = ControllerTick(
            at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            version=orchestrator.__version__,
            took_s=round(self.clock() - started, 3),
            jobs_seen=seen,
            actions=self.told,
            errors=errors,
        )
        self.store.storage.write_bytes(layout.CONTROLLER_TICK, tick.model_dump_json(indent=1).encode())
        log.info("tick: %d jobs, %d actions, %d errors", len(seen), len(self.told), len(errors))
        return tick

    # ------------------------------------------------------------------------------ one job
    def step(self, view: JobView) -> Exception | None:
        """The job's step with its remembered StepMemory; what stopped it (a Transient when trying again
        may work), or None."""
        job_id = view.job_id
        self.last_view = None
        try:
            if view.unreadable is not None:
                raise Unreadable(job_id, view.unreadable)
            memory = StepMemory.parse(self.store.read_bytes(job_id, layout.CONTROLLER_MEMORY)) or StepMemory()
            before = memory.to_json()
            self.last_view = self.stepper.step(view, memory).view
            if memory.to_json() != before:
                self.store.write(job_id, layout.CONTROLLER_MEMORY, memory.to_json())
            return None
        except Exception as exc:  # noqa: BLE001 - classified and told; every other job still gets its step
            message = said(exc, f"following job {job_id}")
            if transient(exc):
                log.warning("%s: %s (transient)", job_id, message)
                return Transient(message)
            log.error("%s: %s", job_id, message)
            return UserError(message) if not isinstance(exc, UserError) else exc


def _needs_care(view: JobView) -> bool:
    """A job not over yet, or over with a machine whose end is not recorded (billing ends when EC2 says)."""
    if view.record is None:
        return False
    if not view.state.terminal:
        return True
    return any(a.instance_id and a.ended_at is None for a in view.record.attempts)


# ---------------------------------------------------------------------------------- the Lambda entry
_clouds: dict[str, Cloud] = {}  # kept while the Lambda's environment is warm: building clients costs


def cloud_for(region: str) -> Cloud:
    if region not in _clouds:
        _clouds[region] = Cloud(region)  # the execution role's credentials: the standard chain
    return _clouds[region]


def prices_for(cloud: Cloud) -> PriceSource:
    return AwsPrices(cloud, cache=False)  # a Lambda's file system is read-only but /tmp: no price cache file


def price_with(source: Callable[[Cloud], PriceSource]) -> None:
    """Price offers and cost with `source` instead of AWS's Price List API and spot price history: the
    local cloud's simulated market (orchestrator.local.daemon), which prices everything `spotctl --local`
    shows, so the attempts the controller starts there and the cost it notifies agree with `status`."""
    global prices_for
    prices_for = source


def from_environment(on_event: Callable[[Event], None] | None = None) -> Controller:
    """The controller the environment configures (trainer.job.settings): SPOTCTL_STORAGE, AWS_REGION."""
    settings = Settings.from_env()
    if not settings.storage:
        raise UserError("the controller has no storage root to look after", "set SPOTCTL_STORAGE (the stack does)")
    region = settings.region or "us-east-1"
    return Controller(JobStore(settings.storage), cloud_for, prices_for, on_event=on_event, region=region)


def handler(event: dict, context: Any = None) -> dict:
    """The Lambda function: an SQS batch in, the SQS partial batch response out."""
    _say_what_happens()
    return from_environment().handle(event)


def _say_what_happens() -> None:
    """Lambda's runtime logs the root logger's records at WARNING: the controller's INFO lines (what it
    did, job by job) belong in its CloudWatch log too. A caller that chose a level keeps it."""
    chosen = logging.getLogger("orchestrator")
    if chosen.level == logging.NOTSET and logging.getLogger().level > logging.INFO:
        if not logging.getLogger().handlers:
            logging.basicConfig()
        chosen.setLevel(logging.INFO)
