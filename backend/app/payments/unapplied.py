"""Stripe events that moved money but cannot be applied: kept durably, alerted, never acknowledged quietly.

A paid Checkout Session whose metadata is unusable or names an unknown user took the customer's
money and granted nothing; a refund or dispute of a charge we never sold gave money back and took
nothing back. Either way the event is kept in `unapplied_payments` (one row per event id, the
verified event with it so it can be applied again), a CRITICAL line says what happened, and an
error event with the stable code `PAYMENT_NOT_APPLIED` is recorded, so a `code_count` alert rule
pages someone. Only then does Stripe get its 2xx: a 5xx would make it retry an event that can
never apply until a human acts (the failed-work inbox, `failed_work.PaymentInboxSource`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from ...log.redaction import clean_text as _clean
from ..errors import APIError
from ..extensions import db
from ..models.billing import ISSUE_APPLIED, ISSUE_OPEN, UnappliedPayment
from ..resilience.history import append_error
from ..services.credits import insert_ignore
from ..timeutil import iso, utcnow

logger = logging.getLogger(__name__)

ALERT_CODE = "PAYMENT_NOT_APPLIED"
MONEY_BACK_EVENTS = frozenset({"charge.refunded", "charge.dispute.created"})

# Reason codes (UnappliedPayment.reason_code): what is wrong with the event.
SESSION_METADATA_UNUSABLE = "SESSION_METADATA_UNUSABLE"
UNKNOWN_USER = "UNKNOWN_USER"
UNKNOWN_CHARGE = "UNKNOWN_CHARGE"
CHARGE_UNUSABLE = "CHARGE_UNUSABLE"


class PaymentNotAppliedError(APIError):
    """A Stripe event moved money but could not be applied; it waits in the failed-work inbox (never an API answer)."""

    # Recorded for error statistics and alerts only; the webhook still answers 2xx so Stripe stops retrying.
    status_code = 500
    code = ALERT_CODE


class NotAppliedError(Exception):
    """Why an event cannot be applied: a reason code, a message for an admin and the facts of the payment."""

    def __init__(
        self,
        reason_code: str,
        message: str,
        *,
        object_id: str | None = None,
        user_id: int | None = None,
        amount_cents: int | None = None,
        currency: str | None = None,
        money_back: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message
        self.object_id = object_id
        self.user_id = user_id
        self.amount_cents = amount_cents
        self.currency = currency
        self.money_back = money_back  # money went back to the customer (refund, dispute), none was taken

    @property
    def consequence(self) -> str:
        """What it means for the business, in a few words (the start of the CRITICAL line)."""
        if self.money_back:
            return "Money returned to the customer, no credits taken back"
        return "Money taken, nothing granted"

    def history_entry(self, attempt: int, actor: str, at: datetime | None = None) -> dict[str, Any]:
        """One entry of the item's history, shaped like the other inbox sources' entries."""
        return {
            "attempt": attempt,
            "code": self.reason_code,
            "kind": "permanent",  # needs a human: retrying the same event alone cannot change the outcome
            "message": clean_text(self.message, 500),
            "time": iso(at or utcnow()),
            "actor": actor,
        }


def clean_text(text: str, limit: int) -> str:
    """Secrets masked and control characters escaped, cut to `limit` characters."""
    return _clean(text)[:limit]


def record(event: Mapping[str, Any], problem: NotAppliedError) -> bool:
    """Keep the event durably (committed) and alert, once per event id; False when it was kept before."""
    event_id, event_type = str(event.get("id") or ""), str(event.get("type") or "")
    inserted = insert_ignore(
        UnappliedPayment.__table__,
        {
            "event_id": event_id,
            "event_type": event_type[:100],
            "object_id": (problem.object_id or "")[:255] or None,
            "reason_code": problem.reason_code[:64],
            "message": clean_text(problem.message, 500),
            "user_id": problem.user_id,
            "amount_cents": problem.amount_cents,
            "currency": (problem.currency or "")[:8] or None,
            "event": dict(event),
            "status": ISSUE_OPEN,
            "attempts": 1,
            "errors": [problem.history_entry(1, "stripe webhook")],
        },
    )
    db.session.commit()  # durable before Stripe hears a 2xx
    if not inserted:
        logger.info("Unapplied Stripe event %s (%s) was already kept", event_id, problem.reason_code)
        return False
    item_id = db.session.scalar(select(UnappliedPayment.id).where(UnappliedPayment.event_id == event_id))
    alert(event_id, event_type, problem, item_id)
    return True


def alert(event_id: str, event_type: str, problem: NotAppliedError, item_id: int | None) -> None:
    """The CRITICAL line and the PAYMENT_NOT_APPLIED error event (never raises)."""
    from ..monitoring import record_error  # monitoring sits above the blueprints; imported when used

    amount = (
        f"{problem.amount_cents / 100:.2f} {(problem.currency or '').upper()}".strip()
        if problem.amount_cents is not None
        else "amount unknown"
    )
    logger.critical(
        "%s: Stripe event %s (%s, %s, %s) cannot be applied: %s [%s]; kept in the failed-work inbox as payment %s",
        problem.consequence,
        event_id,
        event_type,
        problem.object_id or "no object id",
        amount,
        problem.message,
        problem.reason_code,
        item_id,
    )
    error = PaymentNotAppliedError(
        f"{problem.consequence}: {problem.message}",
        details={"reason": problem.reason_code, "event_type": event_type},
    )
    record_error(
        error,
        "payments",
        code=ALERT_CODE,
        endpoint=f"stripe:{event_type}"[:255],
        context={
            "event_id": event_id,
            "event_type": event_type,
            "reason": problem.reason_code,
            "object_id": problem.object_id,
            "user_id": problem.user_id,
            "amount_cents": problem.amount_cents,
            "currency": problem.currency,
            "inbox_id": item_id,
        },
    )


def load(item_id: int) -> UnappliedPayment | None:
    """One item, read fresh from the database."""
    return db.session.execute(
        select(UnappliedPayment).where(UnappliedPayment.id == item_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()


def mark_applied(item_id: int, *, actor: str, note: str) -> bool:
    """Close an open item as applied (committed); False when it was no longer open."""
    item = load(item_id)
    if item is None or item.status != ISSUE_OPEN:
        db.session.rollback()
        return False
    history = append_error(
        item.errors or [],
        # Shaped like the other inbox sources' markers (RETRIED, DISCARDED), so one history view reads all.
        {
            "code": "APPLIED",
            "kind": "retry",
            "message": f"Applied by {actor}: {note}",
            "time": iso(utcnow()),
            "actor": actor,
        },
    )
    now = utcnow()
    changed = db.session.execute(
        update(UnappliedPayment)
        .where(UnappliedPayment.id == item_id, UnappliedPayment.status == ISSUE_OPEN)
        .values(status=ISSUE_APPLIED, resolved_at=now, updated_at=now, errors=history)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return changed == 1


def record_failure(item_id: int, problem: NotAppliedError, *, actor: str) -> bool:
    """Add a failed attempt to an open item's history (committed); False when it was no longer open."""
    item = load(item_id)
    if item is None or item.status != ISSUE_OPEN:
        db.session.rollback()
        return False
    attempt = int(item.attempts or 0) + 1
    changed = db.session.execute(
        update(UnappliedPayment)
        .where(UnappliedPayment.id == item_id, UnappliedPayment.status == ISSUE_OPEN)
        .values(
            attempts=attempt,
            reason_code=problem.reason_code[:64],
            message=clean_text(problem.message, 500),
            user_id=problem.user_id if problem.user_id is not None else item.user_id,
            errors=append_error(item.errors or [], problem.history_entry(attempt, actor)),
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return changed == 1


def waiting_for(payment_intent: str) -> list[int]:
    """Open money-back items (refunds, disputes) that named this payment intent before we knew its purchase."""
    rows = db.session.execute(
        select(UnappliedPayment.id, UnappliedPayment.event)
        .where(
            UnappliedPayment.status == ISSUE_OPEN,
            UnappliedPayment.reason_code == UNKNOWN_CHARGE,
            UnappliedPayment.event_type.in_(MONEY_BACK_EVENTS),
        )
        .order_by(UnappliedPayment.created_at, UnappliedPayment.id)
    ).all()
    # Few rows (open items are rare) and the intent lives inside the JSON event: filtered here, portably.
    return [row.id for row in rows if _payment_intent_of(row.event) == payment_intent]


def _payment_intent_of(event: Mapping[str, Any] | None) -> str | None:
    obj = ((event or {}).get("data") or {}).get("object") or {}
    value = obj.get("payment_intent")
    return value if isinstance(value, str) else None
