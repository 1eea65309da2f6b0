"""What a job's notifications say: which events a view of the job shows (`due`), each event's message
(one pure function per event: title, text, fields), and that message in each target's format
(`payload`: a generic JSON webhook, Slack, Discord, SNS). Nothing here reads or sends anything:
orchestrator.jobs.notify does, once per event.

Events are read off the record and the trainer's documents, not off what one driver saw happen, so
whichever driver looks (a `spotctl watch`, the controller) finds the same events under the same keys:
    notice:<k>       attempt k got EC2's spot notice (the trainer's `interrupted`, or EC2's reason)
    checkpoint:<k>   attempt k saved a checkpoint on the notice (its heartbeat says so)
    attempt:<k>      attempt k (k >= 2) started: pool and price
    lost:<k>         the steps attempt k trained past its last checkpoint, trained again by attempt k+1
    budget           the budget stopped the job
    end              the job failed (reason, log tail) or succeeded (metrics, cost, savings, artifacts)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from orchestrator.jobs.state import JobView, age_s
from trainer.job.documents import EndReason, JobState, Manifest, Phase
from trainer.job.shown import clip, printable
from trainer.job.units import money, rate

if TYPE_CHECKING:
    from orchestrator.jobs.cost import JobCost

FENCE = "```"  # a code block in Slack and Discord
DETAIL_CHARS = 1500  # of a log tail: inside Slack's 3,000-character section and Discord's 4,096 description
LOG_TAIL_LINES = 20
# A job's end is told once its last machine is gone (its cost is then final), or this long after the
# trainer's final word when EC2 has not said so yet: inside watch's settle grace (120 s), which stops
# following the job after it.
END_SETTLE_S = 60.0
FAILED_STATES = (JobState.FAILED, JobState.NO_CAPACITY)
_LEVEL_COLOURS = {"info": 0x2EB67D, "warning": 0xECB22E, "error": 0xE01E5A}  # Discord embed colours


@dataclass(frozen=True)
class Message:
    """One notification, before it is put in a target's format."""

    key: str  # unique within the job: the record's notified[] is keyed by it
    event: str  # a trainer.job.spec.NOTIFY_EVENTS name (the `events:` filter)
    job_id: str
    title: str
    text: str
    fields: tuple[tuple[str, str], ...] = ()
    level: str = "info"  # info | warning | error
    detail: str | None = None  # a log tail, shown as a code block


# ------------------------------------------------------------------------------------------- due
def due(view: JobView, now: datetime | None = None) -> list[tuple[str, str]]:
    """(key, event) of every event the view shows has happened, in the order they happened."""
    record = view.record
    if record is None:
        return []
    found: list[tuple[str, str]] = []
    beat = view.heartbeat
    for index, attempt in enumerate(record.attempts):
        k = attempt.number
        if k >= 2 and attempt.instance_id:
            found.append((f"attempt:{k}", "attempt_started"))
        noticed = beat is not None and beat.of_attempt(k) and beat.in_phase(Phase.INTERRUPTED)
        if noticed or attempt.end_reason == EndReason.INTERRUPTED:
            found.append((f"notice:{k}", "notice"))
        if saved_on_notice(view, index) is not None:
            found.append((f"checkpoint:{k}", "checkpoint"))
        if lost_steps(view, index) is not None:
            found.append((f"lost:{k}", "work_lost"))
    if record.outcome == JobState.BUDGET_EXCEEDED:
        found.append(("budget", "budget_stop"))
    state = view.state
    if state in FAILED_STATES:
        found.append(("end", "failed"))
    elif state is JobState.SUCCEEDED and _settled(view, now):
        found.append(("end", "succeeded"))
    return found


def _settled(view: JobView, now: datetime | None) -> bool:
    if all(a.ended_at or not a.instance_id for a in view.record.attempts):
        return True
    finished = view.final.finished_at if view.final else None
    return age_s(finished, now) >= END_SETTLE_S if finished else False


def saved_on_notice(view: JobView, index: int) -> int | None:
    """The step attempt `index` checkpointed on its spot notice, if it did. Its own "interrupted"
    heartbeat says so while it is the latest; once the next attempt's heartbeat has replaced it, the
    record does: the attempt ended interrupted and its successor resumed from the very step it reached
    (no driver may have stepped the job in between: events lost, only the tick)."""
    attempts, beat = view.record.attempts, view.heartbeat
    attempt = attempts[index]
    if beat is not None and beat.of_attempt(attempt.number) and beat.in_phase(Phase.INTERRUPTED):
        return beat.last_checkpoint_step
    if attempt.end_reason != EndReason.INTERRUPTED or attempt.end_step is None or index + 1 >= len(attempts):
        return None
    after = attempts[index + 1]
    resumed = after.start_step
    if resumed is None and beat is not None and beat.of_attempt(after.number):
        resumed = beat.resumed_from_step
    return attempt.end_step if resumed == attempt.end_step else None


def lost_steps(view: JobView, index: int) -> tuple[int, int, int] | None:
    """(start, reached, resumed) when attempt `index` trained steps its successor trains again."""
    attempts = view.record.attempts
    if index + 1 >= len(attempts):
        return None
    attempt, after = attempts[index], attempts[index + 1]
    resumed = after.start_step
    if resumed is None and view.heartbeat is not None and view.heartbeat.of_attempt(after.number):
        resumed = view.heartbeat.resumed_from_step
    reached = attempt.end_step
    if reached is None or resumed is None or reached <= resumed:
        return None
    return attempt.start_step or 0, reached, resumed


# -------------------------------------------------------------------------------------- messages
def message(
    key: str,
    event: str,
    view: JobView,
    cost: JobCost | None,
    log_tail: str | None = None,
    manifest: Manifest | None = None,
    artifacts_url: str | None = None,
) -> Message:
    """The message of one event `due` found."""
    record, job = view.record, view.job_id
    name = printable(job)
    if event in ("notice", "checkpoint", "attempt_started", "work_lost"):
        number = int(key.split(":")[1])
        attempt = next(a for a in record.attempts if a.number == number)
        pool = f"{attempt.instance_type} {attempt.zone}"
        if event == "notice":
            step = attempt.end_step if attempt.end_step is not None else _beat_step(view, number)
            at = f" at step {step}" if step is not None else ""
            return Message(
                key,
                event,
                job,
                f"{name}: spot interruption notice",
                f"Attempt {number} on {pool} got EC2's spot interruption notice{at}; spotctl starts the next attempt.",
                (("attempt", str(number)), ("pool", pool), ("step", "-" if step is None else str(step))),
                "warning",
            )
        if event == "checkpoint":
            saved = saved_on_notice(view, next(i for i, a in enumerate(record.attempts) if a.number == number))
            return Message(
                key,
                event,
                job,
                f"{name}: checkpoint saved on the notice",
                f"Attempt {number} saved a checkpoint at step {saved} before its machine went: "
                "the next attempt resumes there.",
                (("attempt", str(number)), ("steps saved", str(saved))),
            )
        if event == "attempt_started":
            fields = [("attempt", str(number)), ("pool", pool), ("spot price", rate(attempt.spot_price))]
            if attempt.on_demand_price:
                fields.append(("on-demand price", rate(attempt.on_demand_price)))
            return Message(
                key,
                event,
                job,
                f"{name}: attempt {number} started",
                f"Attempt {number} started on {pool} at {rate(attempt.spot_price)} ({attempt.instance_id}).",
                tuple(fields),
            )
        index = record.attempts.index(attempt)
        start, reached, resumed = lost_steps(view, index)
        lost = reached - resumed
        usd = None
        if cost is not None and index < len(cost.attempts) and reached > start:
            usd = cost.attempts[index].usd * lost / (reached - start)
        return Message(
            key,
            event,
            job,
            f"{name}: work lost",
            f"Attempt {number} trained to step {reached}; attempt {number + 1} resumed from step {resumed}: "
            f"{lost} steps trained again" + (f", about {money(usd)}." if usd is not None else "."),
            (("attempt", str(number)), ("steps lost", str(lost)), ("cost lost", money(usd))),
            "warning",
        )
    spent = money(cost.total_usd) if cost else "-"
    if event == "budget_stop":
        return Message(
            key,
            event,
            job,
            f"{name}: stopped at the budget",
            f"{clip(printable(record.outcome_reason or 'the budget was reached'), 300)}; the trainer checkpoints and stops.",
            (("spent", spent), ("budget", money(record.budget_usd))),
            "warning",
        )
    if event == "failed":
        reason = record.outcome_reason or (view.final.error if view.final else None) or _last_end(view)
        return Message(
            key,
            event,
            job,
            f"{name}: {view.state}",
            f"The job ended {view.state}: {clip(printable(reason or 'no reason recorded'), 300)}",
            (("attempts", str(len(record.attempts))), ("spent", spent)),
            "error",
            detail=tail(log_tail) if log_tail else None,
        )
    if event == "succeeded":
        return _succeeded(key, view, cost, manifest, artifacts_url)
    raise ValueError(f"no message for event {event}")


def _succeeded(
    key: str, view: JobView, cost: JobCost | None, manifest: Manifest | None, artifacts_url: str | None
) -> Message:
    final, name = view.final, printable(view.job_id)
    fields: list[tuple[str, str]] = []
    # The trainer's final word: `metrics` of the last epoch, `best` as {metric, value, epoch} (trainer.loop).
    metrics = (final.metrics if final else None) or {}
    for metric in ("val_acc1", "val_acc5", "val_loss", "acc1", "loss"):
        value = metrics.get(metric)
        if _number(value):
            fields.append((metric, f"{value:.4g}"))
    best = (final.best if final else None) or {}
    if isinstance(best.get("metric"), str) and _number(best.get("value")):
        epoch = best.get("epoch")
        at = f" (epoch {epoch})" if isinstance(epoch, int) and not isinstance(epoch, bool) else ""
        fields.append(("best", f"{printable(best['metric'])[:40]} {best['value']:.4g}{at}"))
    attempts = len(view.record.attempts)
    fields.append(("attempts", str(attempts)))
    fields.append(("total cost", money(cost.total_usd) if cost else "-"))
    if cost is not None and cost.savings is not None:
        fields.append(("savings", f"{cost.savings:.0%} vs on-demand {money(cost.on_demand_usd)}"))
    else:
        fields.append(("savings", "-"))
    if manifest is not None and manifest.files:
        formats = sorted({f.format for f in manifest.files.values()})
        size = sum(f.size for f in manifest.files.values())
        fields.append(("artifacts", f"{len(manifest.files)} files ({', '.join(formats)}), {size / 1e6:.1f} MB"))
    else:
        fields.append(("artifacts", "none"))
    where = f" Artifacts: {artifacts_url}" if artifacts_url and manifest is not None and manifest.files else ""
    step = f" at step {final.step}" if final and final.step is not None else ""
    return Message(
        key,
        "succeeded",
        view.job_id,
        f"{name}: succeeded",
        f"The job succeeded{step} after {attempts} attempt{'s' if attempts != 1 else ''}.{where}",
        tuple(fields),
    )


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _beat_step(view: JobView, number: int) -> int | None:
    beat = view.heartbeat
    return beat.step if beat is not None and beat.of_attempt(number) else None


def _last_end(view: JobView) -> str | None:
    last = view.record.current
    if last is None or not last.end_reason:
        return None
    return f"attempt {last.number} ended {last.end_reason}" + (f" ({last.state_reason})" if last.state_reason else "")


def tail(log: str, lines: int = LOG_TAIL_LINES, limit: int = DETAIL_CHARS) -> str:
    """The last `lines` lines of a log, at most `limit` characters (the end kept: it says what failed)."""
    text = "\n".join(printable(line) for line in log.rstrip("\n").splitlines()[-lines:])
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


# --------------------------------------------------------------------------------------- formats
def payload(kind: str, note: Message, at: datetime | None = None) -> dict:
    """The message in a target's format: webhook (generic JSON), slack, discord, sns (Subject, Message)."""
    if kind == "webhook":
        return {
            "event": note.event,
            "key": note.key,
            "job_id": note.job_id,
            "level": note.level,
            "title": note.title,
            "text": note.text,
            "fields": dict(note.fields),
            "detail": note.detail,
            "at": (at or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        }
    if kind == "slack":
        blocks: list[dict] = [
            {"type": "header", "text": {"type": "plain_text", "text": note.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _slack(note.text)}},
        ]
        if note.fields:
            blocks.append(
                {
                    "type": "section",
                    "fields": [{"type": "mrkdwn", "text": f"*{_slack(k)}*\n{_slack(v)}"} for k, v in note.fields[:10]],
                }
            )
        if note.detail:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": f"{FENCE}{_slack(note.detail)}{FENCE}"}}
            )
        return {"text": f"{note.title}: {note.text}", "blocks": blocks}
    if kind == "discord":
        fenced = note.detail.replace(FENCE, "'''") if note.detail else None  # the log cannot close the block
        description = note.text + (f"\n{FENCE}\n{fenced}\n{FENCE}" if fenced else "")
        return {
            "content": note.title[:2000],
            "embeds": [
                {
                    "title": note.title[:256],
                    "description": description[:4096],
                    "color": _LEVEL_COLOURS[note.level],
                    "fields": [{"name": k[:256], "value": v[:1024], "inline": True} for k, v in note.fields[:25]],
                }
            ],
            "allowed_mentions": {"parse": []},  # a job name or log line saying @everyone pings nobody
        }
    if kind == "sns":
        lines = [note.text, *(f"{k}: {v}" for k, v in note.fields)]
        if note.detail:
            lines += ["", note.detail]
        # SNS subjects: ASCII, no line breaks, at most 100 characters.
        subject = note.title.encode("ascii", "replace").decode()[:100]
        return {"Subject": subject, "Message": "\n".join(lines)}
    raise ValueError(f"no format for notify target {kind}")


def _slack(text: str) -> str:
    """Slack's mrkdwn escapes: `<`, `>` and `&` would otherwise make links and mentions (<!channel>)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
