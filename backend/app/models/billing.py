"""Render credits (one balance row per user plus an append-only ledger), purchases and Stripe events.

The balance is a counter changed only by conditional UPDATEs (`credits.py`), so two concurrent
renders cannot both spend the last credit; the ledger's unique `(kind, ref)` makes every grant,
consume, refund, claw-back and debt idempotent by its reference (a Checkout Session id, a render id,
a refund or dispute id). Invariants: `balance == sum(entries.amount)` and `debt == sum(entries.debt_change)`
per account. A debt is what a refund or dispute took back after the credits were already spent: it is
never a negative balance, renders are refused while it is owed, and the next grant settles it first.

`CreditPurchase` links a paid Checkout Session to its payment intent, so a later refund or dispute
(which names the charge's payment intent) finds the pack it claws back. `UnappliedPayment` is money
taken that granted nothing (or a money-back event we cannot match): kept for an admin, never dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..timeutil import utcnow

GRANT, CONSUME, REFUND = "grant", "consume", "refund"
# Money-back: `clawback` takes unspent credits of a refunded or disputed pack off the balance; `debt`
# records what was already spent (debt_change > 0); `debt_settled` pays a debt off from a later grant.
CLAWBACK, DEBT, DEBT_SETTLED = "clawback", "debt", "debt_settled"

# Purchase statuses.
PAID, PARTIALLY_REFUNDED, REFUNDED, DISPUTED = "paid", "partially_refunded", "refunded", "disputed"

# Unapplied payment statuses: `open` waits in the failed-work inbox; `applied` after a successful retry.
ISSUE_OPEN, ISSUE_APPLIED, ISSUE_DISCARDED = "open", "applied", "discarded"


class CreditAccount(db.Model):  # type: ignore[name-defined]
    """A user's current number of render credits."""

    __tablename__ = "credit_accounts"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_non_negative"),
        CheckConstraint("debt >= 0", name="debt_non_negative"),
    )

    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    balance: Mapped[int] = mapped_column(Integer, default=0)
    debt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # credits owed (see the docstring)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class CreditEntry(db.Model):  # type: ignore[name-defined]
    """One change to an account: its balance (`amount`) and its debt (`debt_change`), unique by kind and ref."""

    __tablename__ = "credit_entries"
    __table_args__ = (
        UniqueConstraint("kind", "ref", name="uq_credit_entries_kind_ref"),
        Index("ix_credit_entries_user", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Integer)
    debt_change: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reason: Mapped[str] = mapped_column(String(200))
    ref: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProcessedStripeEvent(db.Model):  # type: ignore[name-defined]
    """A Stripe webhook event already handled (Stripe delivers at least once; we act once)."""

    __tablename__ = "processed_stripe_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CreditPurchase(db.Model):  # type: ignore[name-defined]
    """A paid Checkout Session: the pack it granted and how much of it a refund or dispute took back."""

    __tablename__ = "credit_purchases"

    session_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    payment_intent: Mapped[str | None] = mapped_column(String(255), unique=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    pack: Mapped[str] = mapped_column(String(50))
    credits: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(8))
    clawed_back: Mapped[int] = mapped_column(Integer, default=0)  # credits taken back so far (<= credits)
    status: Mapped[str] = mapped_column(String(20), default=PAID)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class UnappliedPayment(db.Model):  # type: ignore[name-defined]
    """A Stripe event that moved money but could not be applied (money taken, nothing granted; an unknown charge)."""

    __tablename__ = "unapplied_payments"
    __table_args__ = (Index("ix_unapplied_payments_status", "status", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    event_type: Mapped[str] = mapped_column(String(100))
    object_id: Mapped[str | None] = mapped_column(String(255))  # the session, charge or dispute id
    reason_code: Mapped[str] = mapped_column(String(64))  # e.g. SESSION_METADATA_UNUSABLE, UNKNOWN_USER
    message: Mapped[str] = mapped_column(String(500))
    user_id: Mapped[int | None] = mapped_column(Integer)  # no foreign key: the user may be the unknown part
    amount_cents: Mapped[int | None] = mapped_column(Integer)
    currency: Mapped[str | None] = mapped_column(String(8))
    event: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the verified event, to apply it again
    status: Mapped[str] = mapped_column(String(16), default=ISSUE_OPEN)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    discarded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    discard_reason: Mapped[str | None] = mapped_column(String(500))
