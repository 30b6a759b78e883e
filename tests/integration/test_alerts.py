"""Alerts end to end: an outage of a local peer pages once within 10 s and resolves; deliveries are never lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from flask import Flask

from backend.app.errors import APIError
from backend.app.extensions import db
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models import AlertDelivery
from backend.app.resilience.recovery import with_error_recovery
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.peers.webhook_receiver import WebhookReceiver

CONFIGURE = "/admin/api/monitoring/alerts/configure"
EVALUATE = "/admin/api/monitoring/alerts/evaluate"


def evaluate_and_deliver(app: Flask, client: Any, headers: dict[str, str]) -> dict[str, Any]:
    """POST evaluate (which only hands deliveries off), then do what the job worker does with them."""
    from datetime import UTC, datetime

    from backend.app.monitoring.alerts.delivery import deliver_pending

    result = client.post(EVALUATE, headers=headers).get_json()
    with app.app_context():
        result["deliveries"] = deliver_pending(app, datetime.now(UTC))
    return result


@with_error_recovery("stripe", "charge", max_retries=0)
def charge(url: str) -> None:
    """A guarded call to the local peer standing in for the payment provider."""
    requests.post(url, json={"amount": 100}, timeout=2).raise_for_status()


@contextmanager
def worker_running(app: Flask) -> Iterator[Worker]:
    """The real job worker (with the periodic scheduler) in a thread, stopped at the end."""
    options = WorkerOptions(poll_seconds=0.2, install_signals=False, max_seconds=60, heartbeat_seconds=5)
    worker = Worker(app, options)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stopping.set()
        worker.force.set()
        thread.join(15)


@contextmanager
def traffic(app: Flask, url: str) -> Iterator[dict[str, int]]:
    """Calls the peer through the breaker every 50 ms until the block ends."""
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}

    def loop() -> None:
        with app.app_context():
            while not stop.is_set():
                try:
                    charge(url)
                    counts["ok"] += 1
                except APIError:
                    counts["failed"] += 1
                stop.wait(0.05)

    thread = threading.Thread(target=loop, name="traffic", daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture
def peer() -> Iterator[WebhookReceiver]:
    """The dependency: a local HTTP peer that can be made to fail."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.mark.timeout(90)
def test_incident_pages_once_and_resolves(
    make_app: Callable[..., Flask], webhook_receiver: WebhookReceiver, peer: WebhookReceiver
) -> None:
    """Peer fails → breaker opens → degradation says so → one alert within 10 s → resolved after recovery."""
    app = make_app(
        ALERTS_EVALUATE_SECONDS=1,
        CIRCUIT_BREAKERS={"stripe": {"min_calls": 5, "recovery_timeout": 2.0}},
        RETRY_SLEEP_ENABLED=False,
        # Configured, so its breaker's state is an outage users see (the calls go to the peer below).
        STRIPE_API_KEY="sk_test_incident",
        STRIPE_WEBHOOK_SECRET="whsec_incident",
    )
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    rule = {
        "name": "payments-down",
        "kind": "breaker_open",
        "params": {"service": "stripe"},
        "channels": [{"type": "webhook", "url": webhook_receiver.url + "/alerts"}],
        "severity": "CRITICAL",
    }
    configured = client.post(CONFIGURE, headers=headers, json=rule)
    assert configured.status_code == 200
    rule_id = configured.get_json()["id"]

    with worker_running(app):
        peer.status = 503
        outage_started = time.time()
        with traffic(app, peer.url + "/charge") as counts:
            deadline = time.monotonic() + 5
            while client.get("/api/errors/system-health").get_json()["status"] == "ok":
                assert time.monotonic() < deadline, "the breaker never opened"
                time.sleep(0.05)
            mode = client.get("/api/errors/degradation-mode").get_json()
            (outage,) = [s for s in mode["services"] if s["state"] != "not_configured"]
            assert outage["service"] == "stripe" and outage["features"] == ["payments"]
            assert client.get("/api/errors/system-health").get_json()["degraded_features"] == ["payments"]

            (alert,) = webhook_receiver.wait_for(1, timeout=10)
            assert alert.received_at - outage_started <= 10.0
            assert alert.json["event"] == "firing" and alert.json["rule"] == "payments-down"
            assert alert.json["text"].startswith("[FIRING] payments-down")

            time.sleep(3.5)  # the outage goes on (a half-open trial fails again): no second page
            assert len(webhook_receiver.deliveries) == 1
            assert counts["failed"] > 5

            notes = client.get("/api/errors/notifications", headers=headers).get_json()["notifications"]
            assert {"breaker:stripe", f"alert:{rule_id}"} <= {n["id"] for n in notes}

            peer.status = 200  # recovery: the next trial call succeeds and the breaker closes
            delivered = webhook_receiver.wait_for(2, timeout=15)
        assert delivered[1].json["event"] == "resolved"
        assert counts["ok"] > 0
    assert client.get("/api/errors/system-health").get_json()["status"] == "ok"
    assert len(webhook_receiver.deliveries) == 2
    listing = client.get(CONFIGURE, headers=headers).get_json()
    assert next(r for r in listing["rules"] if r["id"] == rule_id)["state"] == "ok"
    assert [d["status"] for d in listing["deliveries"]] == ["sent", "sent"]
    changes = [e for e in read_log(app, "security.log") if e.get("event_type") == "alert_rule_configured"]
    assert len(changes) == 1


def test_failed_delivery_is_retried_not_lost(app: Flask, webhook_receiver: WebhookReceiver) -> None:
    """The receiver fails every attempt of the first round: the delivery waits, then goes out once."""
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    rule = {
        "name": "email-down",
        "kind": "breaker_open",
        "params": {"service": "email"},
        "channels": [{"type": "webhook", "url": webhook_receiver.url + "/hook"}],
    }
    client.post(CONFIGURE, headers=headers, json=rule)
    client.post("/admin/api/monitoring/circuit-breakers/email/force-open", headers=headers)
    webhook_receiver.fail_next(500, times=3)  # with_error_recovery tries 3 times: all fail
    first = evaluate_and_deliver(app, client, headers)
    assert first["events"] == {"email-down": "firing"}
    assert first["deliveries"] == {"sent": 0, "retrying": 1, "failed": 0, "cancelled": 0}
    with app.app_context():
        (delivery,) = db.session.execute(db.select(AlertDelivery)).scalars()
        assert delivery.status == "pending" and delivery.attempts == 1
        assert "EXTERNAL_SERVICE_UNAVAILABLE" in (delivery.last_error or "")
        delivery.next_attempt_at = delivery.created_at  # due again now (the backoff would wait 2 s)
        db.session.commit()
    second = evaluate_and_deliver(app, client, headers)
    assert second["events"] == {}
    assert second["deliveries"] == {"sent": 1, "retrying": 0, "failed": 0, "cancelled": 0}
    assert [d.status for d in webhook_receiver.deliveries] == [500, 500, 500, 200]


def test_pagerduty_events_trigger_and_resolve_with_one_dedup_key(app: Flask, webhook_receiver: WebhookReceiver) -> None:
    """PagerDuty Events v2: trigger with a payload, then resolve with the same dedup_key; the key is masked."""
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    rule = {
        "name": "render-down",
        "kind": "breaker_open",
        "params": {"service": "rendering"},
        "severity": "CRITICAL",
        "channels": [
            {"type": "pagerduty", "routing_key": "R0UTINGKEY123", "url": webhook_receiver.url + "/v2/enqueue"}
        ],
    }
    shown = client.post(CONFIGURE, headers=headers, json=rule).get_json()
    assert shown["channels"][0]["routing_key"] == "R0UT..."
    base = "/admin/api/monitoring/circuit-breakers"
    client.post(f"{base}/rendering/force-open", headers=headers)
    evaluate_and_deliver(app, client, headers)
    client.post(f"{base}/reset/rendering", headers=headers)
    evaluate_and_deliver(app, client, headers)
    trigger, resolve = webhook_receiver.bodies
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["routing_key"] == "R0UTINGKEY123"
    assert trigger["dedup_key"] == resolve["dedup_key"] == f"oriel-alert-{shown['id']}"
    assert trigger["payload"]["severity"] == "critical" and trigger["payload"]["source"] == "oriel-signal-fx"
    assert "payload" not in resolve


def test_flapping_inside_the_cooldown_is_not_paged_twice(app: Flask, webhook_receiver: WebhookReceiver) -> None:
    """Firing, resolved, firing again within the cooldown: one page, one resolve, no second page."""
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    rule = {
        "name": "storage-flap",
        "kind": "breaker_open",
        "params": {"service": "storage"},
        "cooldown_seconds": 600,
        "channels": [{"type": "webhook", "url": webhook_receiver.url + "/hook"}],
    }
    client.post(CONFIGURE, headers=headers, json=rule)
    base = "/admin/api/monitoring/circuit-breakers"
    events = []
    for action in ("storage/force-open", "reset/storage", "storage/force-open", "reset/storage"):
        client.post(f"{base}/{action}", headers=headers)
        events.append(evaluate_and_deliver(app, client, headers)["events"])
    assert events == [{"storage-flap": "firing"}, {"storage-flap": "resolved"}, {}, {}]
    assert [b["event"] for b in webhook_receiver.bodies] == ["firing", "resolved"]


def test_rules_are_validated(app: Flask) -> None:
    """Missing params, an unknown kind or service, and a bad channel are refused."""
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    hook = [{"type": "webhook", "url": "http://127.0.0.1:9/x"}]
    bad: list[tuple[dict[str, Any], int]] = [
        ({"name": "x", "kind": "code_count", "params": {"code": "X"}, "channels": hook}, 422),
        ({"name": "x", "kind": "nope", "channels": hook}, 422),
        ({"name": "x", "kind": "breaker_open", "params": {"service": "nope"}, "channels": hook}, 404),
        ({"name": "x", "kind": "dead_letters", "channels": [{"type": "webhook", "url": "ftp://x"}]}, 422),
        ({"name": "x", "kind": "dead_letters", "channels": hook * 11}, 422),
    ]
    for body, status in bad:
        assert client.post(CONFIGURE, headers=headers, json=body).status_code == status, body


def test_error_rate_code_count_and_dead_letter_rules(app: Flask, webhook_receiver: WebhookReceiver) -> None:
    """Error-rate, code-count and dead-letter rules fire from the real rollups and job records."""
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    hook = [{"type": "webhook", "url": webhook_receiver.url + "/hook"}]
    # #15 point 4: an error-rate rule reads server errors unless told otherwise, so 30 404s fire only the
    # rule that asks for client errors.
    client_rate = {"threshold": 0.5, "min_requests": 10, "scope": "client"}
    rules = [
        {"name": "rate", "kind": "error_rate", "params": client_rate, "channels": hook},
        {"name": "5xx", "kind": "error_rate", "params": {"threshold": 0.01, "min_requests": 10}, "channels": hook},
        {"name": "404s", "kind": "code_count", "params": {"code": "NOT_FOUND", "threshold": 10}, "channels": hook},
        {"name": "dead", "kind": "dead_letters", "params": {"threshold": 1}, "channels": hook},
    ]
    for rule in rules:
        assert client.post(CONFIGURE, headers=headers, json=rule).status_code == 200
    for _ in range(30):
        client.get("/no/such/page")
    with app.app_context():
        from backend.app.jobs import enqueue

        job = enqueue("maintenance.noop", {})
        job.status, job.dead_at = "dead", job.created_at
        db.session.commit()
    result = client.post("/admin/api/monitoring/alerts/evaluate", headers=headers).get_json()
    assert result["events"] == {"rate": "firing", "404s": "firing", "dead": "firing"}


def test_email_channel_goes_through_the_email_service(make_app: Callable[..., Flask], sendgrid_peer: Any) -> None:
    """An email rule sends through SendGrid (the local peer) once, with the alert in the subject."""
    app = make_app(
        SENDGRID_API_KEY=sendgrid_peer.api_key,
        SENDGRID_API_HOST=sendgrid_peer.url,
        SENDGRID_TIMEOUT=1.0,
        EMAIL_FROM="alerts@oriel.example",
        RETRY_SLEEP_ENABLED=False,
    )
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    rule = {
        "name": "jobs-dying",
        "kind": "breaker_open",
        "params": {"service": "database"},
        "channels": [{"type": "email", "to": "oncall@example.com"}],
    }
    client.post(CONFIGURE, headers=headers, json=rule)
    client.post("/admin/api/monitoring/circuit-breakers/database/force-open", headers=headers)
    result = evaluate_and_deliver(app, client, headers)
    assert result["deliveries"]["sent"] == 1
    [message] = sendgrid_peer.messages
    assert message.recipients == ["oncall@example.com"] and message.subject == "[FIRING] jobs-dying"
    client.post("/admin/api/monitoring/circuit-breakers/reset/database", headers=headers)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_evaluators_send_one_message(
    backend: str, request: pytest.FixtureRequest, webhook_receiver: WebhookReceiver
) -> None:
    """Eight evaluators racing on one state change write one delivery (optimistic version check)."""
    from datetime import UTC, datetime

    from backend.app.monitoring.alerts.engine import evaluate_rule

    app: Flask = request.getfixturevalue("app" if backend == "sqlite" else "pg_app")
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    rule = {
        "name": "race",
        "kind": "breaker_open",
        "params": {"service": "stripe"},
        "channels": [{"type": "webhook", "url": webhook_receiver.url + "/hook"}],
    }
    rule_id = client.post(CONFIGURE, headers=headers, json=rule).get_json()["id"]
    client.post("/admin/api/monitoring/circuit-breakers/stripe/force-open", headers=headers)
    barrier = threading.Barrier(8)
    events: list[str | None] = []

    def evaluate() -> None:
        with app.app_context():
            barrier.wait()
            events.append(evaluate_rule(app, rule_id, datetime.now(UTC)))

    threads = [threading.Thread(target=evaluate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(events) == 8 and events.count("firing") == 1 and events.count(None) == 7
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(AlertDelivery)).scalar_one() == 1


def test_alert_and_slo_settings_come_from_the_environment() -> None:
    """SLOS (JSON), the evaluation interval and the probe deadline are read from the environment."""
    from config import ConfigError, load_config

    cfg = load_config(
        {
            "FLASK_ENV": "testing",
            "SLOS": '{"*": {"objective": 0.995}, "api": {"objective": 0.99, "window_days": 7}}',
            "ALERTS_EVALUATE_SECONDS": "15",
            "HEALTH_PROBE_DEADLINE": "1.5",
            "METRICS_ENABLED": "false",
        }
    )
    assert cfg.SLOS["api"] == {"objective": 0.99, "window_days": 7}  # type: ignore[attr-defined]
    assert cfg.ALERTS_EVALUATE_SECONDS == 15.0  # type: ignore[attr-defined]
    assert cfg.HEALTH_PROBE_DEADLINE == 1.5  # type: ignore[attr-defined]
    assert cfg.METRICS_ENABLED is False  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        load_config({"FLASK_ENV": "testing", "SLOS": "[1, 2]"})


def test_two_apps_of_one_process_keep_their_own_evaluation_interval(make_app: Callable[..., Flask]) -> None:
    """#16: ALERTS_EVALUATE_SECONDS is one app's config: a second app built later does not reset the first's."""
    from backend.app.jobs.registry import app_schedules
    from backend.app.jobs.scheduler.periodic import PeriodicScheduler
    from backend.app.monitoring.alerts import JOB_KIND

    fast = make_app(ALERTS_EVALUATE_SECONDS=1)
    slow = make_app(ALERTS_EVALUATE_SECONDS=900)

    def interval(app: Flask) -> float:
        scheduler = PeriodicScheduler(overrides=app_schedules(app))  # as each app's worker builds it
        return {p.name: p.every_seconds for p in scheduler.schedules()}[JOB_KIND]

    assert interval(fast) == 1.0
    assert interval(slow) == 900.0
    assert interval(make_app()) == 60.0  # an app that sets nothing runs at the default
