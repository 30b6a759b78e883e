"""Purchases of credit packs: granted with their `CreditPurchase` row, clawed back by refunds and disputes.

A paid Checkout Session is recorded (session id → payment intent, pack, credits, amount) in the
same transaction as its grant, so a later refund or dispute, which names the charge's payment
intent, always finds the pack it came from. A claw-back moves the purchase's `clawed_back` up to a
target (refunds: in proportion to `amount_refunded / amount`, which Stripe reports cumulatively;
disputes: the whole pack), never above the pack and never down, and takes only the difference
(`credits.take_back_uncommitted`). The purchase row is locked first, so concurrent or out-of-order
money-back events for one charge are applied one at a time and never take the same credits twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models.billing import DISPUTED, GRANT, PAID, PARTIALLY_REFUNDED, REFUNDED, CreditPurchase
from ..services import credits
from ..timeutil import utcnow

logger = logging.getLogger(__name__)

# A purchase's status only moves forward, whatever order Stripe delivers its events in.
_STATUS_RANK = {PAID: 0, PARTIALLY_REFUNDED: 1, REFUNDED: 2, DISPUTED: 3}


@dataclass(frozen=True)
class PackSale:
    """What a paid Checkout Session sold."""

    session_id: str
    payment_intent: str | None
    user_id: int
    pack: str
    credits: int
    amount_cents: int
    currency: str

    @property
    def ref(self) -> str:
        """The ledger ref of its grant (the same as before purchases were recorded)."""
        return f"stripe:{self.session_id}"


@dataclass(frozen=True)
class Granted:
    """What recording a sale did: whether it granted now, and how many of its credits paid a debt off (ever)."""

    granted: bool
    debt_settled: int


@dataclass(frozen=True)
class ClawBack:
    """What one money-back event took from a purchase."""

    session_id: str
    user_id: int
    pack: str
    credits: int  # credits taken back by this event (taken + owed)
    taken: int  # from the balance
    owed: int  # recorded as debt (already spent)
    clawed_back: int  # of the pack so far
    status: str


def _purchase_values(sale: PackSale) -> dict[str, object]:
    now = utcnow()
    return {
        "session_id": sale.session_id,
        "payment_intent": sale.payment_intent,
        "user_id": sale.user_id,
        "pack": sale.pack[:50],
        "credits": sale.credits,
        "amount_cents": sale.amount_cents,
        "currency": sale.currency[:8],
        "clawed_back": 0,
        "status": PAID,
        "created_at": now,
        "updated_at": now,
    }


def grant_sale(sale: PackSale) -> Granted:
    """Record the purchase and grant its credits (debt first), once per session; committed."""
    credits.account(sale.user_id)  # the account (and its free credits) exists before the grant's transaction
    credits.insert_ignore(CreditPurchase.__table__, _purchase_values(sale))
    granted = credits.grant_uncommitted(sale.user_id, sale.credits, f"stripe checkout: {sale.pack} pack", sale.ref)
    if granted:
        try:
            db.session.commit()
        except IntegrityError:  # a concurrent delivery granted it first; our rows went with the rollback
            db.session.rollback()
            granted = False
    settled = credits.debt_settled_by(GRANT, sale.ref)  # read back, so a redelivery after a crash knows it too
    if not granted:
        # Granted before (a redelivery): the purchase went in with that grant, or predates purchases; record it now.
        credits.insert_ignore(CreditPurchase.__table__, _purchase_values(sale))
        db.session.commit()
        return Granted(False, settled)
    logger.info(
        "Granted %s credit(s) of the %s pack to user %s (session %s, payment intent %s%s)",
        sale.credits,
        sale.pack,
        sale.user_id,
        sale.session_id,
        sale.payment_intent,
        f"; {settled} paid a debt off" if settled else "",
    )
    return Granted(True, settled)


def refund_target(pack_credits: int, amount_refunded: int, amount: int) -> int:
    """Credits a refund of `amount_refunded` of `amount` takes back: in proportion, rounded down, at most the pack."""
    if amount <= 0 or amount_refunded >= amount:
        return pack_credits
    return min(pack_credits, pack_credits * max(amount_refunded, 0) // amount)


def claw_back(
    payment_intent: str,
    *,
    target: Callable[[CreditPurchase], int],
    status: str,
    reason: str,
    ref: str,
) -> ClawBack | None:
    """Take a purchase's credits back up to `target(purchase)`; None when no purchase has this payment intent.

    Committed. Idempotent: a target at or below what was already taken back takes nothing more, and
    the status only moves forward (paid → partially refunded → refunded → disputed).
    """
    db.session.commit()  # a fresh transaction whose first statement is the lock
    # Lock the purchase first (a no-op UPDATE): concurrent events for one charge queue here, and each
    # then reads what the one before it took back (SQLite: the write lock; PostgreSQL: the row lock).
    locked = db.session.execute(
        update(CreditPurchase)
        .where(CreditPurchase.payment_intent == payment_intent)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if not locked:
        db.session.rollback()
        return None
    purchase = db.session.execute(
        select(CreditPurchase)
        .where(CreditPurchase.payment_intent == payment_intent)
        .execution_options(populate_existing=True)
    ).scalar_one()
    before = ClawBack(
        purchase.session_id, purchase.user_id, purchase.pack, 0, 0, 0, purchase.clawed_back, purchase.status
    )
    goal = max(purchase.clawed_back, min(purchase.credits, target(purchase)))
    count = goal - purchase.clawed_back
    new_status = max(purchase.status, status, key=lambda s: _STATUS_RANK.get(s, 0))
    if count == 0 and new_status == purchase.status:
        db.session.rollback()
        return before
    try:
        took = credits.take_back_uncommitted(before.user_id, count, reason, ref) if count else credits.TakeBack(0, 0)
        db.session.execute(
            update(CreditPurchase)
            .where(CreditPurchase.session_id == before.session_id)
            .values(clawed_back=goal, status=new_status, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    except IntegrityError:  # this event's ref is in the ledger already: it was applied before
        db.session.rollback()
        logger.info("Claw-back %s for session %s was already recorded", ref, before.session_id)
        return before
    if count:
        logger.warning(
            "Took back %s credit(s) of the %s pack (session %s) from user %s: %s from the balance, %s as debt (%s)",
            count,
            before.pack,
            before.session_id,
            before.user_id,
            took.taken,
            took.owed,
            reason,
        )
    return ClawBack(before.session_id, before.user_id, before.pack, count, took.taken, took.owed, goal, new_status)
