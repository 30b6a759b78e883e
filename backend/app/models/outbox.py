"""Work a fallback stood in for and that must be replayed: files waiting for the bucket, emails to send.

Both tables are written before (outbox) or as (pending sync) the fallback serves, so a crash or an
outage loses nothing; the replays (`StorageService.sync_pending`, `EmailService.resend_outbox`)
claim rows with a lease so two workers never send or upload the same row at once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .user import utcnow

# Outbox statuses: `sending` is a claimed row (its lease says until when); `failed` gave up after
# EMAIL_MAX_ATTEMPTS and waits for an operator.
QUEUED, SENDING, SENT, FAILED = "queued", "sending", "sent", "failed"


class PendingSync(db.Model):  # type: ignore[name-defined]
    """A file saved to local fallback storage while the bucket was failing; uploaded by the sync job."""

    __tablename__ = "storage_pending_sync"
    __table_args__ = (Index("ix_storage_pending_sync_open", "synced_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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
