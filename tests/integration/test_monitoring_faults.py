"""Fault injection: refused unless enabled and never in production; faults go through the real recovery path."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.app.errors import APIError
from backend.app.resilience.recovery import get_breaker, with_error_recovery
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.contract import assert_error

FAULTS = "/admin/api/monitoring/faults"


def admin(client: FlaskClient) -> dict[str, str]:
    """Admin bearer header."""
    return bearer(login(client, ADMIN_EMAIL)["access_token"])


def upload() -> str:
    """A guarded storage call that succeeds unless a fault is injected."""
    return "stored"


def test_refused_unless_enabled(app: Flask) -> None:
    """Off by default: every fault endpoint answers 403 FAULT_INJECTION_DISABLED."""
    client = app.test_client()
    headers = admin(client)
    assert_error(client.get(FAULTS, headers=headers), 403, "FAULT_INJECTION_DISABLED")
    body = {"service": "storage", "mode": "fail"}
    assert_error(client.post(FAULTS, headers=headers, json=body), 403, "FAULT_INJECTION_DISABLED")


def test_always_refused_in_production(make_app: Callable[..., Flask]) -> None:
    """The production config refuses even with FAULT_INJECTION_ENABLED set, and injects nothing."""
    app = make_app(FAULT_INJECTION_ENABLED=True, ENV_NAME="production")
    client = app.test_client()
    response = client.post(FAULTS, headers=admin(client), json={"service": "storage", "mode": "fail"})
    assert_error(response, 403, "FAULT_INJECTION_DISABLED")
    with app.app_context():
        assert with_error_recovery("storage", "upload", max_retries=0)(upload)() == "stored"


@pytest.fixture
def chaos_app(make_app: Callable[..., Flask]) -> Flask:
    """Fault injection on, retries without sleeping (and a budget that allows them), a seeded dice."""
    return make_app(
        FAULT_INJECTION_ENABLED=True, RETRY_SLEEP_ENABLED=False, FAULT_INJECTION_SEED=7, RETRY_BUDGET_MIN_PER_SECOND=100
    )


def test_injected_failures_trip_the_breaker_and_clear(chaos_app: Flask) -> None:
    """fail at rate 1: calls fail as a refused connection, the breaker opens; clearing restores service."""
    client = chaos_app.test_client()
    headers = admin(client)
    added = client.post(FAULTS, headers=headers, json={"service": "storage", "mode": "fail", "duration_seconds": 60})
    assert added.status_code == 201
    assert added.get_json()["rules"][0]["mode"] == "fail" and added.get_json()["scope"] == "shared"
    guarded = with_error_recovery("storage", "upload", max_retries=0, idempotent=True)(upload)
    with chaos_app.app_context():
        codes = []
        for _ in range(7):
            with pytest.raises(APIError) as caught:
                guarded()
            codes.append(caught.value.code)
        assert codes[:5] == ["EXTERNAL_SERVICE_UNAVAILABLE"] * 5
        assert codes[-1] == "CIRCUIT_OPEN"
        assert get_breaker("storage").state.value == "open"
    listing = client.get(FAULTS, headers=headers).get_json()
    assert listing["injected"] == {"storage": 5}
    assert client.delete(f"{FAULTS}/storage", headers=headers).get_json()["rules"] == []
    client.post("/admin/api/monitoring/circuit-breakers/reset/storage", headers=headers)
    with chaos_app.app_context():
        assert guarded() == "stored"
    events = [
        e["event_type"] for e in read_log(chaos_app, "security.log") if e.get("event_type", "").startswith("fault")
    ]
    assert events == ["fault_injected", "fault_cleared"]


def test_status_faults_are_classified_like_real_answers(chaos_app: Flask) -> None:
    """A 400 is permanent (no retry, breaker unmoved); a 503 is retried; a 429 is throttled."""
    client = chaos_app.test_client()
    headers = admin(client)
    calls = {"n": 0}

    def counted() -> str:
        calls["n"] += 1
        return "ok"

    guarded = with_error_recovery("email", "send", max_retries=2, idempotent=True)(counted)
    for status, attempts_expected in ((400, 1), (503, 3), (429, 3)):
        client.post(FAULTS, headers=headers, json={"service": "email", "mode": "status", "status": status})
        with chaos_app.app_context():
            before = chaos_app.extensions["fault_injection"].injected.get("email", 0)
            with pytest.raises(APIError):
                guarded()
            assert chaos_app.extensions["fault_injection"].injected["email"] - before == attempts_expected, status
        client.post("/admin/api/monitoring/circuit-breakers/reset/email", headers=headers)
    assert calls["n"] == 0  # the real function never ran: every attempt got the fault


def test_slow_faults_delay_then_call(chaos_app: Flask) -> None:
    """mode slow sleeps, then the real call runs and succeeds."""
    client = chaos_app.test_client()
    body = {"service": "rendering", "mode": "slow", "delay_seconds": 0.2}
    assert client.post(FAULTS, headers=admin(client), json=body).status_code == 201
    with chaos_app.app_context():
        started = time.perf_counter()
        assert with_error_recovery("rendering", "render", max_retries=0)(upload)() == "stored"
        assert time.perf_counter() - started >= 0.2


def test_rate_is_honoured_and_bad_rules_rejected(chaos_app: Flask) -> None:
    """At rate 0.3 about 30% of calls fail; an unknown service is 404; a bad rule is 422."""
    client = chaos_app.test_client()
    headers = admin(client)
    body = {"service": "stripe", "mode": "fail", "rate": 0.3}
    assert client.post(FAULTS, headers=headers, json=body).status_code == 201
    chaos_app.extensions["breakers"].get("stripe").disable("test")  # count faults, not breaker refusals
    failed = 0
    with chaos_app.app_context():
        guarded = with_error_recovery("stripe", "charge", max_retries=0)(upload)
        for _ in range(400):
            try:
                guarded()
            except APIError:
                failed += 1
    assert 80 <= failed <= 160, failed
    assert_error(client.post(FAULTS, headers=headers, json={"service": "nope", "mode": "fail"}), 404)
    assert_error(client.post(FAULTS, headers=headers, json={"service": "stripe", "mode": "explode"}), 422)
    assert_error(
        client.post(FAULTS, headers=headers, json={"service": "stripe", "mode": "slow", "delay_seconds": 99}), 422
    )
    assert client.delete(FAULTS, headers=headers).get_json()["rules"] == []


def test_rules_are_shared_through_redis(make_app: Callable[..., Flask], redis_url: str) -> None:
    """With Redis, a rule added through one process's API reaches another's guarded calls, and so does clearing."""
    import uuid

    prefix = f"test-faults-{uuid.uuid4().hex[:8]}:"
    settings = {
        "FAULT_INJECTION_ENABLED": True,
        "REDIS_URL": redis_url,
        "CIRCUIT_BREAKER_STORAGE": "memory",
        "CIRCUIT_BREAKER_KEY_PREFIX": prefix,
        "RETRY_SLEEP_ENABLED": False,
    }
    first, second = make_app(**settings), make_app(**settings)
    client = first.test_client()
    headers = admin(client)
    added = client.post(FAULTS, headers=headers, json={"service": "email", "mode": "fail", "duration_seconds": 30})
    assert added.status_code == 201 and added.get_json()["scope"] == "shared"
    guarded = with_error_recovery("email", "send", max_retries=0)(upload)
    with second.app_context(), pytest.raises(APIError):
        guarded()
    assert second.extensions["fault_injection"].injected == {"email": 1}
    assert client.delete(FAULTS, headers=headers).status_code == 200
    time.sleep(1.1)  # the other process re-reads the shared rules at most once a second
    with second.app_context():
        assert guarded() == "stored"
