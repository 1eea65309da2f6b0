"""The Optuna study's journal in S3 (or a local folder): `optuna.storages.JournalStorage` on a backend
that appends segments `sweeps/<id>/study/<nnnnnnnn>.json`, each written create-only.

Create-only writes give the journal its one order: segment n is whoever created it first, and an
append that lost the race reads the winner's segment and tries n+1. Nothing is ever rewritten, so a
driver killed mid-append leaves either a whole segment or none, and any machine replays the same
study. Optuna's upstream S3 backend was turned down because the local tests could not check the
conditional writes; here they run against the strict local cloud (tests/unit/test_sweep_journal.py).
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterable
from typing import Any

from optuna.storages.journal import BaseJournalBackend

from trainer.job import layout
from trainer.job.storage import Storage


class StorageJournal(BaseJournalBackend):
    def __init__(self, storage: Storage, sweep_id: str):
        self.storage, self.sweep_id = storage, sweep_id
        self._segments: list[list[dict[str, Any]]] = []  # read so far, in order (a segment never changes)
        self._writer = secrets.token_hex(8)
        self._appends = itertools.count()

    def _key(self, number: int) -> str:
        return layout.in_sweep(self.sweep_id, layout.study_segment(number))

    def _read_new(self) -> None:
        while True:
            try:
                body = self.storage.read_bytes(self._key(len(self._segments)))
            except FileNotFoundError:
                return
            self._segments.append(json.loads(body)["logs"])

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        self._read_new()
        return list(itertools.chain.from_iterable(self._segments))[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        # The append's own mark: a create-only write whose answer was lost and that was retried finds its
        # own segment there (412), and must not append the logs a second time.
        mark = f"{self._writer}-{next(self._appends)}"
        body = json.dumps({"writer": mark, "logs": logs}).encode()
        while True:
            self._read_new()
            number = len(self._segments)
            try:
                self.storage.write_bytes(self._key(number), body, create_only=True)
            except FileExistsError:
                if json.loads(self.storage.read_bytes(self._key(number))).get("writer") != mark:
                    continue  # another driver's segment: read it, append after it
            self._segments.append(json.loads(body)["logs"])
            return
