"""Who looks after a job nobody is watching: who recovers its next interruption, retries a failure,
stops it at its budget.

Today nobody does: only a running `spotctl watch` (or `launch --watch`, `resume --watch`) acts, and a
`spotctl resume` by hand. A serverless controller that follows every job is planned; when it comes,
`caretaker` is the one place that says so, and everything that tells a user who looks after a job
(`watch` on Ctrl-C) asks it.
"""

from __future__ import annotations

NOBODY = "nothing recovers an interruption until you run `spotctl watch` or `spotctl resume` again"


def caretaker(job_id: str) -> str | None:
    """Who looks after the job when no `spotctl watch` runs, in a few words; None: nobody."""
    return None


def left_alone(job_ids: list[str]) -> str:
    """What happens to these jobs when the watch over them ends (Ctrl-C)."""
    minded = {job_id: who for job_id in job_ids if (who := caretaker(job_id))}
    if not minded:
        return NOBODY
    return "; ".join(f"{job_id}: {minded.get(job_id) or NOBODY}" for job_id in job_ids)
