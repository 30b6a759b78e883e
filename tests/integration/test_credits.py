"""Render credits: idempotent by ref, atomic under concurrency on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.errors import PaymentError
from backend.app.extensions import db
from backend.app.models import CreditEntry, User
from backend.app.services import credits
from tests.harness.ledger import assert_ledger_balanced


def make_user(app: Flask, email: str = "c@example.com") -> int:
    with app.app_context():
        user = User(email=email, password_hash="x")
        db.session.add(user)
        db.session.commit()
        return user.id


def test_new_users_get_the_free_credits_once(make_app: Callable[..., Flask]) -> None:
    app = make_app(FREE_RENDER_CREDITS=2)
    user_id = make_user(app)
    with app.app_context():
        assert credits.balance(user_id) == 2
        assert credits.balance(user_id) == 2
        entries = db.session.scalars(select(CreditEntry).where(CreditEntry.user_id == user_id)).all()
        assert [(e.kind, e.amount, e.ref) for e in entries] == [("grant", 2, f"signup:{user_id}")]


def test_grant_is_idempotent_by_ref(app: Flask) -> None:
    user_id = make_user(app)
    with app.app_context():
        assert credits.grant(user_id, 5, "stripe checkout", "stripe:cs_1") is True
        assert credits.grant(user_id, 5, "stripe checkout", "stripe:cs_1") is False
        assert credits.balance(user_id) == 6
        with pytest.raises(ValueError):
            credits.grant(user_id, 0, "nothing", "zero")


def test_consume_is_idempotent_and_refuses_when_empty(app: Flask) -> None:
    user_id = make_user(app)
    with app.app_context():
        credits.consume(user_id, "render:1")
        credits.consume(user_id, "render:1")  # a retried request: still one credit
        assert credits.balance(user_id) == 0
        with pytest.raises(PaymentError) as raised:
            credits.consume(user_id, "render:2")
        assert raised.value.code == "INSUFFICIENT_CREDITS" and raised.value.status_code == 402
        assert credits.balance(user_id) == 0
        # The refused consume left no ledger row behind, so it can succeed once credits arrive.
        credits.grant(user_id, 1, "gift", "gift:1")
        credits.consume(user_id, "render:2")
        assert credits.balance(user_id) == 0


def test_refund_gives_back_a_consumed_credit_once(app: Flask) -> None:
    user_id = make_user(app)
    other = make_user(app, "other@example.com")
    with app.app_context():
        assert credits.refund(user_id, "render:9") is False  # nothing consumed under that ref
        credits.consume(user_id, "render:9")
        assert credits.refund(other, "render:9") is False  # not theirs
        assert credits.refund(user_id, "render:9") is True
        assert credits.refund(user_id, "render:9") is False
        assert credits.balance(user_id) == 1


def _race(app: Flask, user_id: int, refs: list[str]) -> tuple[int, int]:
    """Consume every ref from its own thread at once; (successes, insufficient)."""
    barrier = threading.Barrier(len(refs))
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(ref: str) -> None:
        with app.app_context():
            barrier.wait(timeout=10)
            try:
                credits.consume(user_id, ref)
                outcome = "ok"
            except PaymentError:
                outcome = "empty"
            finally:
                db.session.remove()
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(ref,)) for ref in refs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes.count("ok"), outcomes.count("empty")


def _check_concurrency(app: Flask) -> None:
    user_id = make_user(app, "race@example.com")
    with app.app_context():
        credits.grant(user_id, 4, "pack", "stripe:cs_race")  # 1 free + 4
        db.session.remove()
    ok, empty = _race(app, user_id, [f"render:{i}" for i in range(8)])
    assert (ok, empty) == (5, 3)
    with app.app_context():
        assert credits.balance(user_id) == 0
        consumed = db.session.scalar(select(func.count()).where(CreditEntry.kind == "consume"))
        assert consumed == 5
    # The same ref from many threads at once spends one credit.
    with app.app_context():
        credits.grant(user_id, 3, "pack", "stripe:cs_race_2")
        db.session.remove()
    ok, empty = _race(app, user_id, ["render:same"] * 6)
    assert (ok, empty) == (6, 0)
    with app.app_context():
        assert credits.balance(user_id) == 2


def test_concurrent_consumes_never_overspend_on_sqlite(app: Flask) -> None:
    _check_concurrency(app)


def test_concurrent_consumes_never_overspend_on_postgresql(pg_app: Flask) -> None:
    _check_concurrency(pg_app)


def test_credits_endpoint_shows_the_free_credit(app: Flask) -> None:
    from tests.harness.app import bearer, login

    client = app.test_client()
    token = login(client)["access_token"]
    response = client.get("/api/payments/credits", headers=bearer(token))
    assert response.status_code == 200 and response.get_json() == {"balance": 1, "debt": 0}


# -- point 5: claw-backs, debts and their settlement ---------------------------------------------------------------


def test_point5_take_back_uses_the_balance_first_and_records_the_rest_as_debt(app: Flask) -> None:
    user_id = make_user(app)
    with app.app_context():
        credits.grant(user_id, 5, "pack", "stripe:cs_1")  # 1 free + 5
        credits.consume(user_id, "render:1")
        credits.consume(user_id, "render:2")
        credits.consume(user_id, "render:3")  # 3 left
        took = credits.take_back_uncommitted(user_id, 5, "stripe refund", "stripe:evt_1")
        db.session.commit()
        assert (took.taken, took.owed) == (3, 2)
        assert credits.account(user_id) == credits.Account(balance=0, debt=2)
        kinds = db.session.execute(
            select(CreditEntry.kind, CreditEntry.amount, CreditEntry.debt_change).where(
                CreditEntry.ref == "stripe:evt_1"
            )
        ).all()
        assert sorted(kinds) == [("clawback", -3, 0), ("debt", 0, 2)]
    assert_ledger_balanced(app)


def test_point5_consume_is_refused_with_credits_in_debt_until_a_grant_settles_it(app: Flask) -> None:
    user_id = make_user(app)
    with app.app_context():
        credits.consume(user_id, "render:1")  # the free credit, spent
        credits.take_back_uncommitted(user_id, 3, "stripe dispute", "stripe:evt_d")
        db.session.commit()
        with pytest.raises(PaymentError) as raised:
            credits.consume(user_id, "render:2")
        error = raised.value
        assert (error.status_code, error.code, error.recoverable) == (402, "CREDITS_IN_DEBT", False)
        assert error.details == {
            "debt": 3,
            "balance": 0,
            "settle": "/api/payments/checkout",
            "how": "buy any pack: its credits settle the debt first, the rest stay on your balance",
        }
        # A grant smaller than the debt all goes to it; the balance stays 0 and renders stay refused.
        assert credits.grant(user_id, 2, "pack", "stripe:cs_small") is True
        assert credits.account(user_id) == credits.Account(balance=0, debt=1)
        assert credits.debt_settled_by("grant", "stripe:cs_small") == 2
        with pytest.raises(PaymentError):
            credits.consume(user_id, "render:2")
        assert credits.grant(user_id, 5, "pack", "stripe:cs_big") is True
        assert credits.account(user_id) == credits.Account(balance=4, debt=0)
        assert credits.grant(user_id, 5, "pack", "stripe:cs_big") is False  # a replay settles nothing twice
        credits.consume(user_id, "render:2")
        assert credits.account(user_id) == credits.Account(balance=3, debt=0)
        settled = db.session.scalars(select(CreditEntry.ref).where(CreditEntry.kind == "debt_settled")).all()
        assert sorted(settled) == ["grant:stripe:cs_big", "grant:stripe:cs_small"]
    assert_ledger_balanced(app)


def test_point5_a_render_credit_given_back_while_owing_pays_the_debt(app: Flask) -> None:
    user_id = make_user(app)
    with app.app_context():
        credits.consume(user_id, "render:7")
        credits.take_back_uncommitted(user_id, 2, "stripe refund", "stripe:evt_r")
        db.session.commit()
        assert credits.refund(user_id, "render:7") is True  # the render failed: its credit goes to the debt
        assert credits.account(user_id) == credits.Account(balance=0, debt=1)
    assert_ledger_balanced(app)


def _check_claw_back_races_renders(app: Flask) -> None:
    """A claw-back of 10 while 8 renders spend: never negative, the ledger sums, nothing lost or made up."""
    user_id = make_user(app, "clawrace@example.com")
    with app.app_context():
        credits.grant(user_id, 10, "pack", "stripe:cs_claw")  # 11 credits
        db.session.remove()
    barrier = threading.Barrier(9)
    errors: list[BaseException] = []

    def take_back() -> None:
        with app.app_context():
            barrier.wait(timeout=10)
            try:
                credits.take_back_uncommitted(user_id, 10, "stripe refund", "stripe:evt_race")
                db.session.commit()
            except BaseException as exc:
                errors.append(exc)
            finally:
                db.session.remove()

    thread = threading.Thread(target=take_back)
    thread.start()
    barrier_refs = [f"render:claw:{i}" for i in range(8)]
    ok = _race_with(app, user_id, barrier_refs, barrier)
    thread.join(30)
    assert errors == []
    with app.app_context():
        state = credits.account(user_id)
    # 11 credits, 10 taken back, `ok` renders spent them: what is left minus what is owed is 1 - ok.
    assert state.balance - state.debt == 1 - ok
    assert_ledger_balanced(app)


def _race_with(app: Flask, user_id: int, refs: list[str], barrier: threading.Barrier) -> int:
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(ref: str) -> None:
        with app.app_context():
            barrier.wait(timeout=10)
            try:
                credits.consume(user_id, ref)
                outcome = "ok"
            except PaymentError:
                outcome = "refused"
            finally:
                db.session.remove()
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(ref,)) for ref in refs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == len(refs)
    return outcomes.count("ok")


def test_point5_a_claw_back_racing_renders_keeps_the_ledger_true_on_sqlite(app: Flask) -> None:
    _check_claw_back_races_renders(app)


def test_point5_a_claw_back_racing_renders_keeps_the_ledger_true_on_postgresql(pg_app: Flask) -> None:
    _check_claw_back_races_renders(pg_app)
