"""Periodic jobs of the services: replay the fallbacks' work, and keep the error statistics pruned.

`storage.sync` uploads fallback files to the bucket and `email.outbox` sends the queued emails
(render emails included: they are written to the outbox first, so this job is their durable path).
Both are idempotent and claim each row, so two workers never replay the same one. Both stop at the
first sign of an outage (the breaker rejects fast), so running them every minute costs one rejected
call while a service is down; one bad file or one refused email never blocks the others: it backs
off, or ends `failed` in the failed-work inbox. Each returns what is left, failed included. `monitoring.prune_errors`
applies the retention of raw error events and their rollups (ERROR_EVENT_RETENTION_DAYS,
ERROR_EVENT_MAX_ROWS, ERROR_ROLLUP_RETENTION_DAYS); rollups themselves are written with the events.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..jobs.context import JobContext
from ..jobs.registry import register_periodic

STORAGE_SYNC_EVERY_SECONDS = 60
EMAIL_OUTBOX_EVERY_SECONDS = 60
ERROR_PRUNE_EVERY_SECONDS = 3600


def storage_sync(ctx: JobContext) -> dict[str, Any]:
    """Upload files kept in local fallback storage to the bucket."""
    from . import get_storage

    storage = get_storage()
    uploaded = storage.sync_pending(int(current_app.config.get("STORAGE_SYNC_BATCH", 100)))
    if not uploaded:  # a file that failed to upload has its own warning line
        ctx.nothing_to_do()
    return {"uploaded": uploaded, "pending": storage.pending_sync_count(), "failed": storage.failed_sync_count()}


def email_outbox(ctx: JobContext) -> dict[str, Any]:
    """Send the queued emails of the outbox."""
    from . import get_email

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


def prune_errors(ctx: JobContext) -> dict[str, Any]:
    """Delete raw error events past their retention (age and row cap) and old rollups."""
    from ..extensions import db
    from ..monitoring.retention import prune_error_events

    cfg = current_app.config
    result = prune_error_events(
        db.engine,
        retention_days=int(cfg.get("ERROR_EVENT_RETENTION_DAYS", 14)),
        max_rows=cfg.get("ERROR_EVENT_MAX_ROWS"),
        rollup_retention_days=int(cfg.get("ERROR_ROLLUP_RETENTION_DAYS", 90)),
    )
    if not any(result.as_dict().values()):
        ctx.nothing_to_do()
    return result.as_dict()


register_periodic("storage.sync", STORAGE_SYNC_EVERY_SECONDS, storage_sync)
register_periodic("email.outbox", EMAIL_OUTBOX_EVERY_SECONDS, email_outbox)
register_periodic("monitoring.prune_errors", ERROR_PRUNE_EVERY_SECONDS, prune_errors)
