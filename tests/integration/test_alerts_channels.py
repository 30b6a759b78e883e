"""Alerts that page when they must: isolated channels, validated rules, default burn-rate rules, signed webhooks.

Issue 15 points 7-10, against real local webhook receivers on 127.0.0.1 (tests/harness/peers/webhook_receiver.py).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from backend.app.extensions import db
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models import AlertDelivery, AlertRule, SloMinute
from backend.app.monitoring.alerts.delivery import deliver_pending
from backend.app.monitoring.alerts.destinations import (
    WebhookDestinationError,
    WebhookHostUnresolvedError,
    breaker_name,
    check_url,
    verify_signature,
)
from tests.harness.alerts import traffic
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.peers.webhook_receiver import WebhookReceiver

MONITORING = "/admin/api/monitoring"
CONFIGURE = f"{MONITORING}/alerts/configure"
EVALUATE = f"{MONITORING}/alerts/evaluate"
DEFAULT_RULES = ("slo-burn-page-1h", "slo-burn-page-6h", "slo-burn-ticket-3d")


class SlowReceiver(WebhookReceiver):
    """A receiver that takes `delay` seconds before answering (a hung channel)."""

    delay: float = 2.0

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        time.sleep(self.delay)
        return super()._wsgi(environ, start_response)


@pytest.fixture
def second_receiver() -> Iterator[WebhookReceiver]:
    """Another destination, on its own port."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def slow_receiver() -> Iterator[SlowReceiver]:
    """A destination that answers after 2 s."""
    receiver = SlowReceiver().start()
    yield receiver
    receiver.stop()


def admin(app: Flask) -> tuple[Any, dict[str, str]]:
    """A test client and an admin's headers."""
    client = app.test_client()
    return client, bearer(login(client, ADMIN_EMAIL)["access_token"])


def breaker_rule(name: str, service: str, *urls: str, **extra: Any) -> dict[str, Any]:
    """A breaker_open rule with one webhook channel per URL."""
    channels = [{"type": "webhook", "url": url} for url in urls]
    return {"name": name, "kind": "breaker_open", "params": {"service": service}, "channels": channels, **extra}


def deliver(app: Flask) -> dict[str, int]:
    """What the job worker does with the deliveries an evaluation handed off."""
    with app.app_context():
        return deliver_pending(app, datetime.now(UTC))


def breakers(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    """Every breaker's snapshot, as an admin sees them."""
    return client.get("/api/errors/circuit-breakers", headers=headers).get_json()["breakers"]  # type: ignore[no-any-return]


# --- Point 7: one broken channel silences nothing else -------------------------------------------------------


def test_point7_a_webhook_answering_500_opens_only_its_own_breaker(
    make_app: Callable[..., Flask], webhook_receiver: WebhookReceiver, second_receiver: WebhookReceiver
) -> None:
    """A dead webhook trips `alerts:webhook:<hash>`; the other webhook and PagerDuty keep receiving every alert."""
    app = make_app(RETRY_SLEEP_ENABLED=False, CIRCUIT_BREAKERS={"*": {"min_calls": 3, "recovery_timeout": 60}})
    client, headers = admin(app)
    dead, alive = second_receiver.url + "/dead", webhook_receiver.url + "/alive"
    second_receiver.status = 500
    pagerduty = {"type": "pagerduty", "routing_key": "RK", "url": webhook_receiver.url + "/v2/enqueue"}
    for service in ("storage", "email", "stripe"):
        rule = breaker_rule(f"{service}-down", service, dead, alive)
        rule["channels"].append(pagerduty)
        assert client.post(CONFIGURE, headers=headers, json=rule).status_code == 200
        client.post(f"{MONITORING}/circuit-breakers/{service}/force-open", headers=headers)
    client.post(EVALUATE, headers=headers)
    outcome = deliver(app)
    assert outcome == {"sent": 6, "retrying": 3, "failed": 0, "cancelled": 0}
    paths = sorted(d.path for d in webhook_receiver.deliveries)
    assert paths == ["/alive"] * 3 + ["/v2/enqueue"] * 3  # every alert reached both live channels

    snap = breakers(client, headers)
    dead_breaker = breaker_name({"type": "webhook", "url": dead})
    assert snap[dead_breaker]["state"] == "open"
    assert snap[breaker_name({"type": "webhook", "url": alive})]["state"] == "closed"
    assert snap[breaker_name(pagerduty)]["state"] == "closed"
    assert "alerts" not in snap  # no shared breaker any more

    # The next alert: the dead channel fails fast on its open breaker, the others still deliver.
    tried_dead = len(second_receiver.deliveries)
    client.post(f"{MONITORING}/circuit-breakers/reset/storage", headers=headers)
    client.post(EVALUATE, headers=headers)
    assert deliver(app) == {"sent": 2, "retrying": 1, "failed": 0, "cancelled": 0}
    assert len(second_receiver.deliveries) == tried_dead
    assert [b["event"] for b in webhook_receiver.bodies if "event" in b][-1] == "resolved"
    listing = client.get(CONFIGURE, headers=headers).get_json()["deliveries"]
    waiting = [d for d in listing if d["status"] == "pending"]
    assert waiting and {d["breaker"] for d in waiting} == {dead_breaker}
    (resolved,) = [d for d in waiting if d["event"] == "resolved"]
    assert resolved["last_error"].startswith("CIRCUIT_OPEN")  # refused without a request


def test_point7_a_hanging_channel_does_not_delay_the_others(
    make_app: Callable[..., Flask], webhook_receiver: WebhookReceiver, slow_receiver: SlowReceiver
) -> None:
    """A receiver that takes 2 s per request (timeout 0.5 s, 3 attempts) delays no other destination."""
    app = make_app(RETRY_SLEEP_ENABLED=False, ALERT_HTTP_TIMEOUT=0.5)
    client, headers = admin(app)
    rule = breaker_rule("db-down", "database", slow_receiver.url + "/hung", webhook_receiver.url + "/ok")
    client.post(CONFIGURE, headers=headers, json=rule)
    client.post(f"{MONITORING}/circuit-breakers/database/force-open", headers=headers)
    client.post(EVALUATE, headers=headers)
    client.post(f"{MONITORING}/circuit-breakers/reset/database", headers=headers)
    started = time.time()
    outcome = deliver(app)
    assert outcome == {"sent": 1, "retrying": 1, "failed": 0, "cancelled": 0}
    (delivered,) = webhook_receiver.deliveries
    assert delivered.received_at - started < 0.5  # not behind the hung channel's 1.5 s of attempts
    assert time.time() - started >= 1.4  # the hung channel really was tried (3 x 0.5 s)


# --- Point 8: rules validated, isolated, disabled, deleted, test-sent; deliveries in the background ----------------


def test_point8_a_bad_parameter_is_refused_at_configure_time_with_field_details(app: Flask) -> None:
    """`threshold: "lots"` is a 422 naming `params.threshold`; unknown and out-of-range params too."""
    client, headers = admin(app)
    hook = [{"type": "webhook", "url": "http://127.0.0.1:9/x"}]
    cases = [
        ({"kind": "error_rate", "params": {"threshold": "lots"}}, "params.threshold"),
        ({"kind": "error_rate", "params": {"threshold": 2}}, "params.threshold"),
        ({"kind": "code_count", "params": {"code": "X", "threshold": 1.5}}, "params.threshold"),
        ({"kind": "dead_letters", "params": {"treshold": 1}}, "params.treshold"),
        (
            {"kind": "slo_burn", "params": {"group": "api", "long_seconds": 300, "short_seconds": 3600, "factor": 2}},
            "params.short_seconds",
        ),
        ({"kind": "code_count", "params": {"threshold": 3}}, "params.code"),
    ]
    for body, field in cases:
        response = client.post(CONFIGURE, headers=headers, json={"name": "bad", "channels": hook, **body})
        assert response.status_code == 422, body
        error = response.get_json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and field in error["details"]["fields"], error
    stored = {r["name"] for r in client.get(CONFIGURE, headers=headers).get_json()["rules"]}
    assert stored == set(DEFAULT_RULES)  # nothing was stored


def test_point8_a_rule_that_fails_to_evaluate_stops_no_other_rule(
    app: Flask, webhook_receiver: WebhookReceiver
) -> None:
    """A stored rule that raises (a row from before validation) is logged, counted and skipped; the next one fires."""
    client, headers = admin(app)
    hook = webhook_receiver.url + "/hook"
    with app.app_context():
        now = datetime.now(UTC)
        db.session.add(
            AlertRule(
                name="aaa-legacy",
                kind="error_rate",
                params={"threshold": "lots", "min_requests": 0},
                channels=[{"type": "webhook", "url": hook}],
                state="ok",
                notified=False,
                version=0,
                created_at=now,
                updated_at=now,
            )
        )
        db.session.commit()
    client.post(CONFIGURE, headers=headers, json=breaker_rule("zzz-storage", "storage", hook))
    client.post(f"{MONITORING}/circuit-breakers/storage/force-open", headers=headers)
    response = client.post(EVALUATE, headers=headers)
    assert response.status_code == 200
    result = response.get_json()
    assert result["events"] == {"zzz-storage": "firing"}
    assert set(result["errors"]) == {"aaa-legacy"} and "ValueError" in result["errors"]["aaa-legacy"]
    legacy = next(r for r in client.get(CONFIGURE, headers=headers).get_json()["rules"] if r["name"] == "aaa-legacy")
    assert "ValueError" in legacy["last_error"]
    logged = [e for e in read_log(app, "errors.log") if "aaa-legacy" in e.get("message", "")]
    assert logged and logged[0].get("traceback")


def test_point8_evaluate_hands_deliveries_to_the_worker_and_returns_at_once(
    make_app: Callable[..., Flask], slow_receiver: SlowReceiver
) -> None:
    """Evaluating with a 2 s channel answers in well under a second; the worker sends; the listing shows it."""
    app = make_app(ALERT_HTTP_TIMEOUT=5.0)
    client, headers = admin(app)
    client.post(CONFIGURE, headers=headers, json=breaker_rule("render-down", "rendering", slow_receiver.url + "/h"))
    client.post(f"{MONITORING}/circuit-breakers/rendering/force-open", headers=headers)
    started = time.monotonic()
    result = client.post(EVALUATE, headers=headers).get_json()
    assert time.monotonic() - started < 1.0
    assert result["events"] == {"render-down": "firing"} and result["deliveries"] == {"pending": 1}
    assert result["delivery_job"] is not None and slow_receiver.deliveries == []

    options = WorkerOptions(poll_seconds=0.1, install_signals=False, max_seconds=30, heartbeat_seconds=5)
    worker = Worker(app, options)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        slow_receiver.wait_for(1, timeout=15)
        deadline = time.monotonic() + 10
        while True:
            (delivery,) = client.get(CONFIGURE, headers=headers).get_json()["deliveries"]
            if delivery["status"] == "sent" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        worker.stopping.set()
        worker.force.set()
        thread.join(15)
    assert delivery["status"] == "sent" and delivery["breaker"].startswith("alerts:webhook:")
    with app.app_context():
        client.post(f"{MONITORING}/circuit-breakers/reset/rendering", headers=headers)


def test_point8_a_disabled_rule_stops_delivering(app: Flask, webhook_receiver: WebhookReceiver) -> None:
    """Disabled after it fired but before the worker sent: nothing goes out, the delivery is cancelled."""
    client, headers = admin(app)
    rule = breaker_rule("mail-down", "email", webhook_receiver.url + "/hook")
    client.post(CONFIGURE, headers=headers, json=rule)
    client.post(f"{MONITORING}/circuit-breakers/email/force-open", headers=headers)
    assert client.post(EVALUATE, headers=headers).get_json()["events"] == {"mail-down": "firing"}
    disabled = client.post(CONFIGURE, headers=headers, json={**rule, "enabled": False}).get_json()
    assert disabled["enabled"] is False and disabled["state"] == "ok"
    assert deliver(app)["sent"] == 0
    assert client.post(EVALUATE, headers=headers).get_json()["events"] == {}
    assert deliver(app)["sent"] == 0
    assert webhook_receiver.deliveries == []
    (delivery,) = client.get(CONFIGURE, headers=headers).get_json()["deliveries"]
    assert delivery["status"] == "cancelled"
    notes = client.get("/api/errors/notifications", headers=headers).get_json()["notifications"]
    assert f"alert:{disabled['id']}" not in {n["id"] for n in notes}


def test_point8_rules_can_be_deleted_and_test_sent(
    app: Flask, webhook_receiver: WebhookReceiver, second_receiver: WebhookReceiver
) -> None:
    """Test-send answers per channel (one fails, one is sent, signed); DELETE removes the rule and its deliveries."""
    client, headers = admin(app)
    second_receiver.status = 500
    created = client.post(
        CONFIGURE,
        headers=headers,
        json=breaker_rule("pay-down", "stripe", webhook_receiver.url + "/a", second_receiver.url + "/b"),
    ).get_json()
    response = client.post(f"{MONITORING}/alerts/{created['id']}/test", headers=headers)
    assert response.status_code == 200
    outcomes = {o["index"]: o for o in response.get_json()["channels"]}
    assert outcomes[0]["outcome"] == "sent" and outcomes[0]["error_code"] is None
    assert outcomes[1]["outcome"] == "failed" and outcomes[1]["error_code"] == "EXTERNAL_SERVICE_UNAVAILABLE"
    (sent,) = [d for d in webhook_receiver.deliveries]
    assert sent.json["event"] == "test" and sent.json["text"].startswith("[TEST] pay-down")
    assert verify_signature(created["signing_secret"], sent.body, sent.headers["X-Oriel-Signature"])
    assert client.post(f"{MONITORING}/alerts/999999/test", headers=headers).status_code == 404

    client.post(f"{MONITORING}/circuit-breakers/stripe/force-open", headers=headers)
    client.post(EVALUATE, headers=headers)
    deleted = client.delete(f"{MONITORING}/alerts/{created['id']}", headers=headers)
    assert deleted.get_json() == {"deleted": "pay-down", "deliveries_removed": 2}
    assert deliver(app)["sent"] == 0
    names = [r["name"] for r in client.get(CONFIGURE, headers=headers).get_json()["rules"]]
    assert "pay-down" not in names
    assert client.delete(f"{MONITORING}/alerts/{created['id']}", headers=headers).status_code == 404
    events = [e["event_type"] for e in read_log(app, "security.log") if e.get("event_type", "").startswith("alert_")]
    assert events == ["alert_rule_configured", "alert_rule_tested", "alert_rule_deleted"]
    client.post(f"{MONITORING}/circuit-breakers/reset/stripe", headers=headers)


# --- Point 9: the SRE workbook's burn-rate rules ship by default, as ordinary rules --------------------------------


def test_point9_default_burn_rate_rules_ship_fire_and_can_be_changed(app: Flask) -> None:
    """Three default slo_burn rules (14.4x 1h/5m and 6x 6h/30m page, 1x 3d/6h ticket) fire on any group; editable."""
    client, headers = admin(app)
    rules = {r["name"]: r for r in client.get(CONFIGURE, headers=headers).get_json()["rules"]}
    expected = {
        "slo-burn-page-1h": (3600, 300, 14.4, "CRITICAL"),
        "slo-burn-page-6h": (21600, 1800, 6.0, "CRITICAL"),
        "slo-burn-ticket-3d": (259200, 21600, 1.0, "MEDIUM"),
    }
    for name, (long_s, short_s, factor, severity) in expected.items():
        params = rules[name]["params"]
        assert (params["long_seconds"], params["short_seconds"], params["factor"]) == (long_s, short_s, factor)
        assert params["group"] == "*" and rules[name]["severity"] == severity and rules[name]["enabled"]

    now = datetime.now(UTC)
    only_a = [row for row in traffic(now) if row["endpoint_group"] == "a"]  # 2% errors for the last hour: 20x
    with app.app_context():
        db.session.execute(SloMinute.__table__.insert(), only_a)
        db.session.commit()
    result = client.post(EVALUATE, headers=headers).get_json()
    assert result["events"] == {"slo-burn-page-1h": "firing"}  # 20x over 1 h; 6 h is 3.3x, 3 d is 0.3x
    fired = next(
        r for r in client.get(CONFIGURE, headers=headers).get_json()["rules"] if r["name"] == "slo-burn-page-1h"
    )
    assert fired["state"] == "firing" and fired["last_value"] == pytest.approx(20.0)
    notes = client.get("/api/errors/notifications", headers=headers).get_json()["notifications"]
    assert f"alert:{fired['id']}" in {n["id"] for n in notes}

    # An ordinary rule: lower the ticket rule's factor and it fires; disable the page rule and it resolves quietly.
    ticket = rules["slo-burn-ticket-3d"]
    changed = {**{k: ticket[k] for k in ("name", "kind", "severity")}, "params": {**ticket["params"], "factor": 0.2}}
    assert client.post(CONFIGURE, headers=headers, json=changed).status_code == 200
    page = {**{k: fired[k] for k in ("name", "kind", "params", "severity")}, "enabled": False}
    assert client.post(CONFIGURE, headers=headers, json=page).status_code == 200
    assert client.post(EVALUATE, headers=headers).get_json()["events"] == {"slo-burn-ticket-3d": "firing"}


def test_point9_default_rules_ignore_a_few_failures_on_an_idle_server(app: Flask) -> None:
    """Three 5xx out of five requests is not an outage to page about (min_requests 50 over the long window)."""
    client, headers = admin(app)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with app.app_context():
        db.session.execute(
            SloMinute.__table__.insert(), [{"minute": now, "endpoint_group": "api", "total": 5, "bad": 3}]
        )
        db.session.commit()
    assert client.post(EVALUATE, headers=headers).get_json()["events"] == {}


# --- Point 10: signed webhooks, no private destinations in production, internal breakers hidden -------------------


def test_point10_webhooks_are_signed_with_the_rules_secret_and_rotation_works(
    app: Flask, webhook_receiver: WebhookReceiver
) -> None:
    """The receiver verifies `X-Oriel-Signature: t=..,v1=HMAC-SHA256(secret, "t.body")`; a rotated secret takes over."""
    client, headers = admin(app)
    created = client.post(CONFIGURE, headers=headers, json=breaker_rule("disk", "storage", webhook_receiver.url + "/h"))
    secret = created.get_json()["signing_secret"]
    assert secret.startswith("whsec_")
    listed = client.get(CONFIGURE, headers=headers).get_data(as_text=True)
    assert secret not in listed  # shown once
    client.post(f"{MONITORING}/circuit-breakers/storage/force-open", headers=headers)
    client.post(EVALUATE, headers=headers)
    deliver(app)
    (first,) = webhook_receiver.deliveries
    header = first.headers["X-Oriel-Signature"]
    # What a receiver does, written out with the standard library only.
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + first.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 60
    assert verify_signature(secret, first.body, header)
    assert not verify_signature(secret, first.body.replace(b"firing", b"resolvd"), header)  # tampered
    assert not verify_signature(secret, first.body, header, now=time.time() + 3600)  # replayed an hour later

    rotated = client.post(f"{MONITORING}/alerts/{created.get_json()['id']}/rotate-secret", headers=headers).get_json()
    assert rotated["signing_secret"] != secret
    client.post(f"{MONITORING}/circuit-breakers/reset/storage", headers=headers)
    client.post(EVALUATE, headers=headers)
    deliver(app)
    second = webhook_receiver.deliveries[1]
    assert second.json["event"] == "resolved"
    assert verify_signature(rotated["signing_secret"], second.body, second.headers["X-Oriel-Signature"])
    assert not verify_signature(secret, second.body, second.headers["X-Oriel-Signature"])
    assert "whsec_" not in "".join(str(e) for e in read_log(app, "security.log"))


def test_point10_private_webhook_destinations_are_refused_unless_allowed(
    make_app: Callable[..., Flask], webhook_receiver: WebhookReceiver
) -> None:
    """With ALERT_WEBHOOK_ALLOW_PRIVATE off: loopback, localhost, metadata and private URLs are a 422."""
    app = make_app(ALERT_WEBHOOK_ALLOW_PRIVATE=False)
    client, headers = admin(app)
    for url in (
        webhook_receiver.url + "/h",
        "http://localhost:8080/h",
        "http://169.254.169.254/latest/meta-data",
        "https://10.1.2.3/h",
        "http://[::1]:9000/h",
        "http://[::ffff:127.0.0.1]/h",
    ):
        response = client.post(CONFIGURE, headers=headers, json=breaker_rule("x", "storage", url))
        assert response.status_code == 422, url
        error = response.get_json()["error"]
        assert error["code"] == "WEBHOOK_DESTINATION_REFUSED" and "channels.0.url" in error["details"]["fields"]
    pd = {
        "name": "x",
        "kind": "dead_letters",
        "channels": [{"type": "pagerduty", "routing_key": "k", "url": "http://127.0.0.1/"}],
    }
    assert client.post(CONFIGURE, headers=headers, json=pd).status_code == 422

    # Every resolved address is checked: one private among public ones is enough to refuse.
    check_url("https://hooks.example.com/x", allow_private=False, resolve=lambda _h, _p: ["93.184.216.34"])
    with pytest.raises(WebhookDestinationError):
        check_url(
            "https://hooks.example.com/x", allow_private=False, resolve=lambda _h, _p: ["93.184.216.34", "10.0.0.5"]
        )

    def unresolved(_host: str, _port: int) -> list[str]:
        raise OSError("Name or service not known")

    # A name that does not resolve is refused too, but as recoverable: at send time a DNS hiccup is retried.
    with pytest.raises(WebhookHostUnresolvedError) as caught:
        check_url("https://hooks.example.com/x", allow_private=False, resolve=unresolved)
    assert caught.value.recoverable and caught.value.status_code == 422


def test_point10_a_destination_that_turns_private_after_configuration_is_refused_at_send_time(
    make_app: Callable[..., Flask], webhook_receiver: WebhookReceiver
) -> None:
    """DNS rebinding: the address is checked again before each send; the delivery fails, nothing is sent."""
    app = make_app(ALERT_WEBHOOK_ALLOW_PRIVATE=True)
    client, headers = admin(app)
    client.post(CONFIGURE, headers=headers, json=breaker_rule("x", "email", webhook_receiver.url + "/h"))
    client.post(f"{MONITORING}/circuit-breakers/email/force-open", headers=headers)
    client.post(EVALUATE, headers=headers)
    app.config["ALERT_WEBHOOK_ALLOW_PRIVATE"] = False  # as if the name now resolved to a private address
    assert deliver(app) == {"sent": 0, "retrying": 0, "failed": 1, "cancelled": 0}
    assert webhook_receiver.deliveries == []
    with app.app_context():
        (delivery,) = db.session.execute(db.select(AlertDelivery)).scalars()
        assert (delivery.last_error or "").startswith("WEBHOOK_DESTINATION_REFUSED")
    client.post(f"{MONITORING}/circuit-breakers/reset/email", headers=headers)


def test_point10_alert_breakers_are_hidden_from_the_public_and_shown_to_admins(
    make_app: Callable[..., Flask], webhook_receiver: WebhookReceiver
) -> None:
    """An open alert-channel breaker: public health says ok with no features; admins see it in notifications."""
    app = make_app(RETRY_SLEEP_ENABLED=False)
    client, headers = admin(app)
    channel = {"type": "webhook", "url": webhook_receiver.url + "/h"}
    name = breaker_name(channel)
    with app.app_context():
        app.extensions["breakers"].get(name).force_open("test")
    assert breakers(client, headers)[name]["state"] == "forced_open"
    anonymous = app.test_client()
    public = anonymous.get("/api/errors/system-health").get_json()
    assert public["status"] == "ok" and public["degraded_features"] == []  # no "alerts" among them
    mode = anonymous.get("/api/errors/degradation-mode").get_json()
    assert mode["degraded"] is False
    assert [s["service"] for s in mode["services"] if s["state"] != "not_configured"] == []
    notes = client.get("/api/errors/notifications", headers=headers).get_json()["notifications"]
    assert f"breaker:{name}" in {n["id"] for n in notes}


def test_point10_production_refuses_private_webhooks_by_default() -> None:
    """ALERT_WEBHOOK_ALLOW_PRIVATE: false in production unless set, true in development and tests."""
    from config import load_config

    secrets = {"SECRET_KEY": "s" * 40, "JWT_SECRET_KEY": "j" * 40}
    assert load_config({"FLASK_ENV": "production", **secrets}).ALERT_WEBHOOK_ALLOW_PRIVATE is False  # type: ignore[attr-defined]
    allowed = load_config({"FLASK_ENV": "production", "ALERT_WEBHOOK_ALLOW_PRIVATE": "true", **secrets})
    assert allowed.ALERT_WEBHOOK_ALLOW_PRIVATE is True  # type: ignore[attr-defined]
    assert load_config({"FLASK_ENV": "development"}).ALERT_WEBHOOK_ALLOW_PRIVATE is True  # type: ignore[attr-defined]
