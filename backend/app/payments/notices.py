"""What a user learns about their money: a late payment that failed, credits taken back, a debt paid off.

Each email goes through the outbox once per event (its dedup key), after the ledger work is
committed. Sending is best effort here: the outbox row is durable before SendGrid is called, so a
failure is logged and the outbox (or the failed-work inbox) carries the email on; it never undoes
or repeats the money work that was done.
"""

from __future__ import annotations

import logging

from ..errors import APIError
from ..extensions import db
from ..models import User
from ..services import get_email
from ..services.email_templates import PRODUCT, format_amount
from .purchases import ClawBack

logger = logging.getLogger(__name__)


def _send(user_id: int | None, subject: str, lines: list[str], dedup_key: str) -> None:
    user = db.session.get(User, user_id) if user_id is not None else None
    if user is None:
        logger.warning("No user %s to tell about %s", user_id, dedup_key)
        return
    try:
        get_email().send(user.email, f"{PRODUCT}: {subject}", "\n\n".join([*lines, PRODUCT]), dedup_key=dedup_key)
    except APIError as exc:  # the email is in the outbox already; the money work stands
        logger.error("Could not send the %s email to user %s: %s", dedup_key, user_id, exc.code)


def payment_failed(user_id: int | None, *, session_id: str, pack: str, amount_cents: int, currency: str) -> None:
    """A delayed payment (bank debit...) failed: nothing was charged and no credits were added."""
    _send(
        user_id,
        "your payment did not go through",
        [
            f"Your payment of {format_amount(amount_cents, currency)} for the {pack} pack did not go through.",
            "Nothing was charged and no render credits were added. You can buy the pack again at any time.",
        ],
        f"payment-failed:{session_id}",
    )


def credits_taken_back(taken: ClawBack, *, event_id: str, why: str) -> None:
    """A refund or dispute took a pack's credits back; what came off the balance and what is owed."""
    lines = [f"After a {why} of your {taken.pack} pack, {taken.credits} of its render credits were taken back."]
    if taken.taken:
        lines.append(f"{taken.taken} came off your balance.")
    if taken.owed:
        lines.append(
            f"{taken.owed} had already been spent, so your account owes them: new renders are paused until a "
            "pack you buy pays them off (its credits settle the debt first, the rest are yours)."
        )
    _send(taken.user_id, f"render credits taken back after a {why}", lines, f"money-back:{event_id}")


def debt_settled(user_id: int, *, session_id: str, settled: int, debt_left: int) -> None:
    """A bought pack paid (part of) a debt off before its credits reached the balance."""
    lines = [f"{settled} credit(s) of the pack you just bought paid off what your account owed."]
    lines.append(
        f"Your account still owes {debt_left} credit(s); renders stay paused until it is paid off."
        if debt_left
        else "Your account owes nothing now and renders are open again."
    )
    _send(user_id, "your credit debt was paid off", lines, f"debt-settled:{session_id}")
