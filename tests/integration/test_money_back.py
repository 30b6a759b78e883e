"""Point 5 (#13): payments that cannot be applied are kept and alerted; refunds and disputes take credits back.

Through the real app and the real stripe SDK's signature check (events built and signed by the Stripe peer),
on SQLite and PostgreSQL where concurrency matters. After every scenario the ledger is checked: each
account's balance is the sum of its entries' amounts and its debt the sum of their debt changes.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe
from flask import Flask
from sqlalchemy import delete, func, select

from backend.app.extensions import db
from backend.app.models import (
    AlertRule,
    CreditEntry,
    CreditPurchase,
    ErrorEvent,
    ProcessedStripeEvent,
    Render,
    UnappliedPayment,
    User,
)
from backend.app.monitoring import flush_error_stats
from backend.app.monitoring.alerts.engine import evaluate_condition
from backend.app.monitoring.inbox import Inbox
from backend.app.payments.failed_work import PaymentInboxSource
from backend.app.services import credits
from tests.harness.app import bearer, login, read_log
from tests.harness.contract import assert_error
from tests.harness.ledger import assert_ledger_balanced
from tests.harness.payments import payments_app
from tests.harness.peers import stripe_peer as stripe_module
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.peers.stripe_peer import StripePeer, build_event, deliver_webhook, signed_webhook

RENDER = {"preset": "waveform", "resolution": "320x180", "fps": 24}


@dataclass
class Shop:
    """The app, its Stripe peer and a few moves a buyer or Stripe makes."""

    app: Flask
    peer: StripePeer

    @property
    def client(self) -> Any:
        return self.app.test_client()

    def buyer(self, email: str = "buyer@example.com") -> tuple[dict[str, str], int]:
        client = self.client
        headers = bearer(login(client, email)["access_token"])
        return headers, client.get("/api/me", headers=headers).get_json()["user"]["id"]

    def checkout(self, headers: dict[str, str], pack: str = "starter") -> str:
        response = self.client.post("/api/payments/checkout", json={"pack": pack}, headers=headers)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["session_id"]

    def deliver(self, event: dict[str, Any]) -> dict[str, Any]:
        response = deliver_webhook(self.client, event, self.peer.webhook_secret)
        assert response.status_code == 200, response.get_json()  # always a 2xx, so Stripe stops retrying
        return response.get_json()

    def buy(self, headers: dict[str, str], pack: str = "starter") -> str:
        session_id = self.checkout(headers, pack)
        assert self.deliver(self.peer.completed_event(session_id))["credits_granted"] > 0
        return session_id

    def credits(self, headers: dict[str, str]) -> dict[str, int]:
        response = self.client.get("/api/payments/credits", headers=headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def spend(self, user_id: int, count: int) -> None:
        with self.app.app_context():
            for index in range(count):
                credits.consume(user_id, f"spent:{user_id}:{index}")

    def purchase(self, session_id: str) -> CreditPurchase:
        with self.app.app_context():
            row = db.session.get(CreditPurchase, session_id)
            assert row is not None
            db.session.expunge(row)
            return row

    def unapplied(self) -> list[UnappliedPayment]:
        with self.app.app_context():
            rows = db.session.scalars(select(UnappliedPayment).order_by(UnappliedPayment.id)).all()
            for row in rows:
                db.session.expunge(row)
            return list(rows)

    def alerts(self) -> int:
        """PAYMENT_NOT_APPLIED error events recorded so far."""
        flush_error_stats(self.app)
        with self.app.app_context():
            return int(
                db.session.scalar(
                    select(func.count()).select_from(ErrorEvent).where(ErrorEvent.code == "PAYMENT_NOT_APPLIED")
                )
                or 0
            )


@pytest.fixture(params=["sqlite", "postgresql"])
def shop(request: pytest.FixtureRequest, make_app: Callable[..., Flask], stripe_peer: StripePeer) -> Shop:
    """A payments app on SQLite or on PostgreSQL (the `pg_app` database, emptied after the test)."""
    extra: dict[str, Any] = {"RENDER_MIN_FREE_DISK_MB": 0, "RENDER_MIN_FREE_MEMORY_MB": 0}
    if request.param == "postgresql":
        extra["SQLALCHEMY_DATABASE_URI"] = request.getfixturevalue("pg_app").config["SQLALCHEMY_DATABASE_URI"]
    return Shop(payments_app(make_app, stripe_peer.url, **extra), stripe_peer)


@pytest.fixture
def sqlite_shop(make_app: Callable[..., Flask], stripe_peer: StripePeer, sendgrid_peer: SendGridPeer) -> Shop:
    """A payments app on SQLite whose emails go to the SendGrid peer."""
    app = payments_app(
        make_app,
        stripe_peer.url,
        SENDGRID_API_KEY=sendgrid_peer.api_key,
        SENDGRID_API_HOST=sendgrid_peer.url,
        SENDGRID_TIMEOUT=2,
        RENDER_MIN_FREE_DISK_MB=0,
        RENDER_MIN_FREE_MEMORY_MB=0,
    )
    return Shop(app, stripe_peer)


def _critical_lines(app: Flask) -> list[dict[str, Any]]:
    return [line for line in read_log(app, "app.log") if line["level"] == "CRITICAL"]


def _without_metadata(shop: Shop, headers: dict[str, str]) -> dict[str, Any]:
    """A paid session our code cannot attribute (its metadata lost, e.g. created from the Stripe dashboard)."""
    session_id = shop.checkout(headers)
    shop.peer.sessions[session_id].update(metadata={"pack": "starter"}, client_reference_id=None)
    return shop.peer.completed_event(session_id)


# -- unapplied sessions ---------------------------------------------------------------------------------------


def test_point5_a_paid_session_that_cannot_apply_is_kept_alerted_and_acknowledged_once(shop: Shop) -> None:
    headers, _ = shop.buyer()
    event = _without_metadata(shop, headers)
    ack = shop.deliver(event)
    assert ack == {"received": True, "duplicate": False, "credits_granted": 0, "unapplied": "SESSION_METADATA_UNUSABLE"}
    [item] = shop.unapplied()
    assert (item.event_id, item.event_type, item.status) == (event["id"], "checkout.session.completed", "open")
    assert (item.reason_code, item.amount_cents, item.currency) == ("SESSION_METADATA_UNUSABLE", 500, "usd")
    assert item.object_id == event["data"]["object"]["id"] and item.event == event  # kept to apply it again
    assert item.errors[0]["code"] == "SESSION_METADATA_UNUSABLE" and item.attempts == 1
    # The alert: a CRITICAL line saying money was taken and nothing granted, and a countable error event.
    [critical] = _critical_lines(shop.app)
    assert "Money taken, nothing granted" in critical["message"] and event["id"] in critical["message"]
    assert shop.alerts() == 1
    with shop.app.app_context():
        rule = AlertRule(kind="code_count", params={"code": "PAYMENT_NOT_APPLIED", "threshold": 1})
        firing, value, _ = evaluate_condition(shop.app, rule, datetime.now(UTC))
        assert firing and value == 1.0
    # Stripe redelivers (or an admin replays it from the dashboard): acknowledged, neither kept nor alerted twice.
    assert shop.deliver(event) == {"received": True, "duplicate": True}
    assert len(shop.unapplied()) == 1 and shop.alerts() == 1 and len(_critical_lines(shop.app)) == 1
    assert shop.credits(headers) == {"balance": 1, "debt": 0}
    assert_ledger_balanced(shop.app)


def test_point5_an_unknown_user_waits_in_the_inbox_and_a_retry_applies_it_once_the_user_exists(
    sqlite_shop: Shop,
) -> None:
    shop = sqlite_shop
    headers, _ = shop.buyer()
    session_id = shop.checkout(headers)
    shop.peer.sessions[session_id]["metadata"]["user_id"] = "987654"  # an account deleted since, say
    shop.peer.sessions[session_id]["client_reference_id"] = "987654"
    event = shop.peer.completed_event(session_id)
    assert shop.deliver(event)["unapplied"] == "UNKNOWN_USER"
    source = PaymentInboxSource()
    with shop.app.app_context():
        assert source.count() == 1 and source.oldest() is not None
        assert source.count(failed_before=datetime.now(UTC) - timedelta(hours=1)) == 0
        [item] = source.items(limit=10)
        assert (item.kind, item.error_code, item.status, item.attempts) == ("payment", "UNKNOWN_USER", "failed", 1)
        assert "987654" in (item.error_message or "") and session_id in item.title and "5.00 USD" in item.title
        assert item.details["event_type"] == "checkout.session.completed"
        assert item.details["payment_intent"] == shop.peer.sessions[session_id]["payment_intent"]
        assert (item.details["amount_cents"], item.details["currency"], item.details["user_id"]) == (500, "usd", 987654)
        # Retried while the user is still missing: the new failure goes into its history, it stays open.
        assert source.retry(item.id, actor="admin@example.com") is True
        again = source.get(item.id)
        assert again is not None and again.status == "failed" and again.attempts == 2 and len(again.history) == 2
        assert again.history[-1]["actor"] == "admin@example.com"
        db.session.add(User(id=987654, email="restored@example.com", password_hash="x"))
        db.session.commit()
        assert source.retry(item.id, actor="admin@example.com") is True
        applied = source.get(item.id)
        assert applied is not None and applied.status == "applied" and source.count() == 0
        assert source.retry(item.id, actor="admin@example.com") is False  # no longer in the inbox
        assert credits.account(987654) == credits.Account(balance=6, debt=0)
        assert db.session.get(CreditPurchase, session_id) is not None
    assert shop.deliver(event) == {"received": True, "duplicate": True}
    with shop.app.app_context():
        assert credits.balance(987654) == 6
    assert_ledger_balanced(shop.app)


def test_point5_inbox_discard_keeps_the_reason_and_purge_deletes_what_was_given_up(sqlite_shop: Shop) -> None:
    shop = sqlite_shop
    headers, _ = shop.buyer()
    first = _without_metadata(shop, headers)
    second = _without_metadata(shop, headers)
    shop.deliver(first)
    shop.deliver(second)
    source = PaymentInboxSource()
    inbox = Inbox([source])  # the aggregator the admin API and the alert rule use, through the protocol
    with shop.app.app_context():
        assert inbox.counts() == {"payment": 2} and inbox.oldest()["payment"] is not None
        one, two = (item.id for item in source.items(limit=10))
        assert [item.id for item in source.items(limit=1, offset=1)] == [two]
        assert source.discard(one, reason="refunded by hand in the Stripe dashboard", actor="admin@example.com")
        assert source.discard(one, reason="again", actor="admin@example.com") is False
        assert source.retry(one, actor="admin@example.com") is False
        discarded = source.get(one)
        assert discarded is not None and discarded.status == "discarded"
        assert discarded.details["discard_reason"] == "refunded by hand in the Stripe dashboard"
        assert discarded.history[-1]["code"] == "DISCARDED" and source.count() == 1
        assert source.purge(datetime.now(UTC) - timedelta(days=1)) == 0  # within the retention period
        assert source.purge(datetime.now(UTC) + timedelta(seconds=1)) == 1
        assert source.get(one) is None and source.get(two) is not None and source.count() == 1
    assert_ledger_balanced(shop.app)


# -- refunds and disputes -------------------------------------------------------------------------------------


def test_point5_a_full_refund_of_an_unspent_pack_takes_its_credits_back(shop: Shop) -> None:
    headers, _ = shop.buyer()
    session_id = shop.buy(headers)
    assert shop.credits(headers) == {"balance": 6, "debt": 0}
    refund = shop.peer.refunded_event(session_id)
    ack = shop.deliver(refund)
    assert ack == {"received": True, "duplicate": False, "credits_clawed_back": 5, "debt_added": 0}
    assert shop.credits(headers) == {"balance": 1, "debt": 0}
    purchase = shop.purchase(session_id)
    assert (purchase.clawed_back, purchase.status) == (5, "refunded")
    assert purchase.payment_intent == shop.peer.sessions[session_id]["payment_intent"]
    assert shop.deliver(refund)["duplicate"] is True
    assert shop.deliver(dict(refund, id="evt_same_refund_again"))["credits_clawed_back"] == 0
    assert shop.credits(headers) == {"balance": 1, "debt": 0}
    assert shop.unapplied() == []
    assert_ledger_balanced(shop.app)


def test_point5_a_refund_after_spending_leaves_a_debt_renders_are_402_and_the_next_pack_settles_it(
    shop: Shop, audio_files: AudioFactory
) -> None:
    headers, user_id = shop.buyer()
    wav = audio_files.make("wav", seconds=0.5).read_bytes()
    upload = shop.client.post(
        "/api/uploads", data={"file": (io.BytesIO(wav), "a.wav")}, headers=headers, content_type="multipart/form-data"
    )
    assert upload.status_code == 201, upload.get_json()
    upload_id = upload.get_json()["upload"]["id"]
    session_id = shop.buy(headers)
    shop.spend(user_id, 4)  # 6 - 4: two unspent credits of the pack are left
    ack = shop.deliver(shop.peer.refunded_event(session_id))
    assert (ack["credits_clawed_back"], ack["debt_added"]) == (5, 3)
    assert shop.credits(headers) == {"balance": 0, "debt": 3}  # never a negative balance: an explicit debt
    with shop.app.app_context():
        debt = db.session.execute(
            select(CreditEntry.kind, CreditEntry.amount, CreditEntry.debt_change).where(
                CreditEntry.user_id == user_id, CreditEntry.kind.in_(("clawback", "debt"))
            )
        ).all()
    assert sorted(debt) == [("clawback", -2, 0), ("debt", 0, 3)]
    refused = shop.client.post("/api/renders", json={"upload_id": upload_id, **RENDER}, headers=headers)
    body = assert_error(refused, 402, "CREDITS_IN_DEBT")
    assert body["recoverable"] is False
    assert (body["details"]["debt"], body["details"]["balance"], body["details"]["settle"]) == (
        3,
        0,
        "/api/payments/checkout",
    )
    with shop.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Render)) == 0  # nothing left behind
    assert_ledger_balanced(shop.app)
    # Buying again pays the debt off first; the rest is on the balance and renders start again.
    second = shop.checkout(headers)
    assert shop.deliver(shop.peer.completed_event(second)) == {
        "received": True,
        "duplicate": False,
        "credits_granted": 5,
        "debt_settled": 3,
    }
    assert shop.credits(headers) == {"balance": 2, "debt": 0}
    accepted = shop.client.post("/api/renders", json={"upload_id": upload_id, **RENDER}, headers=headers)
    assert accepted.status_code == 202, accepted.get_json()
    assert shop.credits(headers) == {"balance": 1, "debt": 0}
    assert_ledger_balanced(shop.app)


def test_point5_the_user_is_told_what_was_taken_back_and_when_the_debt_is_paid_off(
    sqlite_shop: Shop, sendgrid_peer: SendGridPeer
) -> None:
    shop = sqlite_shop
    headers, user_id = shop.buyer("told@example.com")
    session_id = shop.buy(headers)
    shop.spend(user_id, 5)
    refund = shop.peer.refunded_event(session_id)
    shop.deliver(refund)
    [notice] = sendgrid_peer.find(custom_arg=("dedup_key", f"money-back:{refund['id']}"))
    text = notice.body["content"][0]["value"]
    assert notice.recipients == ["told@example.com"] and "1 came off your balance" in text and "4 had already" in text
    # A crash after the claw-back but before the event id was recorded: Stripe redelivers; nothing is taken twice.
    with shop.app.app_context():
        db.session.execute(delete(ProcessedStripeEvent).where(ProcessedStripeEvent.event_id == refund["id"]))
        db.session.commit()
    assert shop.deliver(refund)["credits_clawed_back"] == 0
    assert shop.credits(headers) == {"balance": 0, "debt": 4}
    assert sendgrid_peer.count(custom_arg=("dedup_key", f"money-back:{refund['id']}")) == 1
    second = shop.buy(headers)
    [settled] = sendgrid_peer.find(custom_arg=("dedup_key", f"debt-settled:{second}"))
    assert "owes nothing now" in settled.body["content"][0]["value"]
    assert shop.credits(headers) == {"balance": 1, "debt": 0}
    assert_ledger_balanced(shop.app)


def test_point5_partial_refunds_are_cumulative_proportional_and_never_more_than_the_pack(shop: Shop) -> None:
    headers, _ = shop.buyer()
    session_id = shop.buy(headers, "studio")  # 100 credits for 60.00
    assert shop.credits(headers)["balance"] == 101
    tiny = shop.peer.refunded_event(session_id, 1)  # 0.01 of 60.00: less than one credit's worth, rounded down
    assert shop.deliver(tiny)["credits_clawed_back"] == 0
    assert shop.purchase(session_id).status == "partially_refunded"
    assert shop.deliver(shop.peer.refunded_event(session_id, 1499))["credits_clawed_back"] == 25  # 15.00 in all
    assert shop.deliver(dict(tiny, id="evt_stale_partial_refund"))["credits_clawed_back"] == 0  # late and older
    assert shop.deliver(shop.peer.refunded_event(session_id, 3000))["credits_clawed_back"] == 50  # 45.00 in all
    assert shop.credits(headers)["balance"] == 26
    last = shop.peer.refunded_event(session_id)  # the remaining 15.00
    assert last["data"]["object"]["refunded"] is True and last["data"]["object"]["amount_refunded"] == 6000
    assert shop.deliver(last)["credits_clawed_back"] == 25
    assert shop.deliver(dict(last, id="evt_refund_repeated"))["credits_clawed_back"] == 0  # capped at the pack
    purchase = shop.purchase(session_id)
    assert (purchase.clawed_back, purchase.status) == (100, "refunded")
    assert shop.credits(headers) == {"balance": 1, "debt": 0}
    assert_ledger_balanced(shop.app)


def test_point5_a_dispute_claws_back_what_is_left_of_the_pack(shop: Shop) -> None:
    headers, user_id = shop.buyer()
    session_id = shop.buy(headers)
    assert shop.deliver(shop.peer.refunded_event(session_id, 200))["credits_clawed_back"] == 2  # 2.00 of 5.00
    shop.spend(user_id, 3)  # 6 - 2 - 3 = 1 left
    dispute = shop.peer.dispute_event(session_id)
    assert dispute["data"]["object"]["object"] == "dispute" and dispute["data"]["object"]["amount"] == 300
    ack = shop.deliver(dispute)
    assert (ack["credits_clawed_back"], ack["debt_added"]) == (3, 2)
    assert shop.credits(headers) == {"balance": 0, "debt": 2}
    purchase = shop.purchase(session_id)
    assert (purchase.clawed_back, purchase.status) == (5, "disputed")
    assert shop.deliver(shop.peer.refunded_event(session_id))["credits_clawed_back"] == 0  # nothing is left
    assert shop.purchase(session_id).status == "disputed"
    assert_ledger_balanced(shop.app)


def test_point5_money_back_for_a_charge_we_never_sold_is_kept_and_applies_when_its_sale_arrives(shop: Shop) -> None:
    headers, _ = shop.buyer()
    foreign = {
        "id": "ch_not_ours_000000000000", "object": "charge", "amount": 900, "amount_refunded": 900,
        "currency": "eur", "payment_intent": "pi_not_ours_00000000000", "refunded": True,
    }  # fmt: skip
    foreign_refund = build_event("charge.refunded", foreign)
    ack = shop.deliver(foreign_refund)
    assert ack == {"received": True, "duplicate": False, "credits_clawed_back": 0, "unapplied": "UNKNOWN_CHARGE"}
    [critical] = _critical_lines(shop.app)
    assert "Money returned to the customer, no credits taken back" in critical["message"]
    no_intent = shop.deliver(build_event("charge.dispute.created", {"id": "dp_1", "charge": "ch_1", "amount": 5}))
    assert no_intent["unapplied"] == "UNKNOWN_CHARGE"
    # Stripe does not order events: the refund of a sale can arrive before the sale itself.
    session_id = shop.checkout(headers)
    completed = shop.peer.completed_event(session_id)
    early_refund = shop.peer.refunded_event(session_id)
    assert shop.deliver(early_refund)["unapplied"] == "UNKNOWN_CHARGE"
    assert shop.deliver(completed)["credits_granted"] == 5
    assert shop.credits(headers) == {"balance": 1, "debt": 0}  # the waiting refund was applied at once
    items = {item.event_id: item for item in shop.unapplied()}
    assert items[early_refund["id"]].status == "applied"
    assert items[foreign_refund["id"]].status == "open"
    assert shop.purchase(session_id).status == "refunded"
    assert shop.alerts() == 3
    assert_ledger_balanced(shop.app)


# -- late events of a sale ------------------------------------------------------------------------------------


def test_point5_delayed_payments_grant_once_on_success_and_failures_or_expiry_grant_nothing(
    sqlite_shop: Shop, sendgrid_peer: SendGridPeer
) -> None:
    shop = sqlite_shop
    headers, _ = shop.buyer("late@example.com")
    paid_later = shop.checkout(headers)
    pending = shop.deliver(shop.peer.completed_event(paid_later, delayed=True))
    assert pending == {"received": True, "duplicate": False, "credits_granted": 0, "ignored": "payment_status unpaid"}
    succeeded = shop.peer.async_succeeded_event(paid_later)
    assert shop.deliver(succeeded)["credits_granted"] == 5
    assert shop.deliver(dict(succeeded, id="evt_succeeded_again"))["credits_granted"] == 0
    assert shop.purchase(paid_later).payment_intent == shop.peer.sessions[paid_later]["payment_intent"]
    failed_later = shop.checkout(headers)
    shop.deliver(shop.peer.completed_event(failed_later, delayed=True))
    failed = shop.deliver(shop.peer.async_failed_event(failed_later))
    assert failed == {"received": True, "duplicate": False, "credits_granted": 0, "recorded": "payment_failed"}
    [told] = sendgrid_peer.find(custom_arg=("dedup_key", f"payment-failed:{failed_later}"))
    assert "Nothing was charged" in told.body["content"][0]["value"]
    abandoned = shop.checkout(headers)
    expired = shop.deliver(shop.peer.expired_event(abandoned))
    assert expired == {"received": True, "duplicate": False, "credits_granted": 0, "recorded": "session_expired"}
    assert shop.credits(headers) == {"balance": 6, "debt": 0}
    assert shop.unapplied() == [] and shop.alerts() == 0
    assert_ledger_balanced(shop.app)


# -- once per event, under concurrency ------------------------------------------------------------------------


def _at_once(shop: Shop, events: list[dict[str, Any]]) -> list[int]:
    barrier = threading.Barrier(len(events))
    statuses: list[int] = []
    lock = threading.Lock()

    def deliver(event: dict[str, Any]) -> None:
        barrier.wait(timeout=10)
        status = deliver_webhook(shop.app.test_client(), event, shop.peer.webhook_secret).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=deliver, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def test_point5_concurrent_deliveries_of_money_back_events_act_once(shop: Shop) -> None:
    headers, _ = shop.buyer()
    starter = shop.buy(headers)
    studio = shop.buy(headers, "studio")
    assert shop.credits(headers)["balance"] == 106
    refund = shop.peer.refunded_event(starter)
    assert _at_once(shop, [refund] * 4) == [200] * 4
    assert shop.credits(headers)["balance"] == 101
    # Two partial refunds of one charge at once (cumulative 30.00, then 60.00): the pack comes back once, not 1.5x.
    half, rest = shop.peer.refunded_event(studio, 3000), shop.peer.refunded_event(studio)
    assert _at_once(shop, [half, rest, half, rest]) == [200] * 4
    assert shop.credits(headers) == {"balance": 1, "debt": 0}
    assert shop.purchase(studio).clawed_back == 100
    # One unapplied event delivered four times at once: kept once, alerted once.
    orphan = _without_metadata(shop, headers)
    assert _at_once(shop, [orphan] * 4) == [200] * 4
    assert len(shop.unapplied()) == 1 and shop.alerts() == 1
    with shop.app.app_context():
        refs = db.session.scalars(select(CreditEntry.ref).where(CreditEntry.kind == "clawback")).all()
    # Each event's ref at most once; the starter's refund among them; the studio in one or two steps.
    assert len(refs) == len(set(refs)) and f"stripe:{refund['id']}" in refs
    assert set(refs) <= {f"stripe:{refund['id']}", f"stripe:{half['id']}", f"stripe:{rest['id']}"}
    assert_ledger_balanced(shop.app)


# -- the Stripe peer --------------------------------------------------------------------------------------------


def test_point5_stripe_peer_builds_late_and_money_back_events_with_stripes_shapes_and_real_signatures(
    stripe_peer: StripePeer,
) -> None:
    client = stripe_module.sdk_client(stripe_peer.url)
    params = {
        "mode": "payment",
        "success_url": "https://example.com/ok",
        "line_items": [
            {"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 700, "product_data": {"name": "x"}}}
        ],
    }
    paid = client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
    assert stripe_peer.sessions[paid.id]["payment_intent"] is None  # none until paid, like Stripe
    completed = stripe_peer.completed_event(paid.id)
    intent = completed["data"]["object"]["payment_intent"]
    assert intent.startswith("pi_") and completed["data"]["object"]["payment_status"] == "paid"
    charge = stripe_peer.charge_of(paid.id)
    assert (charge["object"], charge["payment_intent"], charge["amount"], charge["amount_refunded"]) == (
        "charge",
        intent,
        700,
        0,
    )
    assert client.v1.charges.retrieve(charge["id"]).amount == 700  # the SDK reads it over HTTP
    partial = stripe_peer.refunded_event(paid.id, 300)
    full = stripe_peer.refunded_event(paid.id)
    assert (partial["data"]["object"]["amount_refunded"], partial["data"]["object"]["refunded"]) == (300, False)
    assert (full["data"]["object"]["amount_refunded"], full["data"]["object"]["refunded"]) == (700, True)
    with pytest.raises(ValueError):
        stripe_peer.refunded_event(paid.id, 1)  # nothing left to refund
    dispute = stripe_peer.dispute_event(paid.id)["data"]["object"]
    assert (dispute["charge"], dispute["payment_intent"], dispute["status"]) == (charge["id"], intent, "needs_response")
    delayed = client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
    pending = stripe_peer.completed_event(delayed.id, delayed=True)["data"]["object"]
    assert (pending["status"], pending["payment_status"]) == ("complete", "unpaid") and pending["payment_intent"]
    assert stripe_peer.async_failed_event(delayed.id)["type"] == "checkout.session.async_payment_failed"
    late = client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
    stripe_peer.complete_session(late.id, delayed=True)
    succeeded = stripe_peer.async_succeeded_event(late.id)
    assert succeeded["data"]["object"]["payment_status"] == "paid" and stripe_peer.charge_of(late.id)
    abandoned = client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
    expired = stripe_peer.expired_event(abandoned.id)["data"]["object"]
    assert (expired["status"], expired["payment_status"], expired["payment_intent"]) == ("expired", "unpaid", None)
    for event in (completed, partial, full, stripe_peer.dispute_event(paid.id), succeeded):
        payload, headers = signed_webhook(event, stripe_peer.webhook_secret)
        verified = stripe.Webhook.construct_event(payload, headers["Stripe-Signature"], stripe_peer.webhook_secret)
        assert verified.type == event["type"] and verified.data.object.id == event["data"]["object"]["id"]


def test_point5_and_6_an_unapplied_payment_is_in_the_admin_inbox_and_a_discard_keeps_its_reason(
    sqlite_shop: Shop,
) -> None:
    """Wired into the app: the admin API lists the unapplied payment with its real reason and discards it."""
    shop = sqlite_shop
    headers, _ = shop.buyer()
    session_id = shop.checkout(headers)
    shop.peer.sessions[session_id]["metadata"] = {"pack": "starter"}  # no user, no credits: unusable
    shop.peer.sessions[session_id]["client_reference_id"] = None
    assert shop.deliver(shop.peer.completed_event(session_id))["unapplied"] == "SESSION_METADATA_UNUSABLE"
    client = shop.client
    admin = bearer(login(client, "admin@example.com")["access_token"])

    listed = client.get("/admin/api/monitoring/failed-work?kind=payment", headers=admin).get_json()
    assert listed["totals"]["payment"] == 1
    [item] = listed["items"]
    assert (item["kind"], item["error_code"]) == ("payment", "SESSION_METADATA_UNUSABLE")
    assert session_id in item["title"]
    refused = client.post(f"/admin/api/monitoring/failed-work/payment/{item['id']}/discard", headers=admin, json={})
    assert_error(refused, 422, "VALIDATION_ERROR")  # a discard needs its reason
    done = client.post(
        f"/admin/api/monitoring/failed-work/payment/{item['id']}/discard",
        headers=admin,
        json={"reason": "refunded by hand in the Stripe dashboard"},
    )
    assert done.status_code == 200, done.get_json()
    shown = client.get(f"/admin/api/monitoring/failed-work/payment/{item['id']}", headers=admin).get_json()["item"]
    assert shown["status"] == "discarded" and shown["history"][-1]["code"] == "DISCARDED"
    assert client.get("/admin/api/monitoring/failed-work", headers=admin).get_json()["totals"]["payment"] == 0
    audit = [e for e in read_log(shop.app, "security.log") if e.get("event_type") == "failed_work_discarded"]
    assert audit and audit[-1]["reason"] == "refunded by hand in the Stripe dashboard"
