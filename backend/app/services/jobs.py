"""Periodic jobs of the services: replay the fallbacks' work, and keep the error statistics pruned.

`storage.sync` uploads fallback files to the bucket and `email.outbox` sends the queued emails
(render emails included: they are written to the outbox first, so this job is their durable path).
Both are idempotent and stop at the first sign of an outage (the breaker rejects fast), so running
them every minute costs one rejected call while a service is down. `monitoring.prune_errors`
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

    uploaded = get_storage().sync_pending(int(current_app.config.get("STORAGE_SYNC_BATCH", 100)))
    return {"uploaded": uploaded, "pending": get_storage().pending_sync_count()}


def email_outbox(ctx: JobContext) -> dict[str, Any]:
    """Send the queued emails of the outbox."""
    from . import get_email

    sent = get_email().resend_outbox(int(current_app.config.get("EMAIL_OUTBOX_BATCH", 100)))
    return {"sent": sent, "queued": get_email().outbox_count()}


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
    return result.as_dict()


register_periodic("storage.sync", STORAGE_SYNC_EVERY_SECONDS, storage_sync)
register_periodic("email.outbox", EMAIL_OUTBOX_EVERY_SECONDS, email_outbox)
register_periodic("monitoring.prune_errors", ERROR_PRUNE_EVERY_SECONDS, prune_errors)
