"""Dead jobs as the failed-work inbox sees them (kind "job"): the dead-letter queue, one row per job.

- In the inbox: a job with status `dead` that is not archived (its `dead_at` is when it failed).
- Retry: `dead_letters.requeue` (fresh attempts, the error history kept, a REQUEUED marker).
- Discard: archived now with the admin's reason in `archive_reason` and a DISCARDED marker in its
  history; it leaves the inbox but stays on record (`get` still shows it) until the purge.
- Purge: archived dead letters, and archived `failed` jobs (periodic ticks that gave up), whose
  `archived_at` is older than the retention are deleted with their steps. Archiving itself is
  unchanged: an admin's discard, or the DEAD_LETTER_TTL_DAYS auto-archive (7 days by default).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from ....log.redaction import redact, redact_value
from ...extensions import db
from ...jobs.dead_letters import ACTIONS, PERMANENT, requeue
from ...models.job import DEAD, FAILED, Job, JobStep
from ...resilience.history import append_error
from ...timeutil import as_utc, iso, utcnow
from . import FailedItem

logger = logging.getLogger(__name__)

KIND = "job"
PURGE_BATCH = 500  # rows per delete: a large backlog is purged in short transactions


def _open() -> Any:
    return (Job.status == DEAD) & Job.archived_at.is_(None)


def _status(job: Job) -> str:
    if job.archived_at is None:
        return "failed"
    return "discarded" if job.archive_reason else "archived"  # no reason: the TTL archived it


def _item(job: Job) -> FailedItem:
    analysis = job.failure_analysis or PERMANENT
    return FailedItem(
        kind=KIND,
        id=job.id,
        title=f"{job.kind} job {job.id}",
        error_code=job.last_error_code,
        error_message=redact(job.last_error_message) if job.last_error_message else None,
        created_at=as_utc(job.created_at),
        failed_at=as_utc(job.dead_at),
        attempts=job.attempts,
        history=redact_value("history", list(job.errors or [])),
        details={
            **redact_value(
                "details",
                {
                    "job_kind": job.kind,
                    "queue": job.queue,
                    "max_attempts": job.max_attempts,
                    "failure_analysis": analysis,
                    "recommended_action": ACTIONS.get(analysis, ACTIONS[PERMANENT]),
                    "archived_at": iso(job.archived_at),
                    "archive_reason": job.archive_reason,
                },
            ),
            "payload": redact_value("payload", job.payload or {}),  # as the dead-letter view masks it
        },
        status=_status(job),
    )


class JobInboxSource:
    """Dead letters that are not archived; see the module docstring."""

    kind = KIND

    def count(self, *, failed_before: datetime | None = None) -> int:
        """Unarchived dead letters (that died before `failed_before`, when given)."""
        stmt = select(func.count()).select_from(Job).where(_open())
        if failed_before is not None:
            stmt = stmt.where(Job.dead_at < failed_before)
        return int(db.session.execute(stmt).scalar_one())

    def oldest(self) -> datetime | None:
        """When the oldest unarchived dead letter died."""
        return as_utc(db.session.execute(select(func.min(Job.dead_at)).where(_open())).scalar_one())

    def items(self, *, limit: int, offset: int = 0) -> list[FailedItem]:
        """Unarchived dead letters, oldest death first."""
        stmt = select(Job).where(_open()).order_by(Job.dead_at, Job.id).offset(offset).limit(limit)
        return [_item(job) for job in db.session.execute(stmt).scalars()]

    def get(self, item_id: int) -> FailedItem | None:
        """A dead letter, archived or not, or None."""
        job = db.session.get(Job, item_id, populate_existing=True)
        return _item(job) if job is not None and job.status == DEAD else None

    def retry(self, item_id: int, *, actor: str) -> bool:
        """Requeue an unarchived dead letter; False if it is not one."""
        job = db.session.get(Job, item_id, populate_existing=True)
        if job is None or job.status != DEAD or job.archived_at is not None:
            db.session.rollback()
            return False
        return requeue(item_id, actor=actor)

    def discard(self, item_id: int, *, reason: str, actor: str) -> bool:
        """Archive an unarchived dead letter with the admin's reason and a DISCARDED marker in its history."""
        at = utcnow()
        job = db.session.get(Job, item_id, populate_existing=True)
        if job is None or job.status != DEAD or job.archived_at is not None:
            db.session.rollback()
            return False
        marker = {
            "attempt": job.attempts,
            "code": "DISCARDED",
            "kind": "discard",
            "message": redact(f"Discarded by {actor}: {reason}"),
            "time": iso(at),
        }
        done = db.session.execute(
            update(Job)
            # The attempt number fences the write: a job requeued and dead again meanwhile is not this one.
            .where(Job.id == item_id, _open(), Job.attempts == job.attempts)
            .values(
                archived_at=at,
                archive_reason=reason[:500],
                updated_at=at,
                errors=append_error(job.errors or [], marker),
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).first()
        db.session.commit()
        return done is not None

    def purge(self, before: datetime) -> int:
        """Delete archived dead letters and archived failed jobs archived before `before`, with their steps."""
        deleted = 0
        given_up = select(Job.id).where(Job.status.in_((DEAD, FAILED)), Job.archived_at < before)
        while True:
            ids = list(db.session.execute(given_up.order_by(Job.id).limit(PURGE_BATCH)).scalars())
            if not ids:
                break
            gone = list(
                db.session.execute(
                    # Re-checked in the DELETE: a job requeued since it was selected is no longer archived.
                    delete(Job)
                    .where(Job.id.in_(ids), Job.status.in_((DEAD, FAILED)), Job.archived_at < before)
                    .returning(Job.id)
                    .execution_options(synchronize_session=False)
                ).scalars()
            )
            if gone:  # the foreign key cascades too; said here for databases that do not enforce it
                db.session.execute(delete(JobStep).where(JobStep.job_id.in_(gone)))
            deleted += len(gone)
            db.session.commit()
            if len(ids) < PURGE_BATCH:
                break
        if deleted:
            logger.info("Failed-work purge: deleted %s archived job record(s)", deleted)
        return deleted
