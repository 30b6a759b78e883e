"""Periodic replays of the fallbacks' work: upload fallback files to the bucket, send the email outbox.

Both are idempotent and stop at the first sign of an outage (the breaker rejects fast), so running
them every minute costs one rejected call while a service is down.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..jobs.context import JobContext
from ..jobs.registry import register_periodic

STORAGE_SYNC_EVERY_SECONDS = 60
EMAIL_OUTBOX_EVERY_SECONDS = 60


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


register_periodic("storage.sync", STORAGE_SYNC_EVERY_SECONDS, storage_sync)
register_periodic("email.outbox", EMAIL_OUTBOX_EVERY_SECONDS, email_outbox)
