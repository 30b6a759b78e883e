"""The job kinds of the layers below the blueprints: the job system's own maintenance and the services' replays.

- `maintenance.noop` (benchmarks, smoke checks), the dead-letter TTL, the compensation sweep and the
  failed-work retention keep the job system itself tidy.
- `storage.sync` uploads fallback files to the bucket and `email.outbox` sends the queued emails
  (render emails included: they are written to the outbox first, so this job is their durable path).
  Both are idempotent and claim each row, so two workers never replay the same one. Both stop at the
  first sign of an outage (the breaker rejects fast), so running them every minute costs one rejected
  call while a service is down; one bad file or one refused email never blocks the others: it backs
  off, or ends `failed` in the failed-work inbox. Each returns what is left, failed included.

Kinds are code, registered once per process when this module is imported (create_app imports it);
how often a periodic kind runs is each app's own (`registry.schedule_for_app`). The blueprints and
monitoring declare their kinds in their own modules (`renders/jobs.py`, `monitoring/alerts/`,
`monitoring/errors/retention.py`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import current_app

from ..services import get_email, get_storage
from ..timeutil import utcnow
from .compensation import sweep_pending
from .context import JobContext
from .dead_letters import archive_expired, purge_succeeded
from .registry import job_kind, register_periodic

logger = logging.getLogger(__name__)

DEAD_LETTER_TTL_EVERY_SECONDS = 3600
COMPENSATION_SWEEP_EVERY_SECONDS = 60
FAILED_WORK_RETENTION_EVERY_SECONDS = 3600
STORAGE_SYNC_EVERY_SECONDS = 60
EMAIL_OUTBOX_EVERY_SECONDS = 60


@job_kind("maintenance.noop", queue="default", max_attempts=1)
def noop(ctx: JobContext) -> dict[str, Any]:
    """Do nothing but go through the full record keeping (claim, lease, complete)."""
    return {"job_id": ctx.job_id}


def dead_letter_ttl(ctx: JobContext) -> dict[str, Any]:
    """Archive dead letters past DEAD_LETTER_TTL_DAYS; drop succeeded records past their retention."""
    from . import runtime

    settings = runtime().settings
    archived = archive_expired(settings.dead_letter_ttl_days)
    purged = purge_succeeded(settings.succeeded_retention_days)
    if archived or purged:
        logger.info("Dead-letter TTL: %s archived, %s old succeeded jobs purged", archived, purged)
    else:
        ctx.nothing_to_do()
    return {"archived": archived, "purged_succeeded": purged, "ttl_days": settings.dead_letter_ttl_days}


def compensation_sweep(ctx: JobContext) -> dict[str, Any]:
    """Apply compensations left pending (a worker died right after a job ended, or one failed)."""
    applied = sweep_pending(limit=int(current_app.config.get("JOBS_COMPENSATION_SWEEP_LIMIT", 100)))
    if not applied:
        ctx.nothing_to_do()
    return {"applied": applied}


class FailedWorkPurgeError(RuntimeError):
    """A failed-work source could not be purged (the others were)."""


def failed_work_retention(ctx: JobContext) -> dict[str, Any]:
    """Delete what the failed-work inbox gave up more than FAILED_WORK_RETENTION_DAYS ago (every source).

    Archived dead letters, discarded emails and files, and long-finished outbox and sync rows go; open
    items never do. A source that fails is retried with the job; the others are purged first.
    """
    days = float(current_app.config.get("FAILED_WORK_RETENTION_DAYS", 30))
    result = current_app.extensions["inbox"].purge(utcnow() - timedelta(days=days))
    if result.total:
        logger.info("Failed-work retention (%s days): deleted %s", days, result.deleted)
    elif not result.failed:
        ctx.nothing_to_do()
    if result.failed:
        raise FailedWorkPurgeError(f"failed-work purge failed for {', '.join(sorted(result.failed))}: {result.failed}")
    return {"deleted": result.deleted, "retention_days": days}


def storage_sync(ctx: JobContext) -> dict[str, Any]:
    """Upload files kept in local fallback storage to the bucket."""
    storage = get_storage()
    uploaded = storage.sync_pending(int(current_app.config.get("STORAGE_SYNC_BATCH", 100)))
    if not uploaded:  # a file that failed to upload has its own warning line
        ctx.nothing_to_do()
    return {"uploaded": uploaded, "pending": storage.pending_sync_count(), "failed": storage.failed_sync_count()}


def email_outbox(ctx: JobContext) -> dict[str, Any]:
    """Send the queued emails of the outbox."""
    email = get_email()
    sent = email.resend_outbox(int(current_app.config.get("EMAIL_OUTBOX_BATCH", 100)))
    if not sent:  # an email that failed to send has its own warning line
        ctx.nothing_to_do()
    return {
        "sent": sent,
        "queued": email.outbox_count(),
        "failed": email.failed_count(),
        "possible_duplicates": email.possible_duplicates(),
    }


register_periodic("maintenance.dead_letter_ttl", DEAD_LETTER_TTL_EVERY_SECONDS, dead_letter_ttl)
register_periodic("maintenance.compensations", COMPENSATION_SWEEP_EVERY_SECONDS, compensation_sweep)
register_periodic("maintenance.failed_work_retention", FAILED_WORK_RETENTION_EVERY_SECONDS, failed_work_retention)
register_periodic("storage.sync", STORAGE_SYNC_EVERY_SECONDS, storage_sync)
register_periodic("email.outbox", EMAIL_OUTBOX_EVERY_SECONDS, email_outbox)
