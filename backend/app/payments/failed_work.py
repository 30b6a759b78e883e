"""The failed-work inbox's "payment" source: Stripe events that moved money and could not be applied.

Reads and acts on `unapplied_payments` (see `unapplied`): open items are in the inbox, oldest
first; `retry` applies the kept, verified event again (e.g. once the missing user was restored, or
the pack of a refunded charge was found) and closes the item, or adds the new failure to its
history; `discard` gives it up with the admin's reason; `purge` deletes items discarded (or
applied) before the retention cut-off. Built and registered by `create_app`, not here.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update

from ..extensions import db
from ..models.billing import ISSUE_APPLIED, ISSUE_DISCARDED, ISSUE_OPEN, UnappliedPayment
from ..monitoring.inbox import FailedItem
from ..resilience.history import append_error
from ..timeutil import iso, utcnow
from .events import reapply
from .unapplied import clean_text

logger = logging.getLogger(__name__)

_STATUS = {ISSUE_OPEN: "failed", ISSUE_DISCARDED: "discarded", ISSUE_APPLIED: "applied"}
_WHAT = {
    "checkout.session.completed": "paid Checkout Session",
    "checkout.session.async_payment_succeeded": "paid Checkout Session (delayed payment)",
    "charge.refunded": "refund of charge",
    "charge.dispute.created": "dispute",
}


def _amount(row: UnappliedPayment) -> str:
    if row.amount_cents is None:
        return ""
    return f" ({row.amount_cents / 100:.2f} {(row.currency or '').upper()})".replace(" )", ")")


def _object(row: UnappliedPayment) -> dict[str, Any]:
    obj = ((row.event or {}).get("data") or {}).get("object") or {}
    return obj if isinstance(obj, dict) else {}


def to_item(row: UnappliedPayment) -> FailedItem:
    """The inbox's view of one unapplied payment."""
    obj = _object(row)
    what = _WHAT.get(row.event_type, row.event_type)
    return FailedItem(
        kind=PaymentInboxSource.kind,
        id=row.id,
        title=f"{what} {row.object_id or row.event_id}{_amount(row)}: not applied",
        error_code=row.reason_code,
        error_message=row.message,
        created_at=row.created_at,
        failed_at=row.created_at,
        attempts=int(row.attempts or 0),
        history=list(row.errors or []),
        details={
            "event_id": row.event_id,
            "event_type": row.event_type,
            "object_id": row.object_id,
            "payment_intent": obj.get("payment_intent"),
            "amount_cents": row.amount_cents,
            "currency": row.currency,
            "user_id": row.user_id,
            "customer_email": obj.get("customer_email") or (obj.get("customer_details") or {}).get("email"),
            "resolved_at": iso(row.resolved_at),
            "discarded_at": iso(row.discarded_at),
            "discard_reason": row.discard_reason,
        },
        status=_STATUS.get(row.status, row.status),
    )


class PaymentInboxSource:
    """Open `UnappliedPayment`s as failed work (the `InboxSource` protocol, kind "payment")."""

    kind = "payment"

    def count(self, *, failed_before: datetime | None = None) -> int:
        """Open items (only those kept before `failed_before`, when given)."""
        query = select(func.count()).select_from(UnappliedPayment).where(UnappliedPayment.status == ISSUE_OPEN)
        if failed_before is not None:
            query = query.where(UnappliedPayment.created_at < failed_before)
        return int(db.session.scalar(query) or 0)

    def oldest(self) -> datetime | None:
        """When the oldest open item was kept."""
        return db.session.scalar(
            select(func.min(UnappliedPayment.created_at)).where(UnappliedPayment.status == ISSUE_OPEN)
        )

    def items(self, *, limit: int, offset: int = 0) -> list[FailedItem]:
        """Open items, oldest first."""
        rows = db.session.scalars(
            select(UnappliedPayment)
            .where(UnappliedPayment.status == ISSUE_OPEN)
            .order_by(UnappliedPayment.created_at, UnappliedPayment.id)
            .limit(limit)
            .offset(offset)
        ).all()
        return [to_item(row) for row in rows]

    def get(self, item_id: int) -> FailedItem | None:
        """One item, open, applied or discarded (until purged)."""
        row = db.session.execute(
            select(UnappliedPayment).where(UnappliedPayment.id == item_id).execution_options(populate_existing=True)
        ).scalar_one_or_none()
        return to_item(row) if row is not None else None

    def retry(self, item_id: int, *, actor: str) -> bool:
        """Apply the kept event again: applied and closed, or the new failure in its history; False if not open."""
        return reapply(item_id, actor=actor)

    def discard(self, item_id: int, *, reason: str, actor: str) -> bool:
        """Give the item up with the admin's reason (kept until purged); False if not open."""
        row = db.session.get(UnappliedPayment, item_id, populate_existing=True)
        if row is None or row.status != ISSUE_OPEN:
            db.session.rollback()
            return False
        now = utcnow()
        why = clean_text(reason, 500)
        history = append_error(
            row.errors or [],
            {
                "code": "DISCARDED",
                "kind": "discard",
                "message": f"Discarded by {actor}: {why}",
                "time": iso(now),
                "actor": actor,
            },
        )
        changed = db.session.execute(
            update(UnappliedPayment)
            .where(UnappliedPayment.id == item_id, UnappliedPayment.status == ISSUE_OPEN)
            .values(status=ISSUE_DISCARDED, discarded_at=now, discard_reason=why, updated_at=now, errors=history)
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
        if changed:
            logger.warning("Unapplied payment %s (event %s) discarded by %s: %s", item_id, row.event_id, actor, why)
        return changed == 1

    def purge(self, before: datetime) -> int:
        """Delete items discarded, or applied, before `before`; the number deleted."""
        deleted = db.session.execute(
            delete(UnappliedPayment)
            .where(
                or_(
                    (UnappliedPayment.status == ISSUE_DISCARDED) & (UnappliedPayment.discarded_at < before),
                    (UnappliedPayment.status == ISSUE_APPLIED) & (UnappliedPayment.resolved_at < before),
                )
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
        if deleted:
            logger.info("Purged %s unapplied payment(s) given up or applied before %s", deleted, iso(before))
        return int(deleted or 0)
