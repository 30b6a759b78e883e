"""Render credits: grant, consume, refund, claw back and debt, atomic and idempotent by reference.

Every change is a ledger row (`CreditEntry`, unique by kind and ref) and a conditional UPDATE of the
account, in one transaction, so `balance == sum(amount)` and `debt == sum(debt_change)` always hold.
The ledger row is inserted first, so a repeated ref fails on the unique constraint before the
account moves; the balance only drops through `UPDATE ... SET balance = balance - 1 WHERE balance >=
1 AND debt = 0`, whose row count says whether a credit was left. Both hold under concurrent requests
on SQLite (writers serialise) and on PostgreSQL (the row lock makes the second UPDATE re-check).

Money back (a refunded or disputed pack, `take_back_uncommitted`): the credits still on the balance
are taken as a `clawback` entry; what was already spent becomes a `debt` entry (debt_change > 0),
never a negative balance. While a debt is owed `consume` refuses with 402 `CREDITS_IN_DEBT`; every
later grant (a bought pack, a render's credit given back) pays the debt off first (`debt_settled`).

New users get `FREE_RENDER_CREDITS` (default 1) when their account row is first created, which
happens on their first credit operation of any kind (a balance read included): idempotent, and no
registration hook can be forgotten. Public functions commit; `*_uncommitted` ones leave it to the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import PaymentError
from ..extensions import db
from ..models.billing import CLAWBACK, CONSUME, DEBT, DEBT_SETTLED, GRANT, REFUND, CreditAccount, CreditEntry
from ..timeutil import utcnow

logger = logging.getLogger(__name__)

SIGNUP_REASON = "free render credits for a new account"
BUY_PATH = "/api/payments/checkout"


@dataclass(frozen=True)
class Account:
    """A user's credits right now: what they can spend and what they owe."""

    balance: int
    debt: int


@dataclass(frozen=True)
class TakeBack:
    """What one claw-back did: credits taken off the balance, and credits recorded as debt."""

    taken: int
    owed: int


def insert_ignore(table: Table, values: dict[str, Any]) -> int:
    """INSERT a row unless it conflicts with a unique key; the number of rows inserted (0 or 1)."""
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise RuntimeError(f"credits: unsupported database dialect {dialect}")
    primary = next(iter(table.primary_key.columns))
    statement = dialect_insert(table).values(**values).on_conflict_do_nothing().returning(primary)
    # RETURNING, not rowcount: psycopg reports -1 (truthy) for a conflicting ORM-level insert.
    return len(db.session.execute(statement).all())


def _ensure_account(user_id: int) -> None:
    """Create the account with the free credits on first use (committed by the caller)."""
    free = int(current_app.config.get("FREE_RENDER_CREDITS", 1))
    if insert_ignore(CreditAccount.__table__, {"user_id": user_id, "balance": free}) and free > 0:
        db.session.execute(
            insert(CreditEntry).values(
                user_id=user_id, kind=GRANT, amount=free, reason=SIGNUP_REASON, ref=f"signup:{user_id}"
            )
        )
        logger.info("Granted %s free render credit(s) to user %s", free, user_id)


def _insert_entry(user_id: int, kind: str, amount: int, reason: str, ref: str, debt_change: int = 0) -> None:
    db.session.execute(
        insert(CreditEntry).values(
            user_id=user_id, kind=kind, amount=amount, debt_change=debt_change, reason=reason[:200], ref=ref
        )
    )


def _add_entry(user_id: int, kind: str, amount: int, reason: str, ref: str) -> bool:
    """Insert a ledger row; False (and the transaction rolled back) when this kind+ref exists already."""
    try:
        _insert_entry(user_id, kind, amount, reason, ref)
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


def _read_account(user_id: int) -> Account:
    row = db.session.execute(
        select(CreditAccount.balance, CreditAccount.debt).where(CreditAccount.user_id == user_id)
    ).one_or_none()
    return Account(int(row.balance), int(row.debt)) if row is not None else Account(0, 0)


def account(user_id: int) -> Account:
    """The user's balance and debt (creating the account with the free credits on first use)."""
    row = db.session.execute(
        select(CreditAccount.balance, CreditAccount.debt).where(CreditAccount.user_id == user_id)
    ).one_or_none()
    if row is None:  # first credit operation of this user: a write, once; reads stay reads afterwards
        _ensure_account(user_id)
        db.session.commit()
        return _read_account(user_id)
    return Account(int(row.balance), int(row.debt))


def balance(user_id: int) -> int:
    """The user's render credits (creating the account with the free credits on first use)."""
    return account(user_id).balance


def _credit_uncommitted(user_id: int, amount: int, source_kind: str, ref: str) -> int:
    """Add `amount` to the balance, paying any debt off first; the credits that went to the debt."""
    db.session.execute(
        update(CreditAccount).where(CreditAccount.user_id == user_id).values(balance=CreditAccount.balance + amount)
    )
    # Read after the UPDATE: it holds the row lock, so the debt read is the current one on PostgreSQL too.
    debt = _read_account(user_id).debt
    settled = min(amount, debt)
    if settled > 0:
        _insert_entry(
            user_id, DEBT_SETTLED, -settled, f"debt paid off from {source_kind} {ref}", f"{source_kind}:{ref}", -settled
        )
        db.session.execute(
            update(CreditAccount)
            .where(CreditAccount.user_id == user_id)
            .values(balance=CreditAccount.balance - settled, debt=CreditAccount.debt - settled)
        )
    return settled


def grant_uncommitted(user_id: int, amount: int, reason: str, ref: str) -> bool:
    """Add `amount` credits for a new `ref` in the caller's transaction (debt first); False, rolled back, if known."""
    if amount <= 0:
        raise ValueError("grant amount must be positive")
    _ensure_account(user_id)
    if not _add_entry(user_id, GRANT, amount, reason, ref):
        return False
    _credit_uncommitted(user_id, amount, GRANT, ref)
    return True


def grant(user_id: int, amount: int, reason: str, ref: str) -> bool:
    """Add `amount` credits once per `ref` (paying any debt off first); False when `ref` was granted before."""
    if amount <= 0:
        raise ValueError("grant amount must be positive")
    _ensure_account(user_id)
    db.session.commit()
    if not grant_uncommitted(user_id, amount, reason, ref):
        return False
    granted = _commit_or_replayed(user_id, GRANT, ref)
    if granted:
        logger.info("Granted %s render credit(s) to user %s (%s, ref %s)", amount, user_id, reason, ref)
    return granted


def debt_settled_by(source_kind: str, ref: str) -> int:
    """The credits of the `source_kind` entry `ref` (a grant, a refund) that went to paying a debt off."""
    amount = db.session.scalar(
        select(CreditEntry.debt_change).where(
            CreditEntry.kind == DEBT_SETTLED, CreditEntry.ref == f"{source_kind}:{ref}"
        )
    )
    return -int(amount or 0)


def taken_back_by(ref: str) -> TakeBack:
    """What the claw-back `ref` took, from the ledger: credits off the balance and credits recorded as debt."""
    rows = dict(
        db.session.execute(
            select(CreditEntry.kind, CreditEntry.amount + CreditEntry.debt_change).where(
                CreditEntry.ref == ref, CreditEntry.kind.in_((CLAWBACK, DEBT))
            )
        ).all()
    )
    return TakeBack(-int(rows.get(CLAWBACK, 0)), int(rows.get(DEBT, 0)))


def take_back_uncommitted(user_id: int, count: int, reason: str, ref: str) -> TakeBack:
    """Take `count` credits back in the caller's transaction: the balance's as CLAWBACK, the rest as DEBT.

    The caller guards against taking the same credits twice (a purchase's `clawed_back`, locked first);
    `ref` names the event and is unique per kind, so a replay fails with IntegrityError.
    """
    if count <= 0:
        raise ValueError("claw-back count must be positive")
    _ensure_account(user_id)
    # Lock the account row before reading the balance, so a concurrent render cannot spend what we take.
    db.session.execute(update(CreditAccount).where(CreditAccount.user_id == user_id).values(updated_at=utcnow()))
    held = _read_account(user_id).balance
    taken = min(count, held)
    owed = count - taken
    if taken:
        _insert_entry(user_id, CLAWBACK, -taken, reason, ref)
        db.session.execute(
            update(CreditAccount).where(CreditAccount.user_id == user_id).values(balance=CreditAccount.balance - taken)
        )
    if owed:
        _insert_entry(user_id, DEBT, 0, f"{reason} (credits already spent)", ref, owed)
        db.session.execute(
            update(CreditAccount).where(CreditAccount.user_id == user_id).values(debt=CreditAccount.debt + owed)
        )
    return TakeBack(taken, owed)


def _in_debt(state: Account) -> PaymentError:
    return PaymentError(
        f"Your account owes {state.debt} render credit(s): a pack was refunded or disputed after its credits "
        "were spent. Buy a pack to settle it; its credits pay the debt off first, and renders start again.",
        "CREDITS_IN_DEBT",
        {
            "debt": state.debt,
            "balance": state.balance,
            "settle": BUY_PATH,
            "how": "buy any pack: its credits settle the debt first, the rest stay on your balance",
        },
    )


def consume_uncommitted(user_id: int, ref: str) -> None:
    """Spend one credit for a new `ref` in the caller's transaction; `PaymentError` (rolled back) if it cannot.

    For a write that must happen together with others (a render row, its credit and its job): the
    caller commits. A ref used before fails with IntegrityError at the ledger insert.
    """
    _ensure_account(user_id)
    db.session.execute(insert(CreditEntry).values(user_id=user_id, kind=CONSUME, amount=-1, reason="render", ref=ref))
    _spend_one(user_id)


def _spend_one(user_id: int) -> None:
    """Take one credit off the balance, or roll back and raise CREDITS_IN_DEBT or INSUFFICIENT_CREDITS."""
    spent = db.session.execute(
        update(CreditAccount)
        .where(CreditAccount.user_id == user_id, CreditAccount.balance >= 1, CreditAccount.debt == 0)
        .values(balance=CreditAccount.balance - 1)
    ).rowcount
    if spent != 1:
        db.session.rollback()  # drops the ledger row (and the caller's uncommitted writes) too
        state = _read_account(user_id)
        if state.debt > 0:
            raise _in_debt(state)
        raise PaymentError(
            "You have no render credits left. Buy a pack to render more videos.",
            "INSUFFICIENT_CREDITS",
            {"balance": 0, "buy": BUY_PATH},
        )


def consume(user_id: int, ref: str) -> None:
    """Spend one credit for `ref` (idempotent); 402 INSUFFICIENT_CREDITS when none is left, CREDITS_IN_DEBT owing."""
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
    """Give back the credit consumed under `ref`, once (to the debt first); False when nothing is owed back."""
    consumed_by = db.session.scalar(
        select(CreditEntry.user_id).where(CreditEntry.kind == CONSUME, CreditEntry.ref == ref)
    )
    if consumed_by != user_id:
        return False
    if not _add_entry(user_id, REFUND, 1, "render refund", ref):
        return False
    settled = _credit_uncommitted(user_id, 1, REFUND, ref)
    refunded = _commit_or_replayed(user_id, REFUND, ref)
    if refunded:
        logger.info("Refunded a render credit to user %s (ref %s%s)", user_id, ref, ", to the debt" if settled else "")
    return refunded
