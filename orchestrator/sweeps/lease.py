"""The driver's lease on a sweep: exactly one driver (`sweep launch --watch`, `sweep resume`, any machine)
advances the study at a time.

`sweeps/<id>/driver.json` is a lease (jobs.caretaker's: holder, expires_at) taken and renewed only by
conditional writes: create-only when there is none, If-Match on the version read when it expired or is
the taker's own. Two drivers racing both read the same version; S3 lets one write through and refuses
the other (412), who then sees the winner's lease and stands aside. A driver that dies stops renewing:
its lease expires and the next driver takes over, losing nothing (the study and the trials' jobs are in S3).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from datetime import datetime

from orchestrator.jobs.caretaker import lease_body, unexpired
from trainer.job import layout
from trainer.job.documents import WatchLease
from trainer.job.storage import Conflict, Storage

LEASE_S = 120.0  # a driver renews at every pass (a poll: 30 s by default); a dead one is replaced within 2 min


class DriverLease:
    def __init__(self, storage: Storage, sweep_id: str, holder: str | None = None, expiry_s: float = LEASE_S):
        self.storage, self.key, self.expiry_s = storage, layout.in_sweep(sweep_id, layout.SWEEP_DRIVER), expiry_s
        # The random part tells two drivers on one host (and pid reuse) apart.
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    def current(self, now: datetime | None = None) -> WatchLease | None:
        """The unexpired lease on the sweep, whoever holds it (None: nobody drives it now)."""
        lease, _ = self._read()
        return lease if unexpired(lease, now) else None

    def take(self, now: datetime | None = None) -> WatchLease | None:
        """Take or renew the lease. None: this driver holds it now; else the lease another holds."""
        lease, version = self._read()
        if lease is not None and lease.holder != self.holder and unexpired(lease, now):
            return lease
        try:
            self.storage.write_if(self.key, lease_body(self.holder, self.expiry_s), version)
        except Conflict:  # another driver wrote in between: its lease (or a newer one of ours) stands
            lease, _ = self._read()
            return None if lease is not None and lease.holder == self.holder else lease
        return None

    def release(self) -> None:
        """Give the lease up (the driver ends): the next driver need not wait for it to expire."""
        lease, version = self._read()
        if lease is None or lease.holder != self.holder:
            return
        with contextlib.suppress(Conflict):  # expired now, conditionally: a lease another driver took since stays
            self.storage.write_if(self.key, lease_body(self.holder, -1), version)

    def _read(self) -> tuple[WatchLease | None, str | None]:
        try:
            body, version = self.storage.read_versioned(self.key)
        except FileNotFoundError:
            return None, None
        return WatchLease.parse(body), version
