"""The local function runner: Lambda's SQS event source mapping and the function, in the daemon.

A thread long-polls the controller's queue (batches of up to 10, as the stack's mapping), hands each
batch to the handler as Lambda does (the SQS batch event: Records with messageId, receiptHandle,
body, attributes, eventSource aws:sqs ...; a context with the request id and the time left), and
then acts on its partial batch response as Lambda's ReportBatchItemFailures does: the messages not
listed in `batchItemFailures` are deleted; the listed ones reappear after the queue's visibility
timeout, and after its maxReceiveCount SQS moves them to the dead-letter queue. A handler that
raises, answers something else than that response, or runs past its timeout fails the whole batch.

The handler runs in the daemon's own process, whose environment is set like the function's
(SPOTCTL_STORAGE, the AWS endpoint of the strict proxy, dummy credentials): it talks to AWS as any
client does. The handler is named by a dotted path ("module:function") and imported late: the
controller's package may be absent, and tests name a recording one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import import_module

log = logging.getLogger(__name__)

DEFAULT_HANDLER = "orchestrator.controller.handler:handler"
FUNCTION_NAME = "spotctl-controller"
BATCH_SIZE = 10  # the stack's event source mapping; SQS's most per receive
WAIT_S = 2  # long poll; short enough that the daemon stops promptly
TIMEOUT_S = 300.0  # the function's timeout (Lambda allows 900 s; the controller never waits inside)
MEMORY_MB = 512


def load_handler(dotted: str):
    """`module:function` -> the function (ImportError/AttributeError when it is not there)."""
    module, _, name = dotted.partition(":")
    if not name:
        raise ImportError(f"'{dotted}' is not module:function")
    return getattr(import_module(module), name)


@dataclass
class LambdaContext:
    """What Lambda's Python runtime passes as `context` (the fields a handler reads)."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str
    deadline: float  # time.monotonic() when the function's timeout runs out
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = MEMORY_MB
    log_group_name: str = f"/aws/lambda/{FUNCTION_NAME}"
    log_stream_name: str = field(default_factory=lambda: f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}")

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def sqs_batch_event(messages: list[dict], queue_arn: str, region: str) -> dict:
    """The event Lambda passes for a batch received from SQS (receive_message's messages, with
    AttributeNames=["All"])."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    k: m.get("Attributes", {})[k]
                    for k in (
                        "ApproximateReceiveCount",
                        "SentTimestamp",
                        "SenderId",
                        "ApproximateFirstReceiveTimestamp",
                    )
                    if k in m.get("Attributes", {})
                },
                "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def failed_ids(response, records: list[dict]) -> set[str] | None:
    """The message ids the partial batch response names; None when it is no such response (Lambda
    then fails the whole batch)."""
    if response is None:
        return set()  # a function that returns nothing succeeded for every message
    if not isinstance(response, dict) or not isinstance(response.get("batchItemFailures", []), list):
        return None
    ids = {r["messageId"] for r in records}
    failures = set()
    for item in response.get("batchItemFailures", []):
        if not isinstance(item, dict) or item.get("itemIdentifier") not in ids:
            return None  # Lambda: an empty or unknown identifier fails the batch
        failures.add(item["itemIdentifier"])
    return failures


class FunctionRunner:
    def __init__(
        self,
        sqs,
        queue_url: str,
        queue_arn: str,
        region: str,
        account: str,
        handler,
        handler_path: str = DEFAULT_HANDLER,
        timeout_s: float = TIMEOUT_S,
        wait_s: int = WAIT_S,
    ):
        """`sqs`: a client of moto itself (this plays Lambda's side); `handler`: the function."""
        self.sqs, self.queue_url, self.queue_arn, self.region = sqs, queue_url, queue_arn, region
        self.handler, self.handler_path = handler, handler_path
        self.function_arn = f"arn:aws:lambda:{region}:{account}:function:{FUNCTION_NAME}"
        self.timeout_s, self.wait_s = timeout_s, wait_s
        self.invocations = self.delivered = self.deleted = self.failed_items = self.errors = 0
        self.last_error: str | None = None
        self.last_invocation: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FunctionRunner:
        self._thread = threading.Thread(target=self._loop, name="function-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(self.wait_s + 10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(self.wait_s)
            except Exception as exc:  # the queue itself failed: try again, say so
                log.warning("functions: receive failed: %s: %s", type(exc).__name__, exc)
                self._stop.wait(1.0)

    def poll_once(self, wait_s: int = 0) -> int:
        """Receive one batch and run the function on it; the number of messages it held."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=BATCH_SIZE,
            WaitTimeSeconds=wait_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if messages:
            self.invoke(messages)
        return len(messages)

    def invoke(self, messages: list[dict]) -> set[str]:
        """Run the function on one batch; delete what succeeded. Returns the ids left to come again."""
        event = sqs_batch_event(messages, self.queue_arn, self.region)
        request = str(uuid.uuid4())
        context = LambdaContext(FUNCTION_NAME, self.function_arn, request, time.monotonic() + self.timeout_s)
        started = time.monotonic()
        log.info("functions: START RequestId: %s (%d messages)", request, len(messages))
        every = {r["messageId"] for r in event["Records"]}
        try:
            response = self.handler(event, context)
            failures = failed_ids(response, event["Records"])
            if failures is None:
                raise ValueError(f"not a partial batch response: {response!r:.200}")
            if time.monotonic() - started > self.timeout_s:  # Lambda would have stopped it: nothing counts
                raise TimeoutError(f"ran {time.monotonic() - started:.1f}s, past its {self.timeout_s:.0f}s timeout")
        except Exception as exc:
            log.exception(
                "functions: RequestId: %s failed; the batch comes again after the visibility timeout", request
            )
            with self._lock:
                self.invocations += 1
                self.delivered += len(messages)
                self.errors += 1
                self.failed_items += len(messages)
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.last_invocation = _stamp()
            return every
        done = [r for r in event["Records"] if r["messageId"] not in failures]
        if done:  # a batch holds at most BATCH_SIZE, what one delete_message_batch takes
            entries = [{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(done)]
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        log.info(
            "functions: END RequestId: %s (%.0f ms; %d deleted, %d to come again)",
            request,
            (time.monotonic() - started) * 1000,
            len(done),
            len(failures),
        )
        with self._lock:
            self.invocations += 1
            self.delivered += len(messages)
            self.deleted += len(done)
            self.failed_items += len(failures)
            self.last_invocation = _stamp()
        return failures

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "handler": self.handler_path,
                "invocations": self.invocations,
                "delivered": self.delivered,
                "deleted": self.deleted,
                "failed_items": self.failed_items,
                "handler_errors": self.errors,
                "last_error": self.last_error,
                "last_invocation": self.last_invocation,
            }


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
