"""The dead-letter queue: jobs that used up their attempts, kept with their errors and an analysis.

A dead letter is a job record with status `dead`; nothing is copied or dropped. Each one carries
a failure analysis, sorted the way seed 003 sorts them, with what an admin should do about it:

- `transient`: a dependency kept failing (5xx, timeouts, throttling) until attempts ran out;
  requeue when it has recovered.
- `data_issue`: the job's input is wrong (validation, not found, conflict); fix the data, then
  requeue, or archive.
- `system_issue`: our side cannot run it (credentials, permissions, resources, a kind no worker
  knows, a worker that keeps dying on it); fix the system, then requeue.
- `permanent`: anything else that will fail the same way (usually a bug); archive after reading.

After `DEAD_LETTER_TTL_DAYS` (default 7) a dead letter is archived (`archived_at` set; the record
and its history stay, hidden from the default list). Admins list, inspect, requeue and archive.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update

from ...log.redaction import redact_value
from ..extensions import db
from ..models.job import DEAD, FAILED, QUEUED, SUCCEEDED, Job, JobStep, JobWorker
from ..resilience.history import append_error
from ..timeutil import iso, utcnow

logger = logging.getLogger(__name__)

TRANSIENT, DATA_ISSUE, SYSTEM_ISSUE, PERMANENT = "transient", "data_issue", "system_issue", "permanent"
ANALYSES = (TRANSIENT, DATA_ISSUE, SYSTEM_ISSUE, PERMANENT)
ACTIONS = {
    TRANSIENT: "Requeue once the failing dependency has recovered.",
    DATA_ISSUE: "Fix the job's input data, then requeue it, or archive it.",
    SYSTEM_ISSUE: "Fix configuration, credentials or capacity, then requeue.",
    PERMANENT: "Read the error (usually a bug or a refused request), then archive.",
}
_DATA_STATUSES = frozenset({400, 404, 409, 410, 413, 415, 422})
_SYSTEM_STATUSES = frozenset({401, 403, 407})
_DATA_EXC = frozenset({"ValueError", "KeyError", "UnicodeDecodeError", "JSONDecodeError", "ValidationError"})
_SYSTEM_EXC = frozenset({"PermissionError", "MemoryError", "UnknownJobKindError", "ModuleNotFoundError", "ImportError"})
_DATA_WORDS = ("VALIDATION", "INVALID", "NOT_FOUND", "MALFORMED", "FILE_TOO_LARGE", "UNSUPPORTED")
_SYSTEM_WORDS = ("NOT_CONFIGURED", "RESOURCE", "AUTH", "PERMISSION", "WORKER_LOST", "UNKNOWN_JOB_KIND")


def analyse(history: Sequence[dict[str, Any]]) -> str:
    """The failure analysis of a job from its error history (the last error decides)."""
    if not history:
        return PERMANENT
    last = history[-1]
    code = str(last.get("code") or "").upper()
    exc_name = str(last.get("exc_type") or "").rsplit(".", 1)[-1]
    if code == "WORKER_LOST" or exc_name in _SYSTEM_EXC or last.get("status") in _SYSTEM_STATUSES:
        return SYSTEM_ISSUE
    if last.get("kind") in ("transient", "throttled"):
        return TRANSIENT
    if last.get("status") in _DATA_STATUSES or exc_name in _DATA_EXC or any(w in code for w in _DATA_WORDS):
        return DATA_ISSUE
    if any(w in code for w in _SYSTEM_WORDS):
        return SYSTEM_ISSUE
    return PERMANENT


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a list or bulk action means."""

    kind: str | None = None
    analysis: str | None = None
    since: datetime | None = None
    archived: bool = False

    def apply(self, stmt: Any) -> Any:
        """`stmt` narrowed to the matching dead letters."""
        stmt = stmt.where(Job.status == DEAD)
        stmt = stmt.where(Job.archived_at.is_not(None) if self.archived else Job.archived_at.is_(None))
        if self.kind:
            stmt = stmt.where(Job.kind == self.kind)
        if self.analysis:
            stmt = stmt.where(Job.failure_analysis == self.analysis)
        if self.since is not None:
            stmt = stmt.where(Job.dead_at >= self.since)
        return stmt


def summary(job: Job) -> dict[str, Any]:
    """The list view of a dead letter."""
    analysis = job.failure_analysis or PERMANENT
    return {
        "id": job.id,
        "kind": job.kind,
        "queue": job.queue,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "failure_analysis": analysis,
        "recommended_action": ACTIONS.get(analysis, ACTIONS[PERMANENT]),
        "last_error_code": job.last_error_code,
        "last_error_message": job.last_error_message,
        "created_at": iso(job.created_at),
        "dead_at": iso(job.dead_at),
        "archived_at": iso(job.archived_at),
    }


def detail(job: Job) -> dict[str, Any]:
    """The full view: payload (secrets masked), error history, steps done, compensations."""
    steps = db.session.execute(select(JobStep).where(JobStep.job_id == job.id).order_by(JobStep.created_at)).scalars()
    return {
        **summary(job),
        "idempotency_key": job.idempotency_key,
        "payload": redact_value("payload", job.payload or {}),
        "errors": list(job.errors or []),
        "steps": [{"name": s.name, "attempt": s.attempt, "time": iso(s.created_at)} for s in steps],
        "compensations": [
            {k: v for k, v in c.items() if k != "args"} | {"args": redact_value("args", c.get("args") or {})}
            for c in job.compensations or []
        ],
        "updated_at": iso(job.updated_at),
        "finished_at": iso(job.finished_at),
    }


def list_dead_letters(flt: DeadLetterFilter, *, page: int = 1, per_page: int = 50) -> tuple[list[Job], int]:
    """One page of dead letters (newest first) and the total matching."""
    total = db.session.execute(flt.apply(select(func.count()).select_from(Job))).scalar_one()
    stmt = flt.apply(select(Job)).order_by(Job.dead_at.desc(), Job.id.desc())
    items = db.session.execute(stmt.offset((page - 1) * per_page).limit(per_page)).scalars()
    return list(items), total


def get_dead_letter(job_id: int) -> Job | None:
    """A dead letter by id (archived ones too), or None."""
    job = db.session.get(Job, job_id)
    return job if job is not None and job.status == DEAD else None


def requeue(job_id: int, *, actor: str, now: datetime | None = None) -> bool:
    """Put a dead (or failed) job back in its queue with fresh attempts; False if it was not dead.

    Its error history stays. Steps whose compensation already ran are undone, so their ledger
    rows are removed and they run again; steps still in effect stay done.
    """
    at = now or utcnow()
    session = db.session
    stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    job = session.execute(stmt).scalar_one_or_none()
    if job is None or job.status not in (DEAD, FAILED):
        session.rollback()
        return False
    undone = [c for c in job.compensations or [] if c.get("state") == "done"]
    kept = [c for c in job.compensations or [] if c.get("state") != "done"]
    marker = {"attempt": job.attempts, "code": "REQUEUED", "kind": "requeue", "message": f"Requeued by {actor}"}
    marker["time"] = iso(at)
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == job.status, Job.attempts == job.attempts)
        .values(
            status=QUEUED,
            attempts=0,
            next_attempt_at=at,
            updated_at=at,
            finished_at=None,
            dead_at=None,
            archived_at=None,
            failure_analysis=None,
            errors=append_error(job.errors or [], marker),
            compensations=[{**c, "state": "pending", "attempts": 0} if c.get("state") == "failed" else c for c in kept],
            compensation_pending=False,
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).first() is None:
        session.rollback()
        return False
    names = [c["step"] for c in undone] + [f"compensate:{c['step']}" for c in undone]
    if names:
        session.execute(delete(JobStep).where(JobStep.job_id == job_id, JobStep.name.in_(names)))
    session.info.setdefault("jobs_wake", set()).add(job.queue)
    session.commit()
    logger.info("Job %s (%s) requeued by %s", job_id, job.kind, actor)
    return True


def requeue_matching(flt: DeadLetterFilter, *, actor: str, limit: int = 1000) -> list[int]:
    """Requeue every dead letter matching `flt` (at most `limit`); the ids requeued."""
    ids = list(db.session.execute(flt.apply(select(Job.id)).order_by(Job.id).limit(limit)).scalars())
    db.session.commit()
    return [job_id for job_id in ids if requeue(job_id, actor=actor)]


def archive(job_id: int, *, now: datetime | None = None) -> bool:
    """Archive one dead letter now; False if it is not an unarchived dead letter."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == DEAD, Job.archived_at.is_(None))
        .values(archived_at=now or utcnow())
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    done = db.session.execute(stmt).first() is not None
    db.session.commit()
    return done


def archive_expired(ttl_days: float, *, now: datetime | None = None) -> int:
    """Archive dead letters (and failed jobs) older than the TTL; the number archived."""
    at = now or utcnow()
    cutoff = at - timedelta(days=ttl_days)
    dead = db.session.execute(
        update(Job)
        .where(Job.status == DEAD, Job.archived_at.is_(None), Job.dead_at < cutoff)
        .values(archived_at=at)
        .execution_options(synchronize_session=False)
    ).rowcount
    failed = db.session.execute(
        update(Job)
        .where(Job.status == FAILED, Job.archived_at.is_(None), Job.finished_at < cutoff)
        .values(archived_at=at)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return int(dead or 0) + int(failed or 0)


def purge_succeeded(retention_days: float, *, now: datetime | None = None) -> int:
    """Delete succeeded job records (and their steps) older than the retention; the number deleted."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    old = select(Job.id).where(Job.status == SUCCEEDED, Job.finished_at < cutoff)
    db.session.execute(delete(JobStep).where(JobStep.job_id.in_(old)))
    count = db.session.execute(delete(Job).where(Job.id.in_(old))).rowcount
    db.session.execute(delete(JobWorker).where(JobWorker.stopped_at < cutoff))
    db.session.commit()
    return int(count or 0)
