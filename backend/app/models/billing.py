"""Render credits (one balance row per user plus an append-only ledger) and processed Stripe events.

The balance is a counter changed only by conditional UPDATEs (`credits.py`), so two concurrent
renders cannot both spend the last credit; the ledger's unique `(kind, ref)` makes every grant,
consume and refund idempotent by its reference (a Checkout Session id, a render id).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .user import utcnow

GRANT, CONSUME, REFUND = "grant", "consume", "refund"


class CreditAccount(db.Model):  # type: ignore[name-defined]
    """A user's current number of render credits."""

    __tablename__ = "credit_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_non_negative"),)

    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    balance: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class CreditEntry(db.Model):  # type: ignore[name-defined]
    """One change to a balance: a grant (+n), a consume (-1) or a refund (+1), unique by kind and ref."""

    __tablename__ = "credit_entries"
    __table_args__ = (
        UniqueConstraint("kind", "ref", name="uq_credit_entries_kind_ref"),
        Index("ix_credit_entries_user", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(200))
    ref: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProcessedStripeEvent(db.Model):  # type: ignore[name-defined]
    """A Stripe webhook event already handled (Stripe delivers at least once; we act once)."""

    __tablename__ = "processed_stripe_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
