"""The local peers work with the real SDKs, and every fault-proxy mode reaches the client as the real failure would."""

from __future__ import annotations

import json
import os
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import python_http_client.exceptions as sendgrid_errors
import requests
import stripe
from flask import Flask, request
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as google_auth_exceptions
from sendgrid.helpers.mail import CustomArg, Header, Mail

from tests.harness.peers import sendgrid_peer as sendgrid_module
from tests.harness.peers import stripe_peer as stripe_module
from tests.harness.peers.audio import AudioFactory, decodes, ffmpeg_exe
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.gcs_emulator import GCSEmulator, signed_download_url
from tests.harness.peers.localstripe_peer import LocalStripe
from tests.harness.peers.sendgrid_peer import SendGridPeer, sendgrid_error_body
from tests.harness.peers.stripe_peer import StripePeer, deliver_webhook, signed_webhook, stripe_error_body
from tests.harness.peers.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(30)

MakeProxy = Callable[..., FaultProxy]
CHECKOUT = {
    "mode": "payment",
    "success_url": "https://app.example.com/paid?session_id={CHECKOUT_SESSION_ID}",
    "cancel_url": "https://app.example.com/cancelled",
    "client_reference_id": "user-42",
    "metadata": {"pack": "starter", "credits": "10"},
    "line_items": [
        {
            "quantity": 1,
            "price_data": {"currency": "usd", "unit_amount": 900, "product_data": {"name": "10 render credits"}},
        }
    ],
}


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses with a socket LISTENing on `port` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


# -- fault proxy ---------------------------------------------------------------------------------------------


@pytest.fixture
def upstream(webhook_receiver: WebhookReceiver) -> WebhookReceiver:
    """A simple recording peer to put behind the proxy."""
    return webhook_receiver


def test_proxy_forwards_requests_and_counts_them(upstream: WebhookReceiver, make_fault_proxy: MakeProxy) -> None:
    proxy = make_fault_proxy(upstream.url)
    with requests.Session() as http:
        for n in range(3):
            response = http.post(proxy.url + "/hook?x=1", json={"n": n}, headers={"X-Trace": "t"}, timeout=2)
            assert response.status_code == 200 and response.json() == {"ok": True}
        chunked = http.post(proxy.url + "/chunked", data=iter([b'{"n": ', b"3}"]), timeout=2)  # no Content-Length
        assert chunked.status_code == 200
    assert upstream.bodies == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    assert upstream.deliveries[0].path == "/hook" and upstream.deliveries[0].headers["X-Trace"] == "t"
    assert proxy.counts == {"pass": 4}
    assert [seen.path for seen in proxy.seen] == ["/hook?x=1"] * 3 + ["/chunked"]


def test_proxy_down_refuses_connections_even_on_pooled_keepalive_and_recovers_on_the_same_url(
    upstream: WebhookReceiver, make_fault_proxy: MakeProxy
) -> None:
    proxy = make_fault_proxy(upstream.url)
    with requests.Session() as http:
        assert http.get(proxy.url + "/a", timeout=2).ok  # leaves a keep-alive connection in the pool
        proxy.down()
        assert proxy.is_down
        with pytest.raises(requests.ConnectionError):
            http.get(proxy.url + "/a", timeout=2)
        assert listening_addresses(proxy.port) == set()
        proxy.up()
        assert http.get(proxy.url + "/a", timeout=2).ok
    assert proxy.counts == {"pass": 2}


def test_proxy_hang_fires_the_client_timeout_and_a_switch_releases_it(
    upstream: WebhookReceiver, make_fault_proxy: MakeProxy
) -> None:
    proxy = make_fault_proxy(upstream.url)
    proxy.hang()
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.get(proxy.url + "/slow", timeout=(1, 0.3))
    assert 0.25 <= time.monotonic() - started < 2
    proxy.passthrough()
    assert requests.get(proxy.url + "/ok", timeout=2).ok
    assert proxy.counts == {"hang": 1, "pass": 1}
    assert upstream.deliveries[-1].path == "/ok" and len(upstream.deliveries) == 1  # the hung request never arrived


def test_proxy_hang_is_bounded_by_max_hold(upstream: WebhookReceiver, make_fault_proxy: MakeProxy) -> None:
    proxy = make_fault_proxy(upstream.url, max_hold=0.3)
    proxy.hang()
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):  # closed without a reply after max_hold, long before 10 s
        requests.get(proxy.url + "/held", timeout=10)
    assert time.monotonic() - started < 3


def test_proxy_stop_releases_hung_requests(upstream: WebhookReceiver) -> None:
    proxy = FaultProxy(upstream.url).start()
    proxy.hang()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(proxy.url + "/held", timeout=20)
        except requests.RequestException as exc:
            outcome.append(exc)

    import threading

    caller = threading.Thread(target=call)
    caller.start()
    proxy.wait_for_requests(1, mode="hang")
    started = time.monotonic()
    proxy.stop()
    caller.join(timeout=5)
    assert not caller.is_alive() and time.monotonic() - started < 5
    assert isinstance(outcome[0], requests.ConnectionError)


def test_proxy_status_for_the_next_n_requests_then_passes(
    upstream: WebhookReceiver, make_fault_proxy: MakeProxy
) -> None:
    proxy = make_fault_proxy(upstream.url)
    proxy.status(503, retry_after=2, times=2)
    statuses = [requests.post(proxy.url + "/h", json={}, timeout=2) for _ in range(3)]
    assert [r.status_code for r in statuses] == [503, 503, 200]
    assert statuses[0].headers["Retry-After"] == "2"
    assert statuses[0].json()["error"]["type"] == "api_error"
    assert proxy.counts == {"status": 2, "pass": 1}
    assert len(upstream.deliveries) == 1  # injected statuses never reach the peer


def test_proxy_status_rate_is_an_exact_deterministic_fraction(
    upstream: WebhookReceiver, make_fault_proxy: MakeProxy
) -> None:
    proxy = make_fault_proxy(upstream.url)
    proxy.status(500, rate=0.25)
    codes = [requests.get(proxy.url + "/r", timeout=2).status_code for _ in range(8)]
    assert codes == [200, 200, 200, 500] * 2


def test_proxy_status_with_custom_body_and_path_filter(upstream: WebhookReceiver, make_fault_proxy: MakeProxy) -> None:
    proxy = make_fault_proxy(upstream.url)
    proxy.status(400, body={"errors": [{"message": "bad"}]}, headers={"X-Extra": "1"}, path="/v3/")
    faulted = requests.post(proxy.url + "/v3/mail/send", json={}, timeout=2)
    assert (faulted.status_code, faulted.json(), faulted.headers["X-Extra"]) == (
        400,
        {"errors": [{"message": "bad"}]},
        "1",
    )
    assert requests.post(proxy.url + "/other", json={}, timeout=2).status_code == 200


def test_proxy_status_after_upstream_loses_the_reply_of_work_done(
    upstream: WebhookReceiver, make_fault_proxy: MakeProxy
) -> None:
    proxy = make_fault_proxy(upstream.url)
    proxy.status(502, after_upstream=True, times=1)
    assert requests.post(proxy.url + "/h", json={"id": 1}, timeout=2).status_code == 502
    assert upstream.bodies == [{"id": 1}]  # the peer did the work; only the answer was lost


def test_proxy_slow_delays_then_forwards(upstream: WebhookReceiver, make_fault_proxy: MakeProxy) -> None:
    proxy = make_fault_proxy(upstream.url)
    proxy.slow(0.3, times=1)
    started = time.monotonic()
    assert requests.get(proxy.url + "/s", timeout=2).ok
    assert time.monotonic() - started >= 0.3
    proxy.slow(1.0)
    with pytest.raises(requests.ReadTimeout):
        requests.get(proxy.url + "/s", timeout=(1, 0.2))
    assert proxy.counts == {"slow": 2}


def test_proxy_drop_closes_without_a_reply(upstream: WebhookReceiver, make_fault_proxy: MakeProxy) -> None:
    proxy = make_fault_proxy(upstream.url)
    proxy.drop(times=1)
    with pytest.raises(requests.ConnectionError):
        requests.get(proxy.url + "/d", timeout=2)
    assert requests.get(proxy.url + "/d", timeout=2).ok


def test_proxy_reports_502_when_its_upstream_is_gone(make_fault_proxy: MakeProxy) -> None:
    receiver = WebhookReceiver().start()
    proxy = make_fault_proxy(receiver.url)
    receiver.stop()
    assert requests.get(proxy.url + "/x", timeout=2).status_code == 502


def test_proxy_listens_on_loopback_only(upstream: WebhookReceiver, make_fault_proxy: MakeProxy) -> None:
    proxy = make_fault_proxy(upstream.url)
    assert listening_addresses(proxy.port) == {"0100007F"}  # 127.0.0.1, little-endian hex


# -- Stripe Checkout peer ------------------------------------------------------------------------------------


def test_stripe_sdk_creates_a_realistic_checkout_session(stripe_peer: StripePeer) -> None:
    client = stripe_module.sdk_client(stripe_peer.url)
    session = client.v1.checkout.sessions.create(params=CHECKOUT)  # type: ignore[arg-type]
    assert isinstance(session, stripe.checkout.Session)
    assert session.id.startswith("cs_test_") and session.url.endswith(session.id)
    assert (session.status, session.payment_status, session.mode) == ("open", "unpaid", "payment")
    assert (session.amount_total, session.currency, session.client_reference_id) == (900, "usd", "user-42")
    assert session.metadata["pack"] == "starter"
    assert session.last_response.request_id.startswith("req_")
    sent = stripe_peer.creates()[0]
    assert sent.params["line_items"][0]["price_data"]["product_data"] == {"name": "10 render credits"}
    assert sent.idempotency_key  # the SDK adds one to every POST
    assert client.v1.checkout.sessions.retrieve(session.id).id == session.id


def test_stripe_module_level_api_base_also_works(stripe_peer: StripePeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripe, "api_base", stripe_peer.url)
    monkeypatch.setattr(stripe, "api_key", stripe_peer.api_key)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    monkeypatch.setattr(stripe, "default_http_client", stripe.RequestsClient(timeout=2))
    session = stripe.checkout.Session.create(**CHECKOUT)  # type: ignore[arg-type]
    assert stripe.checkout.Session.retrieve(session.id).status == "open"


def test_stripe_idempotency_key_replays_the_same_session_and_rejects_other_params(stripe_peer: StripePeer) -> None:
    client = stripe_module.sdk_client(stripe_peer.url)
    options: Any = {"idempotency_key": "checkout-user-42-order-7"}
    first = client.v1.checkout.sessions.create(params=CHECKOUT, options=options)  # type: ignore[arg-type]
    again = client.v1.checkout.sessions.create(params=CHECKOUT, options=options)  # type: ignore[arg-type]
    assert again.id == first.id and len(stripe_peer.sessions) == 1
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.checkout.sessions.create(params={**CHECKOUT, "client_reference_id": "other"}, options=options)  # type: ignore[arg-type]
    assert caught.value.http_status == 400 and "other than 'checkout-user-42-order-7'" in str(caught.value)


def test_stripe_validation_errors_have_stripes_shape(stripe_peer: StripePeer) -> None:
    client = stripe_module.sdk_client(stripe_peer.url)
    stripe_peer.add_price("price_starter", unit_amount=900)
    by_price = {**CHECKOUT, "line_items": [{"price": "price_starter", "quantity": 2}]}
    assert client.v1.checkout.sessions.create(params=by_price).amount_total == 1800  # type: ignore[arg-type]
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.checkout.sessions.create(params={**CHECKOUT, "line_items": [{"price": "price_nope", "quantity": 1}]})  # type: ignore[arg-type]
    assert (missing.value.code, missing.value.param, missing.value.http_status) == (
        "resource_missing",
        "line_items[0][price]",
        400,
    )
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.checkout.sessions.create(params={**CHECKOUT, "colour": "red"})  # type: ignore[arg-type]
    assert (
        unknown.value.code == "parameter_unknown"
        and unknown.value.error.message == "Received unknown parameter: colour"
    )
    with pytest.raises(stripe.InvalidRequestError) as not_found:
        client.v1.checkout.sessions.retrieve("cs_test_missing")
    assert not_found.value.http_status == 404 and not_found.value.code == "resource_missing"
    assert len(stripe_peer.sessions) == 1


def test_stripe_wrong_key_is_a_401_authentication_error(stripe_peer: StripePeer) -> None:
    client = stripe_module.sdk_client(stripe_peer.url, api_key="sk_test_not_the_right_key_000")
    with pytest.raises(stripe.AuthenticationError) as caught:
        client.v1.checkout.sessions.create(params=CHECKOUT)  # type: ignore[arg-type]
    assert caught.value.http_status == 401 and caught.value.request_id.startswith("req_")
    assert "not_the_right" not in str(caught.value)  # the key is masked, like Stripe does
    assert stripe_peer.sessions == {}


def test_stripe_fail_next_returns_a_card_error(stripe_peer: StripePeer) -> None:
    client = stripe_module.sdk_client(stripe_peer.url)
    stripe_peer.fail_next(
        402, "Your card was declined.", type="card_error", code="card_declined", decline_code="generic_decline"
    )
    with pytest.raises(stripe.CardError) as caught:
        client.v1.checkout.sessions.create(params=CHECKOUT)  # type: ignore[arg-type]
    assert (caught.value.code, caught.value.error.decline_code) == ("card_declined", "generic_decline")
    assert client.v1.checkout.sessions.create(params=CHECKOUT).status == "open"  # type: ignore[arg-type]


def test_stripe_webhook_is_signed_exactly_like_stripe(
    stripe_peer: StripePeer, webhook_receiver: WebhookReceiver
) -> None:
    session = stripe_module.sdk_client(stripe_peer.url).v1.checkout.sessions.create(params=CHECKOUT)  # type: ignore[arg-type]
    event = stripe_peer.completed_event(session.id)
    payload, headers = signed_webhook(event, stripe_peer.webhook_secret)
    verified = stripe.Webhook.construct_event(payload, headers["Stripe-Signature"], stripe_peer.webhook_secret)
    assert verified.type == "checkout.session.completed" and verified.id.startswith("evt_")
    assert verified.data.object.payment_status == "paid" and verified.data.object.client_reference_id == "user-42"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, headers["Stripe-Signature"], "whsec_wrong")
    stale, stale_headers = signed_webhook(event, stripe_peer.webhook_secret, timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(stale, stale_headers["Stripe-Signature"], stripe_peer.webhook_secret)
    response = deliver_webhook(webhook_receiver.url, event, stripe_peer.webhook_secret, path="/stripe")
    assert response.status_code == 200
    delivered = webhook_receiver.deliveries[0]
    stripe.Webhook.construct_event(
        delivered.body.decode(), delivered.headers["Stripe-Signature"], stripe_peer.webhook_secret
    )


def test_stripe_webhook_can_be_delivered_to_a_flask_test_client(stripe_peer: StripePeer) -> None:
    app = Flask(__name__)

    @app.post("/api/payments/webhook")
    def webhook() -> dict[str, str]:
        event = stripe.Webhook.construct_event(
            request.get_data(as_text=True), request.headers["Stripe-Signature"], stripe_peer.webhook_secret
        )
        return {"received": event.type}

    event = stripe_module.build_event("checkout.session.completed", {"id": "cs_test_x", "object": "checkout.session"})
    response = deliver_webhook(app.test_client(), event, stripe_peer.webhook_secret)
    assert response.status_code == 200 and response.get_json() == {"received": "checkout.session.completed"}


STRIPE_FAULTS: list[tuple[str, Callable[[FaultProxy], None], type[Exception]]] = [
    ("down", lambda p: p.down(), stripe.APIConnectionError),
    ("hang", lambda p: p.hang(), stripe.APIConnectionError),
    (
        "429",
        lambda p: p.status(429, retry_after=7, body=stripe_error_body("Too many", type="rate_limit_error")),
        stripe.RateLimitError,
    ),
    ("500", lambda p: p.status(500), stripe.APIError),
    (
        "400",
        lambda p: p.status(400, body=stripe_error_body("bad", type="invalid_request_error")),
        stripe.InvalidRequestError,
    ),
    (
        "401",
        lambda p: p.status(401, body=stripe_error_body("no", type="invalid_request_error")),
        stripe.AuthenticationError,
    ),
]


@pytest.mark.parametrize(("name", "inject", "expected"), STRIPE_FAULTS, ids=[f[0] for f in STRIPE_FAULTS])
def test_stripe_sdk_sees_each_proxy_fault(
    name: str,
    inject: Callable[[FaultProxy], None],
    expected: type[Exception],
    stripe_peer: StripePeer,
    make_fault_proxy: MakeProxy,
) -> None:
    proxy = make_fault_proxy(stripe_peer.url)
    client = stripe_module.sdk_client(proxy.url, timeout=0.4)
    inject(proxy)
    started = time.monotonic()
    with pytest.raises(expected) as caught:
        client.v1.checkout.sessions.create(params=CHECKOUT)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
    if name == "429":
        assert caught.value.headers["Retry-After"] == "7"
    if name not in {"down", "hang"}:
        assert caught.value.http_status == int(name)
    seen = sum(proxy.counts.values())
    assert seen == (0 if name == "down" else 1)  # max_network_retries=0: exactly one attempt
    assert stripe_peer.sessions == {}
    proxy.passthrough()
    assert client.v1.checkout.sessions.create(params=CHECKOUT).status == "open"  # type: ignore[arg-type]


# -- localstripe ----------------------------------------------------------------------------------------------


def test_localstripe_serves_customers_and_payment_intents_to_the_sdk(localstripe: LocalStripe) -> None:
    client = stripe_module.sdk_client(localstripe.url, api_key=localstripe.api_key)
    customer = client.v1.customers.create(params={"email": "buyer@example.com"})
    method = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    intent = client.v1.payment_intents.create(
        params={"amount": 900, "currency": "usd", "customer": customer.id, "payment_method": method.id, "confirm": True}
    )
    assert intent.status == "succeeded" and intent.amount == 900
    declined = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4000000000000002", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_methods.attach(declined.id, params={"customer": customer.id})
    assert caught.value.http_status == 402 and caught.value.code == "card_declined"
    localstripe.reset()
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.retrieve(customer.id)


def test_localstripe_binds_loopback_only_and_writes_no_pickle(localstripe: LocalStripe) -> None:
    pickle = Path("/tmp/localstripe.pickle")
    before = pickle.stat().st_mtime_ns if pickle.exists() else None
    stripe_module.sdk_client(localstripe.url, api_key=localstripe.api_key).v1.customers.create(
        params={"email": "a@b.co"}
    )
    assert listening_addresses(localstripe.port) == {"0100007F"}
    assert (pickle.stat().st_mtime_ns if pickle.exists() else None) == before


# -- SendGrid peer -------------------------------------------------------------------------------------------


def render_finished_mail(outbox_id: str) -> Mail:
    """A mail like the adapter will send, carrying a dedup key both as custom_arg and as header."""
    mail = Mail(
        from_email="renders@oriel.example.com",
        to_emails="user@example.com",
        subject="Your render is ready",
        plain_text_content="Download it from your library.",
        html_content="<p>Download it from your library.</p>",
    )
    mail.custom_arg = CustomArg("outbox_id", outbox_id)
    mail.header = Header("X-Oriel-Outbox-Id", outbox_id)
    return mail


def test_sendgrid_sdk_sends_and_the_peer_records_each_message_once(sendgrid_peer: SendGridPeer) -> None:
    client = sendgrid_module.sdk_client(sendgrid_peer.url)
    response = client.send(render_finished_mail("outbox-1"))
    assert response.status_code == 202 and len(response.headers["X-Message-Id"]) == 22
    client.send(render_finished_mail("outbox-2"))
    assert sendgrid_peer.count(custom_arg=("outbox_id", "outbox-1")) == 1
    assert sendgrid_peer.count(header=("X-Oriel-Outbox-Id", "outbox-2")) == 1
    message = sendgrid_peer.find(custom_arg=("outbox_id", "outbox-1"))[0]
    assert message.recipients == ["user@example.com"] and message.subject == "Your render is ready"
    assert message.message_id == response.headers["X-Message-Id"]
    assert message.headers["Authorization"] == f"Bearer {sendgrid_peer.api_key}"


def test_sendgrid_wrong_key_is_a_401_with_sendgrids_error_json(sendgrid_peer: SendGridPeer) -> None:
    client = sendgrid_module.sdk_client(sendgrid_peer.url, api_key="SG.wrong")
    with pytest.raises(sendgrid_errors.UnauthorizedError) as caught:
        client.send(render_finished_mail("x"))
    assert caught.value.status_code == 401
    assert json.loads(caught.value.body)["errors"][0]["message"].startswith("The provided authorization grant")
    assert sendgrid_peer.messages == []


def test_sendgrid_invalid_mail_is_a_400_naming_each_field(sendgrid_peer: SendGridPeer) -> None:
    client = sendgrid_module.sdk_client(sendgrid_peer.url)
    with pytest.raises(sendgrid_errors.BadRequestsError) as caught:
        client.send({"personalizations": [{"to": [{"email": "not-an-address"}]}], "from": {"email": "a@example.com"}})
    fields = [error["field"] for error in json.loads(caught.value.body)["errors"]]
    assert fields == ["personalizations.0.to.0.email", "subject", "content"]
    assert sendgrid_peer.messages == [] and len(sendgrid_peer.rejected) == 1


def test_sendgrid_fail_next_then_recovers(sendgrid_peer: SendGridPeer) -> None:
    client = sendgrid_module.sdk_client(sendgrid_peer.url)
    sendgrid_peer.fail_next(429, "too many requests", headers={"X-RateLimit-Remaining": "0"})
    with pytest.raises(sendgrid_errors.TooManyRequestsError) as caught:
        client.send(render_finished_mail("o"))
    assert caught.value.headers["X-RateLimit-Remaining"] == "0"
    assert client.send(render_finished_mail("o")).status_code == 202
    assert sendgrid_peer.count(custom_arg=("outbox_id", "o")) == 1


SENDGRID_FAULTS: list[tuple[str, Callable[[FaultProxy], None], type[Exception]]] = [
    ("down", lambda p: p.down(), urllib.error.URLError),
    ("hang", lambda p: p.hang(), TimeoutError),
    (
        "429",
        lambda p: p.status(429, retry_after=7, body=sendgrid_error_body("too many requests")),
        sendgrid_errors.TooManyRequestsError,
    ),
    ("500", lambda p: p.status(500, body=sendgrid_error_body("internal")), sendgrid_errors.InternalServerError),
    ("400", lambda p: p.status(400, body=sendgrid_error_body(("bad", "from.email"))), sendgrid_errors.BadRequestsError),
    (
        "401",
        lambda p: p.status(401, body=sendgrid_error_body("authorization required")),
        sendgrid_errors.UnauthorizedError,
    ),
]


@pytest.mark.parametrize(("name", "inject", "expected"), SENDGRID_FAULTS, ids=[f[0] for f in SENDGRID_FAULTS])
def test_sendgrid_sdk_sees_each_proxy_fault(
    name: str,
    inject: Callable[[FaultProxy], None],
    expected: type[Exception],
    sendgrid_peer: SendGridPeer,
    make_fault_proxy: MakeProxy,
) -> None:
    proxy = make_fault_proxy(sendgrid_peer.url)
    client = sendgrid_module.sdk_client(proxy.url, timeout=0.4)
    inject(proxy)
    started = time.monotonic()
    with pytest.raises(expected) as caught:
        client.send(render_finished_mail("m-1"))
    assert time.monotonic() - started < 2
    if name == "429":
        assert caught.value.headers["Retry-After"] == "7"
    if name not in {"down", "hang"}:
        assert caught.value.status_code == int(name)
    assert sendgrid_peer.messages == []
    proxy.passthrough()
    client.send(render_finished_mail("m-1"))
    assert sendgrid_peer.count(custom_arg=("outbox_id", "m-1")) == 1


# -- Cloud Storage emulator --------------------------------------------------------------------------------


def test_gcs_emulator_upload_download_list_with_the_real_client(gcs_emulator: GCSEmulator, gcs_bucket: str) -> None:
    bucket = gcs_emulator.client().bucket(gcs_bucket)
    bucket.blob("renders/1.mp4").upload_from_string(b"\x00video", content_type="video/mp4", timeout=2, retry=None)
    bucket.blob("uploads/a.wav").upload_from_string(b"RIFF", timeout=2, retry=None)
    assert bucket.blob("renders/1.mp4").download_as_bytes(timeout=2, retry=None) == b"\x00video"
    names = [b.name for b in gcs_emulator.client().list_blobs(gcs_bucket, prefix="renders/", timeout=2, retry=None)]
    assert names == ["renders/1.mp4"]
    assert listening_addresses(gcs_emulator.port) == {"0100007F"}


def test_gcs_emulator_host_env_var_also_points_the_client(
    gcs_emulator: GCSEmulator, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    client = storage.Client(project="oriel-test", credentials=AnonymousCredentials())
    client.bucket(gcs_bucket).blob("env.txt").upload_from_string(b"via env", timeout=2, retry=None)
    assert (
        gcs_emulator.client().bucket(gcs_bucket).blob("env.txt").download_as_bytes(timeout=2, retry=None) == b"via env"
    )


def test_gcs_buckets_are_isolated_per_test(gcs_emulator: GCSEmulator, gcs_bucket: str) -> None:
    assert list(gcs_emulator.client().list_blobs(gcs_bucket, timeout=2, retry=None)) == []


def test_gcs_signed_url_made_offline_downloads_from_the_emulator(
    gcs_emulator: GCSEmulator, gcs_bucket: str, gcs_signing_credentials: Any
) -> None:
    blob = gcs_emulator.client().bucket(gcs_bucket).blob("renders/out.mp4")
    blob.upload_from_string(b"mp4 bytes", timeout=2, retry=None)
    url = signed_download_url(blob, gcs_signing_credentials, gcs_emulator.url)
    assert url.startswith(f"{gcs_emulator.url}/{gcs_bucket}/renders/out.mp4?")
    assert "X-Goog-Signature=" in url and gcs_signing_credentials.service_account_email.split("@")[0] in url
    response = requests.get(url, timeout=2)
    assert response.status_code == 200 and response.content == b"mp4 bytes"


def test_gcs_through_the_proxy_passes_large_resumable_uploads(
    gcs_emulator: GCSEmulator, gcs_bucket: str, make_fault_proxy: MakeProxy
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url)
    bucket = gcs_emulator.client(proxy.url).bucket(gcs_bucket)
    data = os.urandom(9 * 1024 * 1024)  # above the 8 MiB threshold: a resumable upload in chunks
    bucket.blob("big.bin").upload_from_string(data, timeout=10, retry=None)
    assert bucket.blob("big.bin").download_as_bytes(timeout=10, retry=None) == data
    assert proxy.counts["pass"] >= 3


def test_gcs_client_fetches_bucket_metadata_in_the_background_unless_disabled(
    gcs_emulator: GCSEmulator, gcs_bucket: str, make_fault_proxy: MakeProxy
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url)
    quiet = gcs_emulator.client(proxy.url)
    quiet.bucket(gcs_bucket).blob("q.txt").upload_from_string(b"q", timeout=2, retry=None)
    assert [seen.method for seen in proxy.seen] == ["POST"]
    chatty = gcs_emulator.client(proxy.url, background_metadata=True)
    chatty.bucket(gcs_bucket).blob("c.txt").upload_from_string(b"c", timeout=2, retry=None)
    proxy.wait_for_requests(3)  # the SDK's own thread: GET /storage/v1/b/<bucket>, with its default retry
    assert any(seen.method == "GET" and seen.path.startswith(f"/storage/v1/b/{gcs_bucket}?") for seen in proxy.seen)


GCS_FAULTS: list[tuple[str, Callable[[FaultProxy], None], type[Exception]]] = [
    ("down", lambda p: p.down(), requests.ConnectionError),
    ("hang", lambda p: p.hang(), requests.Timeout),
    ("429", lambda p: p.status(429, retry_after=7), google_exceptions.TooManyRequests),
    ("500", lambda p: p.status(500), google_exceptions.InternalServerError),
    ("400", lambda p: p.status(400), google_exceptions.BadRequest),
    # SPEC-worthy trap: google-auth answers a 401 by refreshing the credentials; anonymous ones cannot be refreshed.
    ("401", lambda p: p.status(401), google_auth_exceptions.GoogleAuthError),
]


@pytest.mark.parametrize(("name", "inject", "expected"), GCS_FAULTS, ids=[f[0] for f in GCS_FAULTS])
def test_gcs_client_sees_each_proxy_fault(
    name: str,
    inject: Callable[[FaultProxy], None],
    expected: type[Exception],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    make_fault_proxy: MakeProxy,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url)
    blob = gcs_emulator.client(proxy.url).bucket(gcs_bucket).blob("f.txt")
    inject(proxy)
    started = time.monotonic()
    with pytest.raises(expected) as caught:
        blob.upload_from_string(b"data", timeout=0.4, retry=None)
    with pytest.raises(expected):
        blob.download_as_bytes(timeout=0.4, retry=None)
    assert time.monotonic() - started < 3
    if name == "429":
        retry_after = caught.value.response.headers.get("Retry-After") if caught.value.response is not None else None
        download_error = None
        try:
            blob.download_as_bytes(timeout=0.4, retry=None)
        except google_exceptions.TooManyRequests as exc:
            download_error = exc
        assert download_error is not None and download_error.response.headers["Retry-After"] == "7"
        assert retry_after in {None, "7"}  # the resumable-media upload path drops the response headers
    assert list(gcs_emulator.client().list_blobs(gcs_bucket, timeout=2, retry=None)) == []
    proxy.passthrough()
    blob.upload_from_string(b"data", timeout=2, retry=None)
    assert blob.download_as_bytes(timeout=2, retry=None) == b"data"


# -- webhook receiver -------------------------------------------------------------------------------------


def test_webhook_receiver_records_and_fails_on_demand(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.fail_next(503, times=2, retry_after=1)
    codes = [
        requests.post(webhook_receiver.url + "/alerts", json={"alert": n}, headers={"X-Alert": "a"}, timeout=2)
        for n in range(3)
    ]
    assert [r.status_code for r in codes] == [503, 503, 200]
    assert codes[0].headers["Retry-After"] == "1"
    deliveries = webhook_receiver.wait_for(3)
    assert [d.accepted for d in deliveries] == [False, False, True]
    assert deliveries[2].headers["X-Alert"] == "a" and deliveries[2].path == "/alerts"
    assert webhook_receiver.bodies == [{"alert": 2}]


# -- audio ------------------------------------------------------------------------------------------------


def duration_of(path: Path) -> float:
    """Duration FFmpeg reports for `path` (imageio-ffmpeg ships no ffprobe)."""
    import re
    import subprocess

    output = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, check=False).stderr
    hours, minutes, seconds = re.search(rb"Duration: (\d+):(\d+):([\d.]+)", output).groups()  # type: ignore[union-attr]
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "flac"])
def test_audio_factory_makes_real_decodable_audio(audio_files: AudioFactory, fmt: str) -> None:
    path = audio_files.make(fmt, seconds=1.5, sample_rate=22050)
    assert path.suffix == f".{fmt}" and decodes(path)
    assert duration_of(path) == pytest.approx(1.5, abs=0.1)
    made_at = path.stat().st_mtime_ns
    assert audio_files.make(fmt, seconds=1.5, sample_rate=22050) == path and path.stat().st_mtime_ns == made_at


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "flac"])
def test_audio_factory_corrupt_samples_look_like_audio_but_do_not_decode(audio_files: AudioFactory, fmt: str) -> None:
    corrupt = audio_files.corrupt(fmt)
    assert corrupt.read_bytes()[:4] == audio_files.make(fmt).read_bytes()[:4]
    assert not decodes(corrupt)
    assert not decodes(audio_files.truncated(fmt))


def test_audio_factory_non_audio_files_wear_audio_names(audio_files: AudioFactory) -> None:
    picture = audio_files.non_audio("cover.mp3")
    text = audio_files.non_audio("notes.wav", kind="text")
    assert picture.read_bytes().startswith(b"\x89PNG") and not decodes(picture)
    assert text.suffix == ".wav" and not decodes(text)
