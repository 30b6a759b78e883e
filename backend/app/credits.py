"""Render credits: grant, consume, refund and balance, atomic and idempotent by reference.

Every change is one ledger row (`CreditEntry`, unique by kind and ref) and one conditional UPDATE
of the balance, in one transaction. The ledger row is inserted first, so a repeated ref fails on
the unique constraint before the balance moves; the balance only drops through
`UPDATE ... SET balance = balance - 1 WHERE balance >= 1`, whose row count says whether a credit
was left. Both hold under concurrent requests on SQLite (writers serialise) and on PostgreSQL
(the row lock makes the second UPDATE re-check `balance >= 1`).

New users get `FREE_RENDER_CREDITS` (default 1) when their account row is first created, which
happens on their first credit operation of any kind (a balance read included): idempotent, and no
registration hook can be forgotten. Each function commits the session.
"""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from .errors import PaymentError
from .extensions import db
from .models.billing import CONSUME, GRANT, REFUND, CreditAccount, CreditEntry

logger = logging.getLogger(__name__)

SIGNUP_REASON = "free render credits for a new account"


def _insert_ignore(values: dict[str, object]) -> int:
    """INSERT the account row unless it exists; the number of rows inserted (0 or 1)."""
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise RuntimeError(f"credits: unsupported database dialect {dialect}")
    statement = (
        dialect_insert(CreditAccount.__table__)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["user_id"])
        .returning(CreditAccount.__table__.c.user_id)
    )
    # RETURNING, not rowcount: psycopg reports -1 (truthy) for a conflicting ORM-level insert.
    return len(db.session.execute(statement).all())


def _ensure_account(user_id: int) -> None:
    """Create the account with the free credits on first use (committed by the caller)."""
    free = int(current_app.config.get("FREE_RENDER_CREDITS", 1))
    if _insert_ignore({"user_id": user_id, "balance": free}) and free > 0:
        db.session.execute(
            insert(CreditEntry).values(
                user_id=user_id, kind=GRANT, amount=free, reason=SIGNUP_REASON, ref=f"signup:{user_id}"
            )
        )
        logger.info("Granted %s free render credit(s) to user %s", free, user_id)


def _add_entry(user_id: int, kind: str, amount: int, reason: str, ref: str) -> bool:
    """Insert a ledger row; False (and the transaction rolled back) when this kind+ref exists already."""
    try:
        db.session.execute(
            insert(CreditEntry).values(user_id=user_id, kind=kind, amount=amount, reason=reason[:200], ref=ref)
        )
    except IntegrityError:
        db.session.rollback()
        return False
    return True


def _commit_or_replayed(user_id: int, kind: str, ref: str) -> bool:
    """Commit; a concurrent twice-used ref that only fails at commit counts as a replay (False)."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        logger.info("Credit %s %s for user %s was already recorded (concurrent replay)", kind, ref, user_id)
        return False
    return True


def balance(user_id: int) -> int:
    """The user's render credits (creating the account with the free credits on first use)."""
    value = db.session.scalar(select(CreditAccount.balance).where(CreditAccount.user_id == user_id))
    if value is None:  # first credit operation of this user: a write, once; reads stay reads afterwards
        _ensure_account(user_id)
        db.session.commit()
        value = db.session.scalar(select(CreditAccount.balance).where(CreditAccount.user_id == user_id))
    return int(value or 0)


def grant(user_id: int, amount: int, reason: str, ref: str) -> bool:
    """Add `amount` credits once per `ref`; False when `ref` was granted before (nothing changes)."""
    if amount <= 0:
        raise ValueError("grant amount must be positive")
    _ensure_account(user_id)
    db.session.commit()
    if not _add_entry(user_id, GRANT, amount, reason, ref):
        return False
    db.session.execute(
        update(CreditAccount).where(CreditAccount.user_id == user_id).values(balance=CreditAccount.balance + amount)
    )
    granted = _commit_or_replayed(user_id, GRANT, ref)
    if granted:
        logger.info("Granted %s render credit(s) to user %s (%s, ref %s)", amount, user_id, reason, ref)
    return granted


def consume_uncommitted(user_id: int, ref: str) -> None:
    """Spend one credit for a new `ref` in the caller's transaction; `PaymentError` (rolled back) if none is left.

    For a write that must happen together with others (a render row, its credit and its job): the
    caller commits. A ref used before fails with IntegrityError at the ledger insert.
    """
    _ensure_account(user_id)
    db.session.execute(insert(CreditEntry).values(user_id=user_id, kind=CONSUME, amount=-1, reason="render", ref=ref))
    _spend_one(user_id)


def _spend_one(user_id: int) -> None:
    """Take one credit off the balance, or roll back and raise INSUFFICIENT_CREDITS."""
    spent = db.session.execute(
        update(CreditAccount)
        .where(CreditAccount.user_id == user_id, CreditAccount.balance >= 1)
        .values(balance=CreditAccount.balance - 1)
    ).rowcount
    if spent != 1:
        db.session.rollback()  # drops the ledger row (and the caller's uncommitted writes) too
        raise PaymentError(
            "You have no render credits left. Buy a pack to render more videos.",
            "INSUFFICIENT_CREDITS",
            {"balance": 0, "buy": "/api/payments/checkout"},
        )


def consume(user_id: int, ref: str) -> None:
    """Spend one credit for `ref` (idempotent); `PaymentError` INSUFFICIENT_CREDITS when none is left."""
    _ensure_account(user_id)
    db.session.commit()
    if not _add_entry(user_id, CONSUME, -1, "render", ref):
        existing = db.session.scalar(
            select(CreditEntry.user_id).where(CreditEntry.kind == CONSUME, CreditEntry.ref == ref)
        )
        if existing != user_id:
            raise ValueError(f"credit ref {ref!r} was consumed by another user")
        return  # already consumed for this ref
    _spend_one(user_id)
    _commit_or_replayed(user_id, CONSUME, ref)


def refund(user_id: int, ref: str) -> bool:
    """Give back the credit consumed under `ref`, once; False when nothing was consumed or it was refunded."""
    consumed_by = db.session.scalar(
        select(CreditEntry.user_id).where(CreditEntry.kind == CONSUME, CreditEntry.ref == ref)
    )
    if consumed_by != user_id:
        return False
    if not _add_entry(user_id, REFUND, 1, "render refund", ref):
        return False
    db.session.execute(
        update(CreditAccount).where(CreditAccount.user_id == user_id).values(balance=CreditAccount.balance + 1)
    )
    refunded = _commit_or_replayed(user_id, REFUND, ref)
    if refunded:
        logger.info("Refunded a render credit to user %s (ref %s)", user_id, ref)
    return refunded
