"""Work a fallback stood in for and that must be replayed: files waiting for the bucket, emails to send.

Both tables are written before (outbox) or as (pending sync) the fallback serves, so a crash or an
outage loses nothing; the replays (`StorageService.sync_pending`, `EmailService.resend_outbox`)
claim rows with a lease so two workers never send or upload the same row at once.

A row that cannot be replayed (attempts used up, a permanent refusal, a vanished file) ends `failed`
with its real error and its history (`errors`): it waits in the failed-work inbox for an admin, who
retries it once the cause is fixed or discards it with a reason. Nothing ages out unseen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..timeutil import utcnow

# Outbox statuses: `sending` is a claimed row (its lease says until when); `failed` gave up (attempts
# used up, or SendGrid refused it for good) and waits in the failed-work inbox; `discarded`: an admin
# gave it up, with a reason (deleted after FAILED_WORK_RETENTION_DAYS).
QUEUED, SENDING, SENT, FAILED, DISCARDED = "queued", "sending", "sent", "failed", "discarded"

# Pending-sync statuses: `pending` waits for (or backs off before) its next upload; `synced` is in the
# bucket; `failed` used up its attempts or lost its local file (the inbox); `discarded` by an admin.
SYNC_PENDING, SYNC_SYNCED, SYNC_FAILED, SYNC_DISCARDED = "pending", "synced", "failed", "discarded"


class PendingSync(db.Model):  # type: ignore[name-defined]
    """A file saved to local fallback storage while the bucket was failing; uploaded by the sync job."""

    __tablename__ = "storage_pending_sync"
    __table_args__ = (
        Index("ix_storage_pending_sync_open", "synced_at", "id"),
        Index("ix_storage_pending_sync_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default=SYNC_PENDING, server_default=SYNC_PENDING)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Every failed attempt (code, kind, message, time), bounded like a job's history.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    discarded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    discard_reason: Mapped[str | None] = mapped_column(String(500))


class EmailOutbox(db.Model):  # type: ignore[name-defined]
    """One email, written before it is sent; `dedup_key` makes it unique and travels to SendGrid."""

    __tablename__ = "email_outbox"
    __table_args__ = (Index("ix_email_outbox_status", "status", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    to_address: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(500))
    text_body: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Sends whose outcome was unknown (a timeout or lost connection after the request went out): each
    # may have been delivered, so the resend that follows may duplicate it (the dedup key shows it).
    possible_duplicates: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Every failed attempt (code, kind, message, time), bounded like a job's history.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    discarded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    discard_reason: Mapped[str | None] = mapped_column(String(500))
