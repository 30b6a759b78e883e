"""Stored responses of requests sent with an `Idempotency-Key` (the SQL store of `backend.app.edge.idempotency`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..timeutil import utcnow

# A row is `running` while its request holds the key (until `locked_until`), then `done` with the response.
RUNNING, DONE = "running", "done"


class IdempotencyRecord(db.Model):  # type: ignore[name-defined]
    """One (user, key): the request's fingerprint and, once it finished, its response for 24 hours."""

    __tablename__ = "idempotency_keys"
    # The unique constraint is the lock: of two concurrent INSERTs of one (user, key), exactly one wins.
    __table_args__ = (
        UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=RUNNING)
    token: Mapped[str] = mapped_column(String(32))
    locked_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    response_headers: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
