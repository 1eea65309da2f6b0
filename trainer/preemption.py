"""Noticing that the instance is about to go: spot notices and rebalance recommendations from IMDSv2,
and SIGTERM / Ctrl-C.

Any of them sets `interrupt`; the loop checks it at every step boundary, saves a final checkpoint and
exits with EXIT_INTERRUPTED. A rebalance recommendation only asks for a checkpoint now
(`take_rebalance()`), training continues.

The metadata endpoint is `AWS_EC2_METADATA_SERVICE_ENDPOINT` (the variable the AWS SDKs read), so tests
and the local cloud can serve notices; unset, the real one gets three tries (a slow boot) and polling
stops quietly when it never answers (not on EC2).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import urllib.error
import urllib.request

from trainer.job.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 21600


class InterruptionWatcher:
    def __init__(
        self, endpoint: str | None = None, interval: float | None = None, timeout: float = 2.0, poll_imds: bool = True
    ):
        # poll_imds False: signals only (a machine's other DDP ranks; its local rank 0 polls for them all).
        self.poll_imds = poll_imds
        self.endpoint = (endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or "").rstrip("/")
        # Every 5 s, well inside AWS's two-minute notice; the local cloud's short notices poll faster.
        self.interval = interval or Settings.from_env().imds_poll_seconds
        self.timeout = timeout
        self.interrupt = threading.Event()
        self.reason: str | None = None
        self._rebalance_seen: str | None = None
        self._rebalance_pending = threading.Event()
        self._token: str | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._signals: dict[int, object] = {}

    # --------------------------------------------------------------------------------- lifecycle
    def start(self) -> InterruptionWatcher:
        self._install_signal_handlers()
        explicit = bool(self.endpoint)
        if not self.poll_imds:
            return self
        if not explicit and os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
            log.info("preemption: instance metadata disabled; watching for SIGTERM only")
            return self
        self._thread = threading.Thread(target=self._poll_loop, args=(explicit,), name="imds-poller", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout * 3)
        for signum, previous in self._signals.items():
            signal.signal(signum, previous)
        self._signals.clear()

    def trigger(self, reason: str) -> None:
        if not self.interrupt.is_set():
            self.reason = reason
            log.warning("preemption: %s; checkpointing at the next step boundary, then exiting to be resumed", reason)
        self.interrupt.set()

    def take_rebalance(self) -> bool:
        """True once per rebalance recommendation: the loop then checkpoints immediately."""
        if self._rebalance_pending.is_set():
            self._rebalance_pending.clear()
            return True
        return False

    # ----------------------------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (tests running the loop in a thread)

        def on_sigterm(signum, frame):
            self.trigger("SIGTERM received")

        def on_sigint(signum, frame):
            if self.interrupt.is_set():  # a second Ctrl-C: stop now, without the final checkpoint
                raise KeyboardInterrupt
            self.trigger("Ctrl-C (press again to stop without saving)")

        self._signals[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
        self._signals[signal.SIGINT] = signal.signal(signal.SIGINT, on_sigint)

    # -------------------------------------------------------------------------------------- IMDS
    def _poll_loop(self, explicit: bool) -> None:
        endpoint = self.endpoint or DEFAULT_ENDPOINT
        reached = explicit
        failures = 0
        while not self._closed.is_set():
            try:
                self.poll_once(endpoint)
                reached, failures = True, 0
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failures += 1
                if not reached and failures >= 3:  # never answered: not on EC2 (a slow boot gets 3 tries)
                    log.info("preemption: no instance metadata service (%s); watching for SIGTERM only", exc)
                    return
                if reached:
                    log.warning("preemption: polling %s failed: %s", endpoint, exc)
            self._closed.wait(self.interval)

    def poll_once(self, endpoint: str) -> None:
        action = self._get(endpoint, "/latest/meta-data/spot/instance-action")
        if action is not None:
            notice = json.loads(action)
            self.trigger(f"spot interruption notice ({notice.get('action', '?')} at {notice.get('time', '?')})")
        rebalance = self._get(endpoint, "/latest/meta-data/events/recommendations/rebalance")
        if rebalance is not None and rebalance != self._rebalance_seen:
            self._rebalance_seen = rebalance
            log.warning(
                "preemption: rebalance recommendation (%s); checkpointing now",
                json.loads(rebalance).get("noticeTime", "?"),
            )
            self._rebalance_pending.set()

    def _get(self, endpoint: str, path: str) -> str | None:
        """GET a metadata path with an IMDSv2 token; None when it does not exist (no notice)."""
        for _ in range(2):
            if self._token is None:
                request = urllib.request.Request(
                    f"{endpoint}/latest/api/token",
                    method="PUT",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
                )
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    self._token = response.read().decode()
            request = urllib.request.Request(f"{endpoint}{path}", headers={"X-aws-ec2-metadata-token": self._token})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401:  # token expired: get a new one and ask again
                    self._token = None
                    continue
                raise
        return None
