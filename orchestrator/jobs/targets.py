"""Where a job's notify targets are kept: `spotctl launch` stores the job's `notify:` section (webhook
URLs are bearer credentials) at layout.notify_targets(job id), under the storage root but outside the
job's prefix. The trainer role is denied that path (infra/spotctl.yaml, orchestrator.aws.infra.TRAINER_DENIED)
and the job.yaml stored for the trainer leaves the section out (spec_file.dump_spec): only the operator
and the controller read it (orchestrator.jobs.notify)."""

from __future__ import annotations

import json

from orchestrator.jobs.record import JobStore
from trainer.job import layout
from trainer.job.secret import REVEAL
from trainer.job.spec import NotifySpec


def store_targets(store: JobStore, job_id: str, notify: NotifySpec) -> None:
    """Keep the job's notify section where the trainer cannot read it (nothing when it has no targets)."""
    if notify.targets:
        body = json.dumps(notify.model_dump(mode="json", context={REVEAL: True}), indent=1).encode()
        store.storage.write_bytes(layout.notify_targets(job_id), body)


def read_targets(store: JobStore, job_id: str) -> NotifySpec | None:
    """The job's stored notify section; None when it has none."""
    try:
        body = store.storage.read_bytes(layout.notify_targets(job_id))
    except FileNotFoundError:
        return None
    return NotifySpec.model_validate(json.loads(body))


def delete_targets(store: JobStore, job_id: str) -> None:
    """Forget the job's targets (`spotctl rm`); nothing when it has none."""
    store.storage.delete(layout.notify_targets(job_id))
