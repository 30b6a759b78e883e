"""Flask-Limiter: 429 in our envelope with retry_after, stricter on login, Redis-backed and Redis-outage-proof."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from flask import Flask

from tests.conftest import read_log
from tests.contract import assert_error

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
