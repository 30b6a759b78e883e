"""Stripe webhook events, each processed once: sales grant credits, refunds and disputes take them back.

| event | what we do |
| --- | --- |
| `checkout.session.completed`, paid | record the purchase and grant its pack (debt first), email the receipt |
| `checkout.session.completed`, unpaid | nothing yet: a delayed payment method; its outcome comes later |
| `checkout.session.async_payment_succeeded` | as a paid completion (the same ref: granted once) |
| `checkout.session.async_payment_failed` | nothing granted; the user is told nothing was charged |
| `checkout.session.expired` | nothing granted (no money was taken); logged |
| `charge.refunded` | claw back in proportion to `amount_refunded / amount` (cumulative, at most the pack) |
| `charge.dispute.created` | claw back what is left of the pack |

What cannot be applied (a paid session with unusable metadata or an unknown user, money back for
a charge we never sold) raises `NotAppliedError`: the event is kept in the failed-work inbox and alerted
(`unapplied.record`) and Stripe still gets its 2xx. Idempotent at every step, so a redelivery after
a crash anywhere finishes the work and never repeats it: grants by the session's ref, claw-backs by
the purchase's `clawed_back` and the event's ref, emails by their dedup keys, and the event id is
recorded last (`processed_stripe_events`) so later deliveries are acknowledged without work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import ProcessedStripeEvent, User
from ..models.billing import DISPUTED, ISSUE_OPEN, PARTIALLY_REFUNDED, REFUNDED
from ..services import credits, get_email
from . import notices, unapplied
from .purchases import ClawBack, PackSale, claw_back, grant_sale, refund_target
from .unapplied import CHARGE_UNUSABLE, SESSION_METADATA_UNUSABLE, UNKNOWN_CHARGE, UNKNOWN_USER, NotAppliedError

logger = logging.getLogger(__name__)

Outcome = dict[str, Any]


def already_processed(event_id: str) -> bool:
    """Whether this event id was handled before."""
    return (
        db.session.scalar(select(ProcessedStripeEvent.event_id).where(ProcessedStripeEvent.event_id == event_id))
        is not None
    )


def process_event(event: dict[str, Any]) -> Outcome:
    """Handle one verified event once; what was done (`duplicate`, `credits_granted`, `unapplied`, ...)."""
    event_id, event_type = str(event.get("id") or ""), str(event.get("type") or "")
    if not event_id:
        return {"received": True, "ignored": "event without id"}
    if already_processed(event_id):
        logger.info("Stripe event %s (%s) already processed", event_id, event_type)
        return {"received": True, "duplicate": True}
    outcome: Outcome = {"received": True, "duplicate": False}
    try:
        outcome.update(apply_event(event))
    except NotAppliedError as problem:
        unapplied.record(event, problem)  # durable and alerted before Stripe hears the 2xx
        outcome.update(_unapplied_outcome(problem))
    db.session.add(ProcessedStripeEvent(event_id=event_id, type=event_type[:100]))
    try:
        db.session.commit()
    except IntegrityError:  # a concurrent delivery of the same event finished first; our work was idempotent
        db.session.rollback()
        outcome["duplicate"] = True
    return outcome


def apply_event(event: Mapping[str, Any]) -> Outcome:
    """Do what the event asks (idempotently); raises `NotAppliedError` when it cannot be applied."""
    event_id, event_type = str(event.get("id") or ""), str(event.get("type") or "")
    handler = HANDLERS.get(event_type)
    if handler is None:
        return {"ignored": event_type}
    obj = (event.get("data") or {}).get("object") or {}
    return handler(event_id, obj if isinstance(obj, Mapping) else {})


def reapply(item_id: int, *, actor: str) -> bool:
    """Apply a kept event again (an admin's retry, or its purchase arrived); False when the item is not open.

    Applied: the item is closed. Still not applicable: the new failure goes into its history.
    """
    item = unapplied.load(item_id)
    if item is None or item.status != ISSUE_OPEN:
        return False
    event = dict(item.event or {})
    try:
        outcome = apply_event(event)
    except NotAppliedError as problem:
        logger.warning("Unapplied payment %s (event %s) still cannot be applied: %s", item_id, item.event_id, problem)
        return unapplied.record_failure(item_id, problem, actor=actor)
    note = ", ".join(f"{key} {value}" for key, value in sorted(outcome.items())) or "applied"
    applied = unapplied.mark_applied(item_id, actor=actor, note=note)
    if applied:
        logger.warning("Unapplied payment %s (event %s) applied by %s: %s", item_id, event.get("id"), actor, note)
    return applied


def _unapplied_outcome(problem: NotAppliedError) -> Outcome:
    return {"credits_clawed_back" if problem.money_back else "credits_granted": 0, "unapplied": problem.reason_code}


# -- Checkout Sessions ----------------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    """An integer field of a Stripe object (ints only: bools and text are not amounts)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _session_completed(event_id: str, session: Mapping[str, Any]) -> Outcome:
    status = session.get("payment_status")
    if status != "paid":
        # "unpaid": a delayed payment method (bank debit...); async_payment_succeeded or _failed follows.
        logger.info(
            "Checkout Session %s completed with payment_status %s: nothing granted yet", session.get("id"), status
        )
        return {"credits_granted": 0, "ignored": f"payment_status {status}"}
    return _grant_for_session(session)


def _async_payment_succeeded(event_id: str, session: Mapping[str, Any]) -> Outcome:
    return _grant_for_session(session)


def _sale(session: Mapping[str, Any]) -> PackSale:
    """The sale a paid session records, or `NotAppliedError` (money taken, nothing granted)."""
    session_id = str(session.get("id") or "")
    amount, currency = _int(session.get("amount_total")), str(session.get("currency") or "usd")
    metadata = session.get("metadata") if isinstance(session.get("metadata"), Mapping) else {}
    facts = {"object_id": session_id, "amount_cents": amount, "currency": currency}
    try:
        user_id = int(metadata.get("user_id") or session.get("client_reference_id"))  # type: ignore[arg-type]
        pack_credits = int(metadata["credits"])
    except (KeyError, TypeError, ValueError):
        raise NotAppliedError(
            SESSION_METADATA_UNUSABLE,
            f"Paid Checkout Session {session_id} has no usable user_id/credits metadata: no account to credit.",
            **facts,
        ) from None
    if pack_credits <= 0 or not session_id:
        raise NotAppliedError(
            SESSION_METADATA_UNUSABLE,
            f"Paid Checkout Session {session_id or '(no id)'} names {pack_credits} credits: nothing can be granted.",
            user_id=user_id,
            **facts,
        )
    if db.session.get(User, user_id) is None:
        raise NotAppliedError(
            UNKNOWN_USER,
            f"Paid Checkout Session {session_id} names user {user_id}, who does not exist (deleted, or another "
            "deployment's session).",
            user_id=user_id,
            **facts,
        )
    payment_intent = session.get("payment_intent")
    return PackSale(
        session_id=session_id,
        payment_intent=payment_intent if isinstance(payment_intent, str) and payment_intent else None,
        user_id=user_id,
        pack=str(metadata.get("pack") or "pack"),
        credits=pack_credits,
        amount_cents=amount or 0,
        currency=currency,
    )


def _grant_for_session(session: Mapping[str, Any]) -> Outcome:
    sale = _sale(session)
    done = grant_sale(sale)
    user = db.session.get(User, sale.user_id)
    # Sent on every first processing (the outbox dedups by session id), so a crash after the grant still emails.
    if user is not None:
        get_email().send_payment_receipt(
            user.email,
            session_id=sale.session_id,
            pack=sale.pack,
            credits=sale.credits,
            amount_cents=sale.amount_cents,
            currency=sale.currency,
        )
    outcome: Outcome = {"credits_granted": sale.credits if done.granted else 0}
    if done.debt_settled:
        if done.granted:
            outcome["debt_settled"] = done.debt_settled
        notices.debt_settled(
            sale.user_id,
            session_id=sale.session_id,
            settled=done.debt_settled,
            debt_left=credits.account(sale.user_id).debt,
        )
    if sale.payment_intent:
        _apply_waiting_money_back(sale.payment_intent)
    return outcome


def _apply_waiting_money_back(payment_intent: str) -> None:
    """Refunds or disputes that arrived before their sale (Stripe does not order events) apply now."""
    for item_id in unapplied.waiting_for(payment_intent):
        reapply(item_id, actor="stripe webhook (its purchase was recorded)")


def _async_payment_failed(event_id: str, session: Mapping[str, Any]) -> Outcome:
    session_id = str(session.get("id") or "")
    metadata = session.get("metadata") if isinstance(session.get("metadata"), Mapping) else {}
    try:
        user_id: int | None = int(metadata.get("user_id") or session.get("client_reference_id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        user_id = None
    logger.warning(
        "Delayed payment for Checkout Session %s (user %s) failed: nothing was charged, nothing granted",
        session_id,
        user_id,
    )
    notices.payment_failed(
        user_id,
        session_id=session_id,
        pack=str(metadata.get("pack") or "credit"),
        amount_cents=_int(session.get("amount_total")) or 0,
        currency=str(session.get("currency") or "usd"),
    )
    return {"credits_granted": 0, "recorded": "payment_failed"}


def _session_expired(event_id: str, session: Mapping[str, Any]) -> Outcome:
    # No money was taken (an abandoned checkout): nothing to grant and nothing to tell the user.
    logger.info("Checkout Session %s expired unpaid; nothing granted", session.get("id"))
    return {"credits_granted": 0, "recorded": "session_expired"}


# -- money back -----------------------------------------------------------------------------------------------


def _money_back_facts(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "object_id": str(obj.get("id") or "") or None,
        "amount_cents": _int(obj.get("amount")),
        "currency": str(obj.get("currency") or "") or None,
        "money_back": True,
    }


def _unknown_charge(what: str, obj: Mapping[str, Any], payment_intent: Any) -> NotAppliedError:
    return NotAppliedError(
        UNKNOWN_CHARGE,
        f"{what} names payment intent {payment_intent or '(none)'}, which matches no credit pack we sold: "
        "no credits were taken back.",
        **_money_back_facts(obj),
    )


def _charge_refunded(event_id: str, charge: Mapping[str, Any]) -> Outcome:
    charge_id, payment_intent = charge.get("id"), charge.get("payment_intent")
    amount, refunded = _int(charge.get("amount")), _int(charge.get("amount_refunded"))
    if amount is None or refunded is None or amount < 0 or refunded < 0:
        raise NotAppliedError(
            CHARGE_UNUSABLE,
            f"Refund of charge {charge_id} has no usable amount/amount_refunded ({charge.get('amount')!r}, "
            f"{charge.get('amount_refunded')!r}).",
            **_money_back_facts(charge),
        )
    fully = refunded >= amount or charge.get("refunded") is True
    return _take_back(
        event_id,
        charge,
        payment_intent,
        target=lambda purchase: purchase.credits if fully else refund_target(purchase.credits, refunded, amount),
        status=REFUNDED if fully else PARTIALLY_REFUNDED,
        reason=f"stripe refund of {charge_id}: {refunded} of {amount}",
        what=f"Refund of charge {charge_id}",
        notice="refund",
    )


def _dispute_created(event_id: str, dispute: Mapping[str, Any]) -> Outcome:
    return _take_back(
        event_id,
        dispute,
        dispute.get("payment_intent"),
        target=lambda purchase: purchase.credits,
        status=DISPUTED,
        reason=f"stripe dispute {dispute.get('id')} of {dispute.get('charge')} ({dispute.get('reason')})",
        what=f"Dispute {dispute.get('id')} of charge {dispute.get('charge')}",
        notice="dispute",
    )


def _take_back(
    event_id: str,
    obj: Mapping[str, Any],
    payment_intent: Any,
    *,
    target: Callable[[Any], int],
    status: str,
    reason: str,
    what: str,
    notice: str,
) -> Outcome:
    """Claw the purchase paid by `payment_intent` back to `target` credits, once per event; unknown: unapplied."""
    taken = (
        claw_back(payment_intent, target=target, status=status, reason=reason, ref=f"stripe:{event_id}")
        if isinstance(payment_intent, str) and payment_intent
        else None
    )
    if taken is None:
        raise _unknown_charge(what, obj, payment_intent)
    _tell(taken, event_id, notice)
    return {"credits_clawed_back": taken.credits, "debt_added": taken.owed}


def _tell(taken: ClawBack, event_id: str, why: str) -> None:
    """Email what this event took back, read from the ledger (so a redelivery after a crash still tells)."""
    record = credits.taken_back_by(f"stripe:{event_id}")
    if record.taken or record.owed:
        done = replace(taken, credits=record.taken + record.owed, taken=record.taken, owed=record.owed)
        notices.credits_taken_back(done, event_id=event_id, why=why)


HANDLERS: dict[str, Callable[[str, Mapping[str, Any]], Outcome]] = {
    "checkout.session.completed": _session_completed,
    "checkout.session.async_payment_succeeded": _async_payment_succeeded,
    "checkout.session.async_payment_failed": _async_payment_failed,
    "checkout.session.expired": _session_expired,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
}
