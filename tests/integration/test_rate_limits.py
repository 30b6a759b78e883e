"""Flask-Limiter: 429 in our envelope with retry_after, stricter on login, Redis-backed and Redis-outage-proof."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable

from flask import Flask

from tests.harness.app import read_log
from tests.harness.contract import assert_error

BAD_LOGIN = {"email": "nobody@example.com", "password": "wrong-password"}


def _exhaust_login(app: Flask, attempts: int) -> list[int]:
    client = app.test_client()
    return [client.post("/api/auth/login", json=BAD_LOGIN).status_code for _ in range(attempts)]


def test_login_is_limited_more_strictly_with_retry_after(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_LOGIN="3 per minute")
    statuses = _exhaust_login(app, 3)
    assert statuses == [401, 401, 401]
    response = app.test_client().post("/api/auth/login", json=BAD_LOGIN)
    error = assert_error(response, 429, "RATE_LIMITED")
    assert 1 <= error["retry_after"] <= 60
    assert int(response.headers["Retry-After"]) == error["retry_after"]
    assert error["recoverable"] is True
    # Other endpoints keep the (looser) default limit.
    assert app.test_client().get("/api/errors/catalog").status_code == 200
    hits = [line for line in read_log(app, "security.log") if line["event_type"] == "rate_limit_exceeded"]
    assert len(hits) == 1


def test_default_limit_applies_to_every_endpoint(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_DEFAULT="2 per minute")
    client = app.test_client()
    assert [client.get("/api/errors/catalog").status_code for _ in range(2)] == [200, 200]
    assert_error(client.get("/api/errors/catalog"), 429, "RATE_LIMITED")


def test_limits_are_shared_through_redis(make_app: Callable[..., Flask], redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    first = make_app(REDIS_URL=redis_url, RATELIMIT_LOGIN="2 per minute", RATELIMIT_KEY_PREFIX=prefix)
    _exhaust_login(first, 2)
    # A second app (another process in production) on the same Redis sees the same counter.
    second = make_app(REDIS_URL=redis_url, RATELIMIT_LOGIN="2 per minute", RATELIMIT_KEY_PREFIX=prefix)
    assert_error(second.test_client().post("/api/auth/login", json=BAD_LOGIN), 429, "RATE_LIMITED")


def test_redis_outage_falls_back_to_memory_and_keeps_serving(make_app: Callable[..., Flask]) -> None:
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0", RATELIMIT_LOGIN="2 per minute")
    client = app.test_client()
    started = time.monotonic()
    statuses = [client.post("/api/auth/login", json=BAD_LOGIN).status_code for _ in range(3)]
    elapsed = time.monotonic() - started
    assert statuses == [401, 401, 429]  # still limited, by the in-memory fallback
    assert client.get("/api/errors/catalog").status_code == 200
    assert elapsed < 5, f"a dead Redis must not stall requests ({elapsed:.1f}s)"


def test_point9_the_default_limit_covers_views_added_after_start_up(make_app: Callable[..., Flask]) -> None:
    """#14 point 9 moved the default limit off Flask-Limiter's hook (DefaultLimit): every view still gets it."""
    app = make_app(RATELIMIT_DEFAULT="2 per minute")

    @app.get("/_late")
    def late() -> dict[str, str]:
        return {"ok": "yes"}

    client = app.test_client()
    assert [client.get("/_late").status_code for _ in range(3)] == [200, 200, 429]
    error = assert_error(client.get("/_late"), 429, "RATE_LIMITED")
    assert error["details"] == {"limit": "2 per 1 minute"} and 1 <= error["retry_after"] <= 60
    # Views with their own limit keep it (Flask-Limiter's wrappers), independent of the default one.
    assert client.post("/api/auth/login", json=BAD_LOGIN).status_code == 401


def test_point9_the_default_limit_falls_back_to_memory_while_redis_is_down(make_app: Callable[..., Flask]) -> None:
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0", RATELIMIT_DEFAULT="3 per minute")
    client = app.test_client()
    started = time.monotonic()
    statuses = [client.get("/api/errors/catalog").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # still limited, in this process's memory
    assert time.monotonic() - started < 5, "a dead Redis must not stall requests"
    warnings = [r for r in read_log(app, "app.log") if "Rate limit storage unreachable" in r["message"]]
    assert len(warnings) == 1  # once per outage, not per request


def test_point9_the_default_limit_is_shared_through_redis(make_app: Callable[..., Flask], redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    first = make_app(REDIS_URL=redis_url, RATELIMIT_DEFAULT="2 per minute", RATELIMIT_KEY_PREFIX=prefix)
    assert [first.test_client().get("/api/errors/catalog").status_code for _ in range(2)] == [200, 200]
    second = make_app(REDIS_URL=redis_url, RATELIMIT_DEFAULT="2 per minute", RATELIMIT_KEY_PREFIX=prefix)
    assert_error(second.test_client().get("/api/errors/catalog"), 429, "RATE_LIMITED")
    # The status endpoint reads the same window the default limit counts in.
    status = second.test_client().get("/api/errors/rate-limit-status").get_json()
    assert status["enabled"] is True


def test_point9_flask_limiters_request_hooks_are_all_wrapped(make_app: Callable[..., Flask]) -> None:
    """Its before, after and teardown hooks skip the views DefaultLimit owns (found by owner, not by name)."""
    app = make_app()
    limiter = app.extensions["rate_limiter"]
    for registry in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
        for hook in registry.get(None, []):
            owner = (
                hook.args[0] if isinstance(hook, functools.partial) and hook.args else getattr(hook, "__self__", None)
            )
            assert owner is not limiter, hook  # every one of its hooks is behind the skipping wrapper
    wrapped = [
        h
        for r in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
        for h in r.get(None, [])
        if h.__name__ == "skipping"
    ]
    assert len(wrapped) == 2  # after_request (conditional deductions) and teardown; its before_request is gone


def test_point9_memory_limits_start_no_timer_thread_per_hit_and_are_swept(make_app: Callable[..., Flask]) -> None:
    """The in-memory storage is swept by one shared thread, not a new Timer thread every 10 ms of traffic."""
    from backend.app.edge.rate_limit_storage import SweptMemoryStorage, _sweeper

    app = make_app(RATELIMIT_DEFAULT="1000 per minute")
    storage = app.extensions["rate_limiter"].storage
    assert isinstance(storage, SweptMemoryStorage)
    client = app.test_client()
    first_timer = storage.timer  # the parent's one timer from its constructor
    for _ in range(30):
        assert client.get("/api/errors/catalog").status_code == 200
        time.sleep(0.012)  # longer than the parent's 10 ms timer: it would have started a new thread by now
    assert storage.timer is first_timer  # the override is in place: no new Timer was ever made
    assert _sweeper.thread is not None and _sweeper.thread.is_alive()
    deadline = time.monotonic() + 3
    while storage.sweeps == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert storage.sweeps >= 1


def test_point9_with_rate_limits_off_flask_limiter_has_no_request_hooks(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_ENABLED=False, RATELIMIT_LOGIN="1 per minute", RATELIMIT_DEFAULT="1 per minute")
    names = [
        h.__name__
        for r in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
        for h in r.get(None, [])
        if hasattr(h, "__name__")
    ]
    assert "skipping" not in names and "check" not in names
    client = app.test_client()
    assert {client.post("/api/auth/login", json=BAD_LOGIN).status_code for _ in range(3)} == {401}  # nothing limits
    assert {client.get("/api/errors/catalog").status_code for _ in range(3)} == {200}
