"""The sweep's state in S3: the Optuna journal on create-only segments, and the driver's lease
(against the strict local cloud: missing keys answer 403, conditional writes as S3 does them)."""

from __future__ import annotations

import threading

import optuna
import pytest

from orchestrator.sweeps.journal import StorageJournal
from orchestrator.sweeps.lease import DriverLease
from trainer.job.storage import Storage


@pytest.fixture
def root(s3_denies_missing_keys, s3_bucket):
    return f"s3://{s3_bucket}/spotctl"


def _study(root: str, name: str = "sw-1"):
    storage = optuna.storages.JournalStorage(StorageJournal(Storage(root), name))
    return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)


def test_a_study_continues_on_another_client(root):
    first = _study(root)
    for x in (0.1, 0.5):
        trial = first.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        first.tell(trial, x)
    running = first.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    # Another machine: a new storage client, a new JournalStorage replaying the segments.
    second = _study(root)
    assert [t.number for t in second.trials] == [0, 1, 2]
    assert [t.state.name for t in second.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert second.trials[2].params == running.params
    second.tell(2, 0.9)
    assert _study(root).best_trial.number == 2


def test_concurrent_appends_keep_one_order(root):
    studies = [_study(root), _study(root)]
    errors = []

    def ask(study):
        try:
            for _ in range(4):
                t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
                study.tell(t, 0.5)
        except Exception as exc:  # pragma: no cover - the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(s,)) for s in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    replayed = _study(root)
    assert sorted(t.number for t in replayed.trials) == list(range(8))
    assert all(t.state.name == "COMPLETE" for t in replayed.trials)


def test_a_retried_append_is_not_applied_twice(root):
    """A create-only write whose answer was lost and retried finds its own segment (412): not appended again."""
    journal = StorageJournal(Storage(root), "sw-2")
    journal.append_logs([{"op": 1}])
    real = journal.storage.write_bytes
    calls = []

    def lost_answer(relative, data, create_only=False, tags=None):
        calls.append(relative)
        real(relative, data, create_only=create_only)  # landed...
        if len(calls) == 1:
            raise FileExistsError(relative)  # ...but the retry saw 412

    journal.storage.write_bytes = lost_answer
    journal.append_logs([{"op": 2}])
    assert StorageJournal(Storage(root), "sw-2").read_logs(0) == [{"op": 1}, {"op": 2}]


def test_one_driver_holds_the_lease(root):
    a = DriverLease(Storage(root), "sw-3", holder="a")
    b = DriverLease(Storage(root), "sw-3", holder="b")
    assert a.take() is None  # a holds it
    held = b.take()
    assert held is not None and held.holder == "a"
    assert a.take() is None  # renewing
    a.release()
    assert b.take() is None  # released: b takes over at once
    assert a.take().holder == "b"


def test_an_expired_lease_is_taken_over(root):
    a = DriverLease(Storage(root), "sw-4", holder="a", expiry_s=-1)  # a dead driver's lease: expired
    assert a.take() is None
    b = DriverLease(Storage(root), "sw-4", holder="b")
    assert b.take() is None
    assert DriverLease(Storage(root), "sw-4").current().holder == "b"


def test_two_drivers_racing_only_one_wins(root):
    leases = [DriverLease(Storage(root), "sw-5", holder=f"d{i}") for i in range(4)]
    results = [None] * len(leases)
    barrier = threading.Barrier(len(leases))

    def take(i):
        barrier.wait()
        results[i] = leases[i].take()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(leases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert all(r.holder == f"d{winners[0]}" for r in results if r is not None)
