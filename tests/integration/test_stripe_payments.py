"""Payments: the real stripe SDK against the local Checkout peer, webhooks signed the real way, credits."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import stripe
from flask import Flask
from sqlalchemy import func, select

from backend.app.errors import APIError
from backend.app.extensions import db
from backend.app.models import ProcessedStripeEvent
from backend.app.services.stripe_payments import parse_packs, translate_stripe_error
from tests.harness.app import bearer, login, read_log
from tests.harness.contract import assert_error
from tests.harness.payments import payments_app
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.peers.stripe_peer import StripePeer, build_event, deliver_webhook, signed_webhook

FAST = {"RETRY_SLEEP_ENABLED": False}


def credits_of(client: Any, token: str) -> int:
    response = client.get("/api/payments/credits", headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["balance"]


def test_checkout_creates_a_stripe_session_for_the_pack(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url)
    client = app.test_client()
    token = login(client, "buyer@example.com")["access_token"]
    response = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == {"checkout_url", "session_id"}
    session = stripe_peer.sessions[body["session_id"]]
    assert body["checkout_url"] == session["url"]
    assert session["amount_total"] == 500 and session["mode"] == "payment"
    assert session["customer_email"] == "buyer@example.com"
    assert session["metadata"] == {"user_id": session["client_reference_id"], "pack": "starter", "credits": "5"}
    [create] = stripe_peer.creates()
    assert create.idempotency_key and create.idempotency_key.startswith("checkout:")


def test_the_same_idempotency_key_returns_the_same_session(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url)
    client = app.test_client()
    token = login(client)["access_token"]
    headers = {**bearer(token), "Idempotency-Key": "buy-starter-0001"}
    first = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=headers)
    second = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.get_json()["session_id"] == second.get_json()["session_id"]
    assert len(stripe_peer.sessions) == 1
    other_pack = client.post("/api/payments/checkout", json={"pack": "studio"}, headers=headers)
    assert_error(other_pack, 422, "IDEMPOTENCY_KEY_REUSED")
    bad = client.post(
        "/api/payments/checkout", json={"pack": "starter"}, headers={**bearer(token), "Idempotency-Key": "x" * 256}
    )
    assert_error(bad, 422, "VALIDATION_ERROR")


def test_a_retried_checkout_reuses_our_idempotency_key(
    make_app: Callable[..., Flask], stripe_peer: StripePeer, make_fault_proxy: Callable[..., Any]
) -> None:
    proxy = make_fault_proxy(stripe_peer.url, max_hold=5.0)
    app = payments_app(make_app, proxy.url)
    client = app.test_client()
    token = login(client)["access_token"]
    # The peer creates the session but the reply is lost: our retry must replay it, not create another.
    proxy.status(500, times=1, after_upstream=True)
    response = client.post("/api/payments/checkout", json={"pack": "studio"}, headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    creates = stripe_peer.creates()
    assert len(creates) == 2 and creates[0].idempotency_key == creates[1].idempotency_key
    assert len(stripe_peer.sessions) == 1 and response.get_json()["session_id"] in stripe_peer.sessions


def test_a_declined_card_is_402_not_recoverable_by_resending_and_does_not_trip_the_breaker(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url, CIRCUIT_BREAKERS={"stripe": {"min_calls": 2}})
    client = app.test_client()
    token = login(client)["access_token"]
    for _ in range(3):
        stripe_peer.fail_next(
            402, "Your card was declined.", type="card_error", code="card_declined", decline_code="generic_decline"
        )
        response = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=bearer(token))
        body = assert_error(response, 402, "PAYMENT_DECLINED")
        assert body["recoverable"] is False  # declined again if resent: the user changes the card (#13 point 9)
        assert body["details"] == {"reason": "card_declined", "decline_code": "generic_decline"}
    assert len(stripe_peer.creates()) == 3  # one attempt each: a decline is never retried
    with app.app_context():
        from backend.app.resilience.recovery import get_breaker

        assert get_breaker("stripe").state.value == "closed"


def test_unknown_pack_is_422_and_unauthenticated_checkout_is_401(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url)
    client = app.test_client()
    token = login(client)["access_token"]
    body = assert_error(
        client.post("/api/payments/checkout", json={"pack": "gold"}, headers=bearer(token)), 422, "VALIDATION_ERROR"
    )
    assert "starter" in body["details"]["fields"]["pack"]
    assert client.post("/api/payments/checkout", json={"pack": "starter"}).status_code == 401
    assert stripe_peer.creates() == []


def test_not_configured_stripe_is_503_service_not_configured(make_app: Callable[..., Flask]) -> None:
    app = make_app(**FAST)
    client = app.test_client()
    token = login(client)["access_token"]
    response = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=bearer(token))
    assert_error(response, 503, "SERVICE_NOT_CONFIGURED")
    event = build_event("checkout.session.completed", {"id": "cs_x"})
    assert_error(deliver_webhook(client, event, "whsec_any"), 503, "SERVICE_NOT_CONFIGURED")


def _completed(stripe_peer: StripePeer, client: Any, token: str, pack: str = "starter") -> dict[str, Any]:
    response = client.post("/api/payments/checkout", json={"pack": pack}, headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    return stripe_peer.completed_event(response.get_json()["session_id"])


def test_webhook_grants_the_pack_once_and_emails_one_receipt(
    make_app: Callable[..., Flask], stripe_peer: StripePeer, sendgrid_peer: SendGridPeer
) -> None:
    app = payments_app(
        make_app, stripe_peer.url, SENDGRID_API_KEY=sendgrid_peer.api_key, SENDGRID_API_HOST=sendgrid_peer.url
    )
    client = app.test_client()
    token = login(client, "payer@example.com")["access_token"]
    assert credits_of(client, token) == 1  # the free credit of a new account
    event = _completed(stripe_peer, client, token)
    first = deliver_webhook(client, event, stripe_peer.webhook_secret)
    assert first.status_code == 200
    assert first.get_json() == {"received": True, "duplicate": False, "credits_granted": 5}
    assert credits_of(client, token) == 6
    duplicate = deliver_webhook(client, event, stripe_peer.webhook_secret)
    assert duplicate.status_code == 200 and duplicate.get_json()["duplicate"] is True
    # Stripe may also send the same session in a new event (e.g. a replay from the dashboard): still once.
    replay = dict(event, id="evt_replayed_0001")
    assert deliver_webhook(client, replay, stripe_peer.webhook_secret).get_json()["credits_granted"] == 0
    assert credits_of(client, token) == 6
    session_id = event["data"]["object"]["id"]
    [receipt] = sendgrid_peer.find(custom_arg=("dedup_key", f"receipt:{session_id}"))
    assert receipt.recipients == ["payer@example.com"] and "5.00 USD" in receipt.body["content"][0]["value"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ProcessedStripeEvent)) == 2


def test_webhook_with_a_bad_signature_is_400_and_grants_nothing(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url)
    client = app.test_client()
    token = login(client)["access_token"]
    event = _completed(stripe_peer, client, token)
    payload, headers = signed_webhook(event, stripe_peer.webhook_secret)
    tampered = payload.replace('"amount_total": 500', '"amount_total": 1')
    assert_error(client.post("/api/payments/webhook", data=tampered, headers=headers), 400, "WEBHOOK_SIGNATURE_INVALID")
    wrong_secret = deliver_webhook(client, event, "whsec_wrong_0123456789")
    assert_error(wrong_secret, 400, "WEBHOOK_SIGNATURE_INVALID")
    stale = deliver_webhook(client, event, stripe_peer.webhook_secret, timestamp=1_000_000)
    assert_error(stale, 400, "WEBHOOK_SIGNATURE_INVALID")  # outside Stripe's 5-minute tolerance: a replay
    missing = client.post("/api/payments/webhook", data=payload, headers={"Content-Type": "application/json"})
    assert_error(missing, 400, "WEBHOOK_SIGNATURE_INVALID")
    assert credits_of(client, token) == 1


def test_webhook_ignores_unpaid_sessions_and_other_events(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url)
    client = app.test_client()
    token = login(client)["access_token"]
    response = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=bearer(token))
    session = stripe_peer.sessions[response.get_json()["session_id"]]
    unpaid = build_event("checkout.session.completed", session)  # payment_status still "unpaid"
    assert deliver_webhook(client, unpaid, stripe_peer.webhook_secret).get_json()["credits_granted"] == 0
    other = build_event("customer.created", {"id": "cus_1", "object": "customer"})
    assert deliver_webhook(client, other, stripe_peer.webhook_secret).get_json()["ignored"] == "customer.created"
    assert credits_of(client, token) == 1


def test_stripe_auth_failure_is_a_503_misconfigured_without_the_key_and_a_critical_log(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url, STRIPE_API_KEY="sk_test_revoked_key_000000000000")
    client = app.test_client()
    token = login(client)["access_token"]
    response = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=bearer(token))
    body = assert_error(response, 503, "SERVICE_MISCONFIGURED")
    assert body["recoverable"] is False and body["details"]["service"] == "stripe"
    assert "sk_test" not in response.get_data(as_text=True)
    critical = [line for line in read_log(app, "app.log") if line["level"] == "CRITICAL"]
    assert critical and "stripe refused this server's credentials" in critical[0]["message"]
    assert "sk_test_revoked" not in json.dumps(critical)


def test_translation_table_maps_each_stripe_error_once() -> None:
    # Refusals of our credentials (AuthenticationError, PermissionError) never reach this table: every
    # service's are SERVICE_MISCONFIGURED, decided by with_error_recovery (the test above).
    cases = [
        (stripe.CardError("declined", "card", "card_declined"), 402, "PAYMENT_DECLINED", False),
        (stripe.RateLimitError("slow down", headers={"Retry-After": "7"}), 503, "PAYMENTS_UNAVAILABLE", True),
        (stripe.APIConnectionError("refused"), 503, "PAYMENTS_UNAVAILABLE", True),
        (stripe.APIError("boom", http_status=500), 503, "PAYMENTS_UNAVAILABLE", True),
        (stripe.InvalidRequestError("bad param", "mode"), 500, "STRIPE_ERROR", False),
        (stripe.IdempotencyError("reused key"), 422, "IDEMPOTENCY_KEY_REUSED", False),
    ]
    for exc, status, code, recoverable in cases:
        translated = translate_stripe_error(exc)
        assert isinstance(translated, APIError)
        assert (translated.status_code, translated.code, translated.recoverable) == (status, code, recoverable), exc
    assert translate_stripe_error(cases[1][0]).retry_after == 7


def test_packs_parse_from_tuples_dicts_and_json() -> None:
    assert parse_packs({"a": (1, 100)})["a"].credits == 1
    assert parse_packs({"b": {"credits": 2, "amount_cents": 200}})["b"].amount_cents == 200
    assert parse_packs('{"c": [3, 300]}')["c"].credits == 3
    assert "starter" in parse_packs(None)


@pytest.mark.parametrize("path", ["/api/payments/credits"])
def test_credits_need_a_login(app: Flask, path: str) -> None:
    assert app.test_client().get(path).status_code == 401


def test_concurrent_deliveries_of_one_event_grant_once(make_app: Callable[..., Flask], stripe_peer: StripePeer) -> None:
    import threading

    app = payments_app(make_app, stripe_peer.url)
    client = app.test_client()
    token = login(client)["access_token"]
    event = _completed(stripe_peer, client, token, pack="studio")
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def deliver() -> None:
        barrier.wait(timeout=10)
        statuses.append(deliver_webhook(app.test_client(), event, stripe_peer.webhook_secret).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 4  # every delivery is acknowledged, so Stripe stops retrying
    assert credits_of(client, token) == 101


def test_webhook_with_sendgrid_down_still_grants_and_the_receipt_is_sent_once_later(
    make_app: Callable[..., Flask],
    stripe_peer: StripePeer,
    sendgrid_peer: SendGridPeer,
    make_fault_proxy: Callable[..., Any],
) -> None:
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = payments_app(
        make_app,
        stripe_peer.url,
        SENDGRID_API_KEY=sendgrid_peer.api_key,
        SENDGRID_API_HOST=proxy.url,
        SENDGRID_TIMEOUT=0.3,
    )
    client = app.test_client()
    token = login(client)["access_token"]
    event = _completed(stripe_peer, client, token)
    proxy.down()
    response = deliver_webhook(client, event, stripe_peer.webhook_secret)
    assert response.status_code == 200 and response.get_json()["credits_granted"] == 5
    assert credits_of(client, token) == 6
    proxy.passthrough()
    with app.app_context():
        from backend.app.services import get_email

        assert get_email().outbox_count() == 1
        assert get_email().resend_outbox() == 1 and get_email().resend_outbox() == 0
    assert deliver_webhook(client, event, stripe_peer.webhook_secret).get_json()["duplicate"] is True
    assert sendgrid_peer.count(custom_arg=("dedup_key", f"receipt:{event['data']['object']['id']}")) == 1
