"""Sending a job's notifications, once each, by whichever driver looked at the job (a `spotctl watch`
poll, the controller's tick or event): `Notifier.step(view, cost)`, called after the driver acted.

Where the targets live: `spotctl launch` stores the job's `notify:` section (webhook URLs are bearer
credentials) through orchestrator.jobs.targets at layout.notify_targets(job id), outside the job's prefix; the
trainer role is denied that path (infra/spotctl.yaml) and the job.yaml stored for the trainer leaves the
section out (spec_file.dump_spec). Only the operator and the controller read it.

Exactly once: each (event, target) is claimed in the record (`notified`, a conditional write through
JobStore.update_record) before it is sent, so two drivers looking at once never both send; a claim
whose driver died is taken over after CLAIM_S. A send gets SEND_TRIES tries with a short timeout; what
still fails is marked failed and tried again at the next step, up to MAX_TRIES steps, then given up
with the reason logged. A target that failed once in a step is not tried again in that step, so a dead
receiver costs one timeout per step, and nothing here ever raises into the driver's recovery.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone

import botocore.exceptions

from orchestrator.jobs.cost import JobCost
from orchestrator.jobs.notices import Message, due, message, payload
from orchestrator.jobs.record import JobStore
from orchestrator.jobs.state import JobView, age_s
from orchestrator.jobs.targets import read_targets
from orchestrator.jobs.views import log_text
from trainer.job import layout
from trainer.job.documents import JobRecord, Manifest, Notified, now_iso
from trainer.job.spec import NotifySpec, NotifyTarget

log = logging.getLogger(__name__)

SEND_TRIES = 2  # per send, within one step
SEND_TIMEOUT_S = 2.0  # per try: a step spends at most about SEND_TRIES * SEND_TIMEOUT_S on a dead target
RETRY_PAUSE_S = 0.25  # between a step's two tries
MAX_TRIES = 5  # steps a failing notification is tried in before it is given up
CLAIM_S = 60.0  # a claim this old whose driver never said how it went is taken over
SENT, CLAIMED, FAILED, GAVE_UP = "sent", "claimed", "failed", "gave_up"


class SendFailed(Exception):
    """One send that did not go through; the message names the target masked, never its URL."""


# ---------------------------------------------------------------------------------------- sending
def post_json(url: str, body: dict, timeout: float) -> None:
    """POST `body` as JSON; SendFailed unless the answer is 2xx."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "spotctl"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise SendFailed(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SendFailed(type(reason).__name__ if not isinstance(reason, str) else reason) from None


class Notifier:
    """Sends the notifications a job's view shows are due (`step`), once each across every driver."""

    def __init__(
        self,
        store: JobStore,
        sns_client: Callable[[str], object] | None = None,
        post: Callable[[str, dict, float], None] = post_json,
        on_note: Callable[[str, str, int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.store = store
        self.sns_client = sns_client  # region -> an SNS client (the driver's credentials)
        self.post, self.sleep = post, sleep
        self.on_note = on_note or (lambda job_id, text, level: log.log(level, "%s: %s", job_id, text))
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._targets: dict[str, NotifySpec | None] = {}
        self._owed: set[str] = set()  # jobs whose last step left a notification failed (to try again)

    def owes(self, job_id: str) -> bool:
        """Whether a notification of the job failed at the last step and is to be tried again: a
        driver keeps looking at an ended job until it is sent or given up."""
        return job_id in self._owed

    def step(self, view: JobView, cost: Callable[[], JobCost | None] | JobCost | None = None) -> list[str]:
        """Send what is due and not yet sent; the keys sent. Never raises: a notification must not
        stop a driver's recovery (whatever went wrong is logged and retried at the next step)."""
        try:
            return self._step(view, cost)
        except Exception as exc:  # noqa: BLE001 - contained on purpose, see the docstring
            self.on_note(view.job_id, f"notifications: {type(exc).__name__}: {exc}", logging.WARNING)
            return []

    def _step(self, view: JobView, cost) -> list[str]:
        if view.record is None:
            return []
        notify = self._targets_of(view.job_id)
        if notify is None:
            return []
        wanted = [(key, event) for key, event in due(view) if notify.wants(event)]
        todo = {
            f"{key}@{index}": (key, event, index)
            for key, event in wanted
            for index, _ in enumerate(notify.targets)
            if _open(view.record.notified.get(f"{key}@{index}"))
        }
        if not todo:
            return []
        claimed = self._claim(view.job_id, list(todo))
        if not claimed:
            return []
        figures = cost() if callable(cost) else cost
        messages: dict[str, Message] = {}
        results: dict[str, tuple[str, str | None]] = {}
        broken: dict[int, str] = {}
        for slot in claimed:
            key, event, index = todo[slot]
            target = notify.targets[index]
            if index in broken:
                results[slot] = (FAILED, f"not tried: {broken[index]} earlier in this step")
                continue
            if key not in messages:
                messages[key] = self._message(key, event, view, figures)
            try:
                self._send(target, messages[key])
                results[slot] = (SENT, None)
                self.on_note(view.job_id, f"notified {target.shown} of {event}", logging.INFO)
            except SendFailed as exc:
                broken[index] = str(exc)
                results[slot] = (FAILED, f"{target.shown}: {exc}")
        self._finish(view.job_id, results)
        return [todo[slot][0] + f"@{todo[slot][2]}" for slot, (state, _) in results.items() if state == SENT]

    def _targets_of(self, job_id: str) -> NotifySpec | None:
        if job_id not in self._targets:  # stored once at launch: read once per driver
            self._targets[job_id] = read_targets(self.store, job_id)
        return self._targets[job_id]

    def _message(self, key: str, event: str, view: JobView, cost: JobCost | None) -> Message:
        log_tail = manifest = None
        if event == "failed":
            content = log_text(self.store, view)[2]
            log_tail = content.decode(errors="replace") if content else None
        if event == "succeeded":
            manifest = self.store.read(view.job_id, Manifest, layout.MANIFEST)
        return message(key, event, view, cost, log_tail, manifest, self.store.url(view.job_id, layout.ARTIFACTS))

    def _send(self, target: NotifyTarget, note: Message) -> None:
        body = payload(target.kind, note)
        for attempt in range(SEND_TRIES):
            try:
                if target.kind == "sns":
                    self._publish(target.address, body)
                else:
                    self.post(target.address, body, SEND_TIMEOUT_S)
                return
            except SendFailed:
                if attempt + 1 == SEND_TRIES:
                    raise
                self.sleep(RETRY_PAUSE_S * (attempt + 1))

    def _publish(self, topic: str, body: dict) -> None:
        if self.sns_client is None:
            raise SendFailed("no AWS client to publish with")
        try:
            self.sns_client(topic.split(":")[3]).publish(TopicArn=topic, **body)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            code = exc.response["Error"]["Code"] if isinstance(exc, botocore.exceptions.ClientError) else None
            raise SendFailed(code or type(exc).__name__) from None

    # ------------------------------------------------------------------------ the record's marks
    def _claim(self, job_id: str, slots: list[str]) -> list[str]:
        """Claim the slots nobody has (or whose claim went stale) in one conditional write; those taken."""
        taken: list[str] = []

        def claim(record: JobRecord) -> bool:
            taken.clear()  # re-applied after a conflict: start over from the newer record
            now = now_iso()
            for slot in slots:
                mark = record.notified.get(slot)
                if _open(mark):
                    record.notified[slot] = Notified(CLAIMED, now, self.owner, (mark.tries if mark else 0) + 1)
                    taken.append(slot)
            return bool(taken)

        self.store.update_record(job_id, claim)
        return list(taken)

    def _finish(self, job_id: str, results: dict[str, tuple[str, str | None]]) -> None:
        given_up: dict[str, str | None] = {}

        def mark(record: JobRecord) -> bool:
            given_up.clear()
            changed = False
            for slot, (state, error) in results.items():
                current = record.notified.get(slot)
                if current is None or current.state != CLAIMED or current.by != self.owner:
                    continue  # taken over meanwhile (we were slow): theirs is the word now
                tries = current.tries
                if error and error.startswith("not tried"):
                    tries -= 1  # the target failed on another message: this one does not count a try
                if state == FAILED and tries >= MAX_TRIES:
                    state = GAVE_UP
                    given_up[slot] = error
                record.notified[slot] = Notified(state, now_iso(), self.owner, tries, error)
                changed = True
            return changed

        self.store.update_record(job_id, mark)
        retried = [slot for slot, (state, _) in results.items() if state == FAILED and slot not in given_up]
        if retried:
            self._owed.add(job_id)
        else:
            self._owed.discard(job_id)
        for slot, error in given_up.items():
            self.on_note(job_id, f"notification {slot}: {error}; gave up after {MAX_TRIES} tries", logging.ERROR)
        for slot in retried:
            error = results[slot][1]
            self.on_note(job_id, f"notification {slot} failed ({error}); trying again next time", logging.WARNING)


def _open(mark: Notified | None, now: datetime | None = None) -> bool:
    """Whether a slot may be claimed: never tried, failed (and not given up), or claimed long ago."""
    if mark is None or mark.state == FAILED:
        return True
    return mark.state == CLAIMED and age_s(mark.at, now or datetime.now(timezone.utc)) > CLAIM_S
