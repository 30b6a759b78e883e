"""Stripe webhook events, each processed once: a paid Checkout Session grants its pack's credits.

Idempotent at every step, so a redelivery after a crash anywhere finishes the work and never repeats
it: credits are granted by ref (the session id), the receipt email is deduplicated by the session id,
and the event id is recorded last (`processed_stripe_events`) so later deliveries are acknowledged
without work.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .. import credits
from ..extensions import db
from ..models import ProcessedStripeEvent, User
from ..services import get_email

logger = logging.getLogger(__name__)

GRANTING_EVENTS = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})


def already_processed(event_id: str) -> bool:
    """Whether this event id was handled before."""
    return (
        db.session.scalar(select(ProcessedStripeEvent.event_id).where(ProcessedStripeEvent.event_id == event_id))
        is not None
    )


def process_event(event: dict[str, Any]) -> dict[str, Any]:
    """Handle one verified event once; what was done (`duplicate`, `credits_granted`, `ignored`)."""
    event_id, event_type = str(event.get("id") or ""), str(event.get("type") or "")
    if not event_id:
        return {"received": True, "ignored": "event without id"}
    if already_processed(event_id):
        logger.info("Stripe event %s (%s) already processed", event_id, event_type)
        return {"received": True, "duplicate": True}
    outcome: dict[str, Any] = {"received": True, "duplicate": False}
    if event_type in GRANTING_EVENTS:
        outcome.update(_grant_for_session((event.get("data") or {}).get("object") or {}))
    else:
        outcome["ignored"] = event_type
    db.session.add(ProcessedStripeEvent(event_id=event_id, type=event_type[:100]))
    try:
        db.session.commit()
    except IntegrityError:  # a concurrent delivery of the same event finished first; our work was idempotent
        db.session.rollback()
        outcome["duplicate"] = True
    return outcome


def _grant_for_session(session: dict[str, Any]) -> dict[str, Any]:
    session_id = str(session.get("id") or "")
    if session.get("payment_status") != "paid":
        return {"credits_granted": 0, "ignored": f"payment_status {session.get('payment_status')}"}
    metadata = session.get("metadata") or {}
    try:
        user_id = int(metadata.get("user_id") or session.get("client_reference_id"))
        amount = int(metadata["credits"])
    except (KeyError, TypeError, ValueError):
        logger.error("Paid Checkout Session %s has no usable user_id/credits metadata; nothing granted", session_id)
        return {"credits_granted": 0, "ignored": "session without our metadata"}
    user = db.session.get(User, user_id)
    if user is None:
        logger.error("Paid Checkout Session %s names unknown user %s; nothing granted", session_id, user_id)
        return {"credits_granted": 0, "ignored": "unknown user"}
    pack = str(metadata.get("pack") or "pack")
    granted = credits.grant(user_id, amount, f"stripe checkout: {pack} pack", f"stripe:{session_id}")
    # Sent on every first processing (the outbox dedups by session id), so a crash after the grant still emails.
    get_email().send_payment_receipt(
        user.email,
        session_id=session_id,
        pack=pack,
        credits=amount,
        amount_cents=int(session.get("amount_total") or 0),
        currency=str(session.get("currency") or "usd"),
    )
    return {"credits_granted": amount if granted else 0}
