"""`@with_error_recovery` through the real app: fail-fast 503s, fallbacks, translation, logs, Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import stripe
from flask import Flask, jsonify

from backend.app.errors import APIError, ExternalServiceError, PaymentError, StorageError
from backend.app.redis_client import make_redis_client
from backend.app.resilience.breaker_redis import RedisBreakerStore
from backend.app.resilience.state import reset_default_resilience
from backend.app.utils.error_recovery import (  # the seed's path, as a developer imports it
    CircuitOpenError,
    RecoveryEvent,
    current_resilience,
    degraded_services,
    get_breaker,
    with_error_recovery,
)
from tests.harness.app import read_log
from tests.harness.contract import assert_error

FAST = {"RETRY_SLEEP_ENABLED": False}


class Dependency:
    """A stand-in for an SDK call whose behaviour the test scripts: a list of errors, then results."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.always: BaseException | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((args, kwargs))
        if self.always is not None:
            raise self.always
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_an_open_breaker_answers_503_circuit_open_with_retry_after_through_the_app(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(**FAST, CIRCUIT_BREAKERS={"stripe": {"recovery_timeout": 45}})
    dep = Dependency()
    dep.always = stripe.APIConnectionError("Could not connect to Stripe")

    @with_error_recovery("stripe", "create_session", max_retries=0)
    def create_session() -> str:
        return dep()

    app.add_url_rule("/test/pay", "test_pay", lambda: jsonify(result=create_session()), methods=["POST"])
    client = app.test_client()
    for _ in range(5):
        response = client.post("/test/pay")
        assert_error(response, 503, "EXTERNAL_SERVICE_UNAVAILABLE")
    assert len(dep.calls) == 5
    started = time.perf_counter()
    response = client.post("/test/pay")
    elapsed_ms = (time.perf_counter() - started) * 1000
    error = assert_error(response, 503, "CIRCUIT_OPEN")
    assert len(dep.calls) == 5  # the dependency was not called
    assert response.headers["Retry-After"] == "45" and error["retry_after"] == 45
    assert error["recoverable"] is True
    assert elapsed_ms < 250  # the < 5 ms figure is measured in bench/bench_breaker.py, not asserted here
    with app.app_context():
        assert get_breaker("stripe").snapshot()["state"] == "open"
    perf = [r for r in read_log(app, "performance.log") if r.get("metric") == "outbound_call"]
    assert [r["outcome"] for r in perf] == ["error"] * 5 + ["rejected"]
    assert {(r["service"], r["operation"], r["attempts"]) for r in perf[:5]} == {("stripe", "create_session", 1)}
    transitions = [r for r in read_log(app, "app.log") if r.get("breaker") == "stripe"]
    assert [(r["old_state"], r["new_state"], r["level"]) for r in transitions] == [("closed", "open", "WARNING")]


def test_a_fallback_serves_with_the_original_error_and_args_and_the_response_says_degraded(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(**FAST)
    seen: list[tuple[BaseException, tuple[Any, ...], dict[str, Any]]] = []

    def save_locally(exc: BaseException, name: str, *, data: bytes) -> str:
        seen.append((exc, (name,), {"data": data}))
        return f"local://{name}"

    outage = TimeoutError("GCS timed out")
    dep = Dependency(outage, outage, outage)

    @with_error_recovery("storage", "upload", max_retries=2, idempotent=True, fallback=save_locally)
    def upload(name: str, *, data: bytes) -> str:
        return dep(name, data=data)

    def view() -> Any:
        location = upload("a.wav", data=b"RIFF")
        return jsonify(location=location, degraded=bool(degraded_services()), services=degraded_services())

    app.add_url_rule("/test/upload", "test_upload", view, methods=["POST"])
    body = app.test_client().post("/test/upload").get_json()
    assert body == {"location": "local://a.wav", "degraded": True, "services": ["storage"]}
    assert len(dep.calls) == 3  # first attempt + 2 retries before falling back
    assert seen == [(outage, ("a.wav",), {"data": b"RIFF"})]
    with app.app_context():
        assert current_resilience().counters()["storage"]["fallback"] == 1
    warnings = [r for r in read_log(app, "app.log") if r.get("degraded") is True]
    assert warnings and warnings[0]["level"] == "WARNING" and warnings[0]["service"] == "storage"
    perf = [r for r in read_log(app, "performance.log") if r.get("metric") == "outbound_call"]
    assert [(r["outcome"], r["attempts"], r["error_kind"]) for r in perf] == [("fallback", 3, "transient")]
    # The next request is not degraded: the flag lives in the request.
    dep.errors.clear()
    assert app.test_client().post("/test/upload").get_json()["degraded"] is False


def test_without_a_fallback_unknown_sdk_errors_become_external_service_errors_raised_from_the_original(
    app: Flask,
) -> None:
    original = stripe.APIError("Stripe had a problem", http_status=500)

    @with_error_recovery("stripe", "refund", max_retries=0)
    def refund() -> None:
        raise original

    with app.app_context(), pytest.raises(ExternalServiceError) as info:
        refund()
    assert info.value.__cause__ is original
    assert info.value.details == {"service": "stripe", "operation": "refund", "reason": "transient"}


def test_an_adapter_translator_maps_sdk_errors_once(app: Flask) -> None:
    def translate(exc: BaseException) -> APIError:
        if isinstance(exc, stripe.CardError):
            return PaymentError("Your card was declined.", "PAYMENT_DECLINED", {"reason": exc.code}, recoverable=True)
        return ExternalServiceError()

    @with_error_recovery("stripe", "charge", max_retries=3, idempotent=True, translate=translate)
    def charge() -> None:
        raise stripe.CardError("Declined", None, "insufficient_funds", http_status=402)

    with app.app_context():
        for _ in range(10):
            with pytest.raises(PaymentError) as info:
                charge()
            assert info.value.details == {"reason": "insufficient_funds"}
            assert isinstance(info.value.__cause__, stripe.CardError)
        assert get_breaker("stripe").snapshot()["state"] == "closed"  # declines never trip the breaker
        assert get_breaker("stripe").snapshot()["calls_in_window"] == 10  # and were tried once each


def test_programming_errors_propagate_unchanged_and_become_a_plain_500(make_app: Callable[..., Flask]) -> None:
    app = make_app(**FAST)

    @with_error_recovery("email", "send", idempotent=True)
    def send() -> None:
        raise TypeError("send() got an unexpected keyword argument")

    app.add_url_rule("/test/send", "test_send", lambda: send(), methods=["POST"])
    assert_error(app.test_client().post("/test/send"), 500, "INTERNAL_ERROR")
    errors = [r for r in read_log(app, "errors.log") if r.get("exc_type") == "TypeError"]
    assert errors and "Traceback" in errors[0]["traceback"]


def test_retries_need_idempotency_or_an_idempotency_key(make_app: Callable[..., Flask]) -> None:
    app = make_app(**FAST)
    dep = Dependency()
    dep.always = TimeoutError()

    @with_error_recovery("stripe", "create_session", max_retries=3)
    def create(pack: str, idempotency_key: str | None = None) -> str:
        return dep(pack, idempotency_key=idempotency_key)

    with app.app_context():
        with pytest.raises(ExternalServiceError):
            create("small")
        assert len(dep.calls) == 1
        with pytest.raises(ExternalServiceError):
            create("small", idempotency_key=f"checkout-{uuid.uuid4()}")
        assert len(dep.calls) == 1 + 4
        keys = {kwargs["idempotency_key"] for _, kwargs in dep.calls[1:]}
        assert len(keys) == 1  # every retry reuses the caller's key


def test_throttled_calls_sleep_the_retry_after_through_the_decorator(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    slept: list[float] = []
    with app.app_context():
        current_resilience().sleep = slept.append
    throttled = stripe.RateLimitError("Too many", http_status=429, headers={"Retry-After": "3"})
    dep = Dependency(throttled, throttled)

    @with_error_recovery("stripe", "list_prices", max_retries=3, idempotent=True)
    def list_prices() -> str:
        return dep()

    with app.app_context():
        assert list_prices() == "done"
    assert slept == [3.0, 3.0]


def test_the_timeout_bounds_all_attempts_and_waits(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    throttled = stripe.RateLimitError("Too many", http_status=429, headers={"Retry-After": "30"})
    dep = Dependency(throttled)

    @with_error_recovery("stripe", "list_prices", max_retries=3, idempotent=True, timeout=10)
    def list_prices() -> str:
        return dep()

    with app.app_context(), pytest.raises(ExternalServiceError) as info:
        list_prices()
    assert len(dep.calls) == 1 and info.value.retry_after == 30


def test_admin_actions_go_to_security_log_and_transitions_to_app_log(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    with app.app_context():
        breaker = get_breaker("email")
        breaker.force_open(actor="admin@example.com")
        with pytest.raises(CircuitOpenError):
            breaker.acquire()
        breaker.reset(actor="admin@example.com")
    security = [r for r in read_log(app, "security.log") if r.get("breaker") == "email"]
    assert [(r["event_type"], r["actor"]) for r in security] == [
        ("circuit_breaker_force_open", "admin@example.com"),
        ("circuit_breaker_reset", "admin@example.com"),
    ]
    app_log = [(r["old_state"], r["new_state"]) for r in read_log(app, "app.log") if r.get("breaker") == "email"]
    assert app_log == [("closed", "forced_open"), ("forced_open", "closed")]


def test_recovery_listeners_receive_every_call_and_never_break_it(app: Flask) -> None:
    events: list[RecoveryEvent] = []

    def broken(_event: RecoveryEvent) -> None:
        raise RuntimeError("metrics backend down")

    @with_error_recovery("rendering", "render", max_retries=0)
    def render() -> str:
        return "video.mp4"

    with app.app_context():
        current_resilience().listeners.extend([events.append, broken])
        assert render() == "video.mp4"
    assert [(e.service, e.operation, e.outcome, e.attempts) for e in events] == [("rendering", "render", "ok", 1)]


def test_a_failing_fallback_propagates_its_own_translated_error(app: Flask) -> None:
    def broken_fallback(exc: BaseException) -> None:
        raise StorageError("Local storage is full too.")

    @with_error_recovery("storage", "upload", max_retries=0, fallback=broken_fallback)
    def upload() -> None:
        raise TimeoutError()

    with app.app_context(), pytest.raises(StorageError, match="full too"):
        upload()


def test_outside_an_app_context_a_process_default_is_used() -> None:
    reset_default_resilience()
    try:

        @with_error_recovery("email", "send", max_retries=2, idempotent=True)
        def send() -> str:
            return "sent"

        assert send() == "sent"
        assert current_resilience().breakers.get("email").snapshot()["calls_in_window"] == 1
    finally:
        reset_default_resilience()


@pytest.mark.redis
def test_with_redis_configured_breakers_are_shared_and_an_outage_is_reported(
    make_app: Callable[..., Flask], redis_url: str
) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    try:
        first = make_app(**FAST, REDIS_URL=redis_url, CIRCUIT_BREAKER_KEY_PREFIX=prefix)
        second = make_app(**FAST, REDIS_URL=redis_url, CIRCUIT_BREAKER_KEY_PREFIX=prefix)
        with first.app_context():
            get_breaker("storage").force_open(actor="admin@example.com")
        with second.app_context():
            snap = get_breaker("storage").snapshot()
            assert (snap["state"], snap["storage"]) == ("forced_open", "redis")
            get_breaker("storage").reset(actor="admin@example.com")
        with first.app_context():
            assert get_breaker("storage").snapshot()["state"] == "closed"
    finally:
        RedisBreakerStore(make_redis_client(redis_url), prefix=prefix).delete_all()

    down = make_app(**FAST, REDIS_URL="redis://127.0.0.1:1/0")

    @with_error_recovery("email", "send", max_retries=0)
    def send() -> str:
        return "sent"

    down.add_url_rule("/test/send", "test_send", lambda: jsonify(result=send()), methods=["POST"])
    started = time.perf_counter()
    assert down.test_client().post("/test/send").get_json() == {"result": "sent"}
    assert time.perf_counter() - started < 1.0
    with down.app_context():
        assert get_breaker("email").snapshot()["storage"] == "local-fallback"
