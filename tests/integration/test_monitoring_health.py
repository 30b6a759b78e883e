"""Admin health, load-balancer probes, breaker admin and the seed 004 status endpoints."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.app.errors import PaymentError, RenderingError, ValidationError
from backend.app.monitoring import flush_error_stats, record_error
from backend.app.resilience.recovery import ErrorKind, get_breaker
from backend.logging_config import log_context
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.contract import assert_error, assert_no_leak

SERVICES = {"database", "redis", "storage", "email", "stripe", "rendering", "queue"}


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server on loopback that accepts connections and never answers (a hung dependency)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def admin_headers(client: FlaskClient) -> dict[str, str]:
    """A bearer header for the admin account."""
    return bearer(login(client, ADMIN_EMAIL)["access_token"])


def test_health_services_reports_every_dependency(app: Flask) -> None:
    """Every dependency with configured flag, probe, breaker and history; queue, backlog and log sinks."""
    client = app.test_client()
    response = client.get("/admin/api/monitoring/health/services", headers=admin_headers(client))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body["services"]) == SERVICES
    services = body["services"]
    assert services["database"]["probe"]["status"] == "ok"
    assert services["database"]["breaker"]["state"] == "closed"
    assert services["redis"] == {**services["redis"], "configured": False}
    assert services["redis"]["probe"]["status"] == "not_configured"
    # Nothing configured for Stripe and SendGrid in tests: said so, not faked.
    assert services["stripe"]["configured"] is False
    assert services["stripe"]["probe"]["status"] == "not_configured"
    assert services["email"]["probe"]["status"] == "not_configured"
    assert services["rendering"]["probe"]["status"] == "ok"
    # No job worker runs beside this app: nothing enqueued would be served (#15 point 5).
    assert services["queue"]["probe"]["status"] == "degraded"
    assert services["queue"]["probe"]["detail"] == "no live worker"
    assert body["queue"]["dead_letters"] == 0 and body["queue"]["workers_alive"] == 0
    assert body["queue"]["depth"] == {"ready": 0, "scheduled": 0, "running": 0}
    assert body["backlog"] == {
        "status": "ok",
        "pending_storage_sync": 0,
        "failed_storage_sync": 0,
        "email_outbox": 0,
        "failed_email": 0,
        "email_possible_duplicates": 0,
    }
    assert body["logs"]["state"] == "ok"
    assert body["status"] in ("ok", "degraded")


def test_point3_and_4_backlog_counts_waiting_work_apart_from_failed_work_and_possible_duplicates(app: Flask) -> None:
    """#13 points 3-4: pending files and queued emails are the backlog; failed ones (the inbox) are shown apart."""
    from backend.app.extensions import db
    from backend.app.models import EmailOutbox, PendingSync

    with app.app_context():
        for i, status in enumerate(("pending", "pending", "failed", "synced", "discarded")):
            db.session.add(PendingSync(key=f"k{i}", content_type="video/mp4", size=1, status=status))
        for i, (status, duplicates) in enumerate((("queued", 1), ("sending", 0), ("failed", 0), ("sent", 2))):
            db.session.add(
                EmailOutbox(
                    dedup_key=f"e{i}", to_address="a@example.com", subject="S", text_body="T", status=status,
                    possible_duplicates=duplicates,
                )
            )  # fmt: skip
        db.session.commit()
    client = app.test_client()
    backlog = client.get("/admin/api/monitoring/health/services", headers=admin_headers(client)).get_json()["backlog"]
    assert backlog == {
        "status": "ok",
        "pending_storage_sync": 2,
        "failed_storage_sync": 1,
        "email_outbox": 2,
        "failed_email": 1,
        "email_possible_duplicates": 3,
    }


def test_hung_dependency_reports_timeout_within_the_deadline(
    make_app: Callable[..., Flask], silent_server: str
) -> None:
    """A Redis that accepts and never answers is "timeout"; the endpoint answers within the deadline."""
    app = make_app(REDIS_URL=silent_server, CIRCUIT_BREAKER_STORAGE="memory", HEALTH_PROBE_DEADLINE=0.3)
    client = app.test_client()
    headers = admin_headers(client)
    for _ in range(2):  # the second request waits on the same hung probe instead of starting another
        started = time.perf_counter()
        response = client.get("/admin/api/monitoring/health/services", headers=headers)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200
        body = response.get_json()
        assert body["services"]["redis"]["probe"]["status"] in ("timeout", "error")
        assert body["status"] == "degraded"
        assert elapsed < 1.5, elapsed
    assert body["services"]["redis"]["configured"] is True


def test_healthz_and_readyz_reveal_nothing(app: Flask) -> None:
    """Liveness and readiness answer without a token and with nothing internal."""
    client = app.test_client()
    assert client.get("/healthz").get_json() == {"status": "alive"}
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json() == {"status": "ready"}


def test_readyz_is_503_when_the_database_is_unreachable(make_app: Callable[..., Flask]) -> None:
    """No database within the deadline: a 503 envelope that names nothing internal."""
    url = "postgresql+psycopg://nobody:secret-pw@127.0.0.1:1/none"
    app = make_app(SQLALCHEMY_DATABASE_URI=url, ERROR_STATS_ENABLED=False)
    response = app.test_client().get("/readyz")
    error = assert_error(response, 503, "SERVICE_NOT_READY")
    assert_no_leak(response.get_data(as_text=True), "secret-pw", "127.0.0.1:1")
    assert error["message"] == "The service is not ready."
    assert app.test_client().get("/healthz").status_code == 200  # liveness does not depend on it


def test_breaker_admin_actions_and_user_facing_views(make_app: Callable[..., Flask]) -> None:
    """Force-open, disable, enable, reset, reset-all; degradation and public health follow; 404 for unknown."""
    # Stripe configured (no call is made): a breaker of a service that is not configured guards nothing.
    app = make_app(STRIPE_API_KEY="sk_test_views", STRIPE_WEBHOOK_SECRET="whsec_views")
    client = app.test_client()
    headers = admin_headers(client)
    base = "/admin/api/monitoring/circuit-breakers"
    listing = client.get(base, headers=headers).get_json()
    assert {"stripe", "storage", "email", "rendering", "database"} <= set(listing["breakers"])
    assert listing["storage"] == "memory"

    opened = client.post(f"{base}/stripe/force-open", headers=headers)
    assert opened.status_code == 200
    assert opened.get_json()["breakers"]["stripe"]["state"] == "forced_open"
    mode = client.get("/api/errors/degradation-mode").get_json()
    assert mode["degraded"] is True and mode["level"] == "degraded"
    (stripe,) = [s for s in mode["services"] if s["state"] != "not_configured"]
    assert stripe["service"] == "stripe" and stripe["features"] == ["payments"]
    assert stripe["fallback_active"] is False and "Nothing is charged" in stripe["user_impact"]
    public = client.get("/api/errors/system-health")
    assert public.get_json() == {
        "status": "degraded",
        "degraded_features": ["payments"],
        "unavailable_features": ["email notifications"],  # SendGrid is not configured here
    }
    assert "stripe" not in public.get_data(as_text=True)

    # Storage on the local disk (no bucket): its breaker guards no call, so forcing it open is no outage.
    client.post(f"{base}/storage/force-open", headers=headers)
    assert "storage" not in {s["service"] for s in client.get("/api/errors/degradation-mode").get_json()["services"]}

    client.post(f"{base}/database/force-open", headers=headers)
    assert client.get("/api/errors/system-health").get_json()["status"] == "down"

    assert (
        client.post(f"{base}/reset/database", headers=headers).get_json()["breakers"]["database"]["state"] == "closed"
    )
    disabled = client.post(f"{base}/email/disable", headers=headers).get_json()
    assert disabled["breakers"]["email"]["state"] == "disabled"
    assert client.post(f"{base}/email/enable", headers=headers).get_json()["breakers"]["email"]["state"] == "closed"
    everything = client.post(f"{base}/reset-all", headers=headers).get_json()
    assert {b["state"] for b in everything["breakers"].values()} == {"closed"}
    assert client.get("/api/errors/system-health").get_json() == {
        "status": "ok",
        "degraded_features": [],
        "unavailable_features": ["email notifications"],
    }
    assert client.get("/api/errors/circuit-breakers", headers=headers).get_json()["storage"] == "memory"

    for path in (f"{base}/reset/nope", f"{base}/nope/force-open", f"{base}/nope/disable", f"{base}/nope/enable"):
        assert_error(client.post(path, headers=headers), 404, "NOT_FOUND")
    assert "nope" not in get_breakers(app)

    events = [
        line for line in read_log(app, "security.log") if line.get("event_type", "").startswith("circuit_breaker_")
    ]
    # One line per action and breaker (force-open x3, reset, disable, enable, reset-all x5): never doubled.
    assert len(events) == 3 + 1 + 1 + 1 + len(everything["breakers"])
    assert all(line["actor"].startswith("admin user ") for line in events)


def get_breakers(app: Flask) -> dict[str, Any]:
    """The app's breakers by name."""
    return app.extensions["breakers"].all()


def test_last_success_and_failure_come_from_breaker_calls(app: Flask) -> None:
    """Calls through a breaker set last_success and last_failure on the health report."""
    with app.app_context():
        breaker = get_breaker("email")
        breaker.call(lambda: None)
        with pytest.raises(ConnectionError):
            breaker.call(_refuse)
    client = app.test_client()
    email = client.get("/admin/api/monitoring/health/services", headers=admin_headers(client)).get_json()
    entry = email["services"]["email"]
    assert entry["last_success"] and entry["last_failure"]
    assert entry["last_failure"] >= entry["last_success"]
    assert ErrorKind  # the classifier counted the refusal as a breaker failure (see test_breaker)


def _refuse() -> None:
    raise ConnectionError("refused")


def test_rate_limit_status_reads_without_consuming(app: Flask) -> None:
    """What is left of the caller's own limits, unchanged by asking."""
    client = app.test_client()
    report = {"message": "boom", "error_type": "TypeError"}
    for _ in range(2):
        assert client.post("/api/errors/report", json=report).status_code == 202
    first = client.get("/api/errors/rate-limit-status").get_json()
    second = client.get("/api/errors/rate-limit-status").get_json()
    assert first["enabled"] is True

    def remaining(body: dict[str, Any], endpoint: str) -> int:
        return next(item["remaining"] for item in body["limits"] if item["endpoint"] == endpoint)

    assert remaining(first, "api.report_error") == 30 - 2
    assert remaining(second, "api.report_error") == 30 - 2
    assert remaining(first, "auth.login") == 10
    # The status endpoint's own default limit: each call counts once (it is a request like any other).
    assert remaining(second, "api.rate_limit_status") == remaining(first, "api.rate_limit_status") - 1


def test_notifications_show_a_users_own_failures_with_actions(app: Flask) -> None:
    """A user sees the failures that hit them with the action to take; not others'; admins see alerts."""
    client = app.test_client()
    alice = login(client, "alice@example.com")
    bob = login(client, "bob@example.com")
    alice_id = client.get("/api/me", headers=bearer(alice["access_token"])).get_json()["user"]["id"]
    with app.app_context():
        with log_context(user_id=alice_id):
            record_error(RenderingError("ffmpeg exited 1 at /tmp/secret/path"), source="job")
            record_error(PaymentError("Payment declined", "PAYMENT_DECLINED"), source="http")
            record_error(ValidationError("bad field", field="x"), source="http")  # noise: not a notification
        flush_error_stats(app)
    body = client.get("/api/errors/notifications", headers=bearer(alice["access_token"])).get_json()
    codes = [n["code"] for n in body["notifications"]]
    assert sorted(codes) == ["PAYMENT_DECLINED", "RENDERING_FAILED"]
    render = next(n for n in body["notifications"] if n["code"] == "RENDERING_FAILED")
    assert "Start it again" in render["action"] and render["kind"] == "error"
    assert "/tmp/secret" not in str(body)
    assert client.get("/api/errors/notifications", headers=bearer(bob["access_token"])).get_json() == {
        "notifications": []
    }
    assert_error(client.get("/api/errors/notifications?limit=0", headers=bearer(alice["access_token"])), 422)
    assert_error(client.get("/api/errors/notifications?severity=meh", headers=bearer(alice["access_token"])), 422)
    assert_error(client.get("/api/errors/notifications"), 401)

    admin = admin_headers(client)
    client.post("/admin/api/monitoring/circuit-breakers/rendering/force-open", headers=admin)
    mine = client.get("/api/errors/notifications", headers=admin).get_json()["notifications"]
    assert [n["id"] for n in mine if n["kind"] == "system"] == ["breaker:rendering"]
    only_low = client.get("/api/errors/notifications?severity=LOW", headers=admin).get_json()["notifications"]
    assert all(n["severity"] == "LOW" for n in only_low)


def test_storage_probe_is_live_and_a_hung_bucket_times_out(
    make_app: Callable[..., Flask],
    gcs_emulator: Any,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
    make_fault_proxy: Callable[..., Any],
) -> None:
    """Through a fault proxy: the bucket answers ("ok", live); hung, the probe says "timeout" within the deadline."""
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = make_app(
        GCS_BUCKET=gcs_bucket,
        GCS_ENDPOINT=proxy.url,
        GCS_TIMEOUT=3.0,
        GCS_SIGNING_CREDENTIALS=gcs_signing_credentials,
        HEALTH_PROBE_DEADLINE=0.5,
    )
    client = app.test_client()
    headers = admin_headers(client)
    storage = client.get("/admin/api/monitoring/health/services", headers=headers).get_json()["services"]["storage"]
    assert storage["configured"] is True
    assert storage["probe"]["status"] == "ok" and storage["probe"]["live"] is True
    proxy.hang()
    started = time.perf_counter()
    body = client.get("/admin/api/monitoring/health/services", headers=headers).get_json()
    assert time.perf_counter() - started < 2.0
    assert body["services"]["storage"]["probe"]["status"] == "timeout"
    assert body["status"] == "degraded"
    proxy.passthrough()


def test_stripe_and_sendgrid_are_probed_live_over_http(
    make_app: Callable[..., Flask], stripe_peer: Any, sendgrid_peer: Any, make_fault_proxy: Callable[..., Any]
) -> None:
    """Both providers answer ("ok"); refusing connections is "error", hanging "timeout"; a bad key says so."""
    stripe_proxy = make_fault_proxy(stripe_peer.url, max_hold=5.0)
    email_proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    settings = {
        "STRIPE_API_KEY": stripe_peer.api_key,
        "STRIPE_API_BASE": stripe_proxy.url,
        "SENDGRID_API_KEY": sendgrid_peer.api_key,
        "SENDGRID_API_HOST": email_proxy.url,
        "HEALTH_PROBE_DEADLINE": 0.5,
    }
    app = make_app(**settings)
    client = app.test_client()
    headers = admin_headers(client)

    def probes() -> dict[str, dict[str, Any]]:
        services = client.get("/admin/api/monitoring/health/services", headers=headers).get_json()["services"]
        return {name: services[name]["probe"] for name in ("stripe", "email")}

    healthy = probes()
    assert healthy["stripe"]["status"] == "ok" and healthy["stripe"]["live"] is True
    assert healthy["email"]["status"] == "ok" and healthy["email"]["live"] is True
    stripe_proxy.down()
    email_proxy.hang()
    broken = probes()
    assert broken["stripe"]["status"] == "error" and broken["email"]["status"] == "timeout"
    stripe_proxy.up()
    email_proxy.passthrough()

    wrong_key = make_app(**{**settings, "STRIPE_API_KEY": "sk_test_wrong"})
    client = wrong_key.test_client()
    headers = admin_headers(client)
    body = client.get("/admin/api/monitoring/health/services", headers=headers).get_json()
    refused = body["services"]["stripe"]
    # A refused key is a configuration fault, not an outage (#13 point 2): "misconfigured" with the real error.
    assert refused["probe"]["status"] == "misconfigured"
    assert "credentials or permissions refused" in refused["probe"]["detail"]
    error = refused["probe"]["error"]
    assert (error["code"], error["http_status"]) == ("SERVICE_MISCONFIGURED", 401)
    assert body["status"] != "ok"
    assert "sk_test_wrong" not in str(refused)
