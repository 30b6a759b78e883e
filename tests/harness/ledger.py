"""The credit ledger's invariant, checked against every account."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.models import CreditAccount, CreditEntry


def assert_ledger_balanced(app: Flask) -> None:
    """Every account: balance == sum(amount) and debt == sum(debt_change), neither negative, never both > 0."""
    with app.app_context():
        sums = dict(
            (row.user_id, (int(row.amount), int(row.debt)))
            for row in db.session.execute(
                select(
                    CreditEntry.user_id,
                    func.sum(CreditEntry.amount).label("amount"),
                    func.sum(CreditEntry.debt_change).label("debt"),
                ).group_by(CreditEntry.user_id)
            )
        )
        accounts = db.session.scalars(select(CreditAccount)).all()
        for account in accounts:
            assert (account.balance, account.debt) == sums.get(account.user_id, (0, 0)), account.user_id
            assert account.balance >= 0 and account.debt >= 0
            assert account.balance == 0 or account.debt == 0, "a balance while owing: the debt was not settled first"
        db.session.remove()
