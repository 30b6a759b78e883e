"""A flood of rejected requests does not amplify into log lines and database rows (#14 point 4), and logins
are throttled per account from any address (point 8).

The flood benchmark (`make bench`, bench/bench_flood.py) measures the same under gunicorn: lines, bytes and
rows written per rejected request, before and after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.edge.rejection_log import OVERFLOW_CLIENT, RejectionLog, flush_rejections
from backend.app.extensions import db
from backend.app.models import ErrorCodeMinute, ErrorEvent, ErrorGroup
from backend.app.monitoring import flush_error_stats
from tests.harness.app import bearer, read_log, register
from tests.harness.contract import assert_error


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log(interval: float = 10.0, max_keys: int = 100) -> tuple[RejectionLog, Clock, list[dict[str, Any]]]:
    clock, lines = Clock(), []

    def write(event_type: str, message: str, **fields: Any) -> None:
        lines.append({"event_type": event_type, "message": message, **fields})

    return RejectionLog(interval=interval, max_keys=max_keys, clock=clock, write=write), clock, lines


def test_point4_first_rejection_at_once_then_one_line_per_interval_with_exact_counts() -> None:
    log, clock, lines = _log()
    for _ in range(250):
        log.record("rate_limit_exceeded", "Rate limit exceeded", ("10.0.0.1", "5 per 1 minute"), remote_addr="10.0.0.1")
        clock.now += 0.1  # 25 s of rejections, 10 a second
        log.flush()
    log.flush(everything=True)
    assert lines[0]["count"] == 1 and lines[0]["aggregated"] is False
    assert all(line["aggregated"] for line in lines[1:])
    assert sum(line["count"] for line in lines) == 250
    assert len(lines) == 4  # the first, then one per 10 s (25 s) and the remainder at the end
    assert all(line["remote_addr"] == "10.0.0.1" for line in lines)
    assert all(line["interval_seconds"] == 10.0 for line in lines[1:])
    assert lines[1]["first_at"] <= lines[1]["last_at"]


def test_point4_keys_are_separate_forgotten_when_quiet_and_bounded() -> None:
    log, clock, lines = _log(max_keys=2)
    for client in ("a", "b", "c", "d"):
        log.record("rate_limit_exceeded", "limited", (client, "x"), remote_addr=client)
        log.record("rate_limit_exceeded", "limited", (client, "x"), remote_addr=client)
    # a and b are tracked; c and d share the overflow key, counted, never dropped.
    assert log.tracked == 3
    log.flush(everything=True)
    assert sum(line["count"] for line in lines) == 8
    assert {line["remote_addr"] for line in lines} == {"a", "b", OVERFLOW_CLIENT}
    clock.now += 11
    log.flush()
    assert log.tracked == 0  # quiet for an interval: forgotten
    log.record("rate_limit_exceeded", "limited", ("a", "x"), remote_addr="a")
    assert lines[-1]["count"] == 1 and lines[-1]["aggregated"] is False  # written at once again
    log.after_fork()
    assert log.tracked == 0 and log.flush(everything=True) == 0  # a forked child writes nothing of its parent's


def test_point4_a_flood_of_429s_costs_bounded_lines_and_rows(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_DEFAULT="5 per minute", ERROR_EVENT_SAMPLE_PER_MINUTE=10)
    client = app.test_client()
    statuses = [client.get("/api/errors/catalog").status_code for _ in range(105)]
    rejected = statuses.count(429)
    assert statuses[:5] == [200] * 5 and rejected == 100
    first = [r for r in read_log(app, "security.log") if r["event_type"] == "rate_limit_exceeded"]
    assert [line["count"] for line in first] == [1]  # the first at once; the rest wait for the interval
    flush_rejections(app)
    flush_error_stats(app)
    security = [r for r in read_log(app, "security.log") if r["event_type"] == "rate_limit_exceeded"]
    assert len(security) == 2 and sum(line["count"] for line in security) == rejected
    assert security[1]["limit"] == "5 per 1 minute" and security[1]["endpoint"] == "api.catalog"
    # No duplicate line from flask-limiter; the access log keeps its line per request.
    assert not [r for r in read_log(app, "app.log") if r["logger"] == "flask-limiter"]
    access = [r for r in read_log(app, "performance.log") if r.get("metric") == "request"]
    assert len(access) == 105 and sum(1 for r in access if r["status"] == 429) == rejected
    with app.app_context():
        rows = db.session.scalar(select(func.count()).select_from(ErrorEvent).where(ErrorEvent.code == "RATE_LIMITED"))
        group = db.session.scalar(select(func.sum(ErrorGroup.count)).where(ErrorGroup.code == "RATE_LIMITED"))
        rollup = db.session.scalar(
            select(func.sum(ErrorCodeMinute.count)).where(ErrorCodeMinute.code == "RATE_LIMITED")
        )
    assert rows <= 20  # 10 a minute (a flood crossing a minute boundary keeps 10 of each)
    assert group == rollup == rejected  # every 429 is counted


def test_point4_404_and_401_floods_are_bounded_the_same_way(make_app: Callable[..., Flask]) -> None:
    app = make_app(ERROR_EVENT_SAMPLE_PER_MINUTE=10)
    client = app.test_client()
    for _ in range(60):
        assert client.get("/no/such/page").status_code == 404
        assert client.get("/api/me", headers=bearer("not.a.token")).status_code == 401
    flush_rejections(app)
    flush_error_stats(app)
    tokens = [r for r in read_log(app, "security.log") if r["event_type"] == "token_rejected"]
    assert len(tokens) <= 3 and sum(line["count"] for line in tokens) == 60
    with app.app_context():
        for code in ("NOT_FOUND", "TOKEN_INVALID"):
            rows = db.session.scalar(select(func.count()).select_from(ErrorEvent).where(ErrorEvent.code == code))
            counted = db.session.scalar(select(func.sum(ErrorGroup.count)).where(ErrorGroup.code == code))
            assert rows <= 20 and counted == 60, code
    stats = app.extensions["error_stats"].status()
    assert stats["sampled_out"] >= 80


def test_point4_server_errors_keep_every_row(make_app: Callable[..., Flask]) -> None:
    app = make_app(ERROR_EVENT_SAMPLE_PER_MINUTE=2)

    @app.get("/_crash")
    def crash() -> None:
        raise ZeroDivisionError("boom")

    client = app.test_client()
    for _ in range(12):
        assert client.get("/_crash").status_code == 500
    flush_error_stats(app)
    with app.app_context():
        assert (
            db.session.scalar(select(func.count()).select_from(ErrorEvent).where(ErrorEvent.code == "INTERNAL_ERROR"))
            == 12
        )


def _login(app: Flask, email: str, password: str, address: str) -> Any:
    return app.test_client().post(
        "/api/auth/login", json={"email": email, "password": password}, environ_base={"REMOTE_ADDR": address}
    )


def test_point8_failed_logins_are_throttled_per_account_from_any_address(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_LOGIN_ACCOUNT="3 per minute")
    register(app.test_client(), "victim@example.com", "the-right-password")
    register(app.test_client(), "bystander@example.com", "the-right-password")
    # Three addresses, one guess each: under every per-address limit, but the account's own limit is reached.
    statuses = [_login(app, "Victim@Example.com", "guess", f"10.0.0.{n}").status_code for n in range(1, 4)]
    assert statuses == [401, 401, 401]
    error = assert_error(_login(app, "victim@example.com", "guess", "10.0.0.9"), 429, "RATE_LIMITED")
    assert error["retry_after"] >= 1
    # Even the right password waits out the backoff; other accounts are untouched.
    assert _login(app, "victim@example.com", "the-right-password", "10.0.0.10").status_code == 429
    assert _login(app, "bystander@example.com", "the-right-password", "10.0.0.9").status_code == 200
    flush_rejections(app)
    throttled = [r for r in read_log(app, "security.log") if r["event_type"] == "login_throttled"]
    assert sum(line["count"] for line in throttled) == 2
    assert {line["account"] for line in throttled} == {"victim@example.com"}
    assert {line["remote_addr"] for line in throttled} <= {"10.0.0.9", "10.0.0.10"}


def test_point8_successful_and_malformed_logins_do_not_count_against_the_account(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(RATELIMIT_LOGIN_ACCOUNT="2 per minute", RATELIMIT_LOGIN="100 per minute")
    register(app.test_client(), "user@example.com", "the-right-password")
    for n in range(5):
        assert _login(app, "user@example.com", "the-right-password", f"10.1.0.{n}").status_code == 200
    client = app.test_client()
    for body in (b"[" * 10_000, b"not json", b'{"email": 5}'):
        response = client.post("/api/auth/login", data=body, headers={"Content-Type": "application/json"})
        assert response.status_code in (400, 422)
    assert _login(app, "user@example.com", "wrong", "10.1.0.9").status_code == 401
    assert _login(app, "user@example.com", "wrong", "10.1.0.9").status_code == 401
    assert _login(app, "user@example.com", "wrong", "10.1.0.9").status_code == 429


@pytest.mark.parametrize("level", [logging.INFO])
def test_point4_flask_limiter_logger_is_quiet_at_info(app: Flask, level: int) -> None:
    assert not logging.getLogger("flask-limiter").isEnabledFor(level)
    assert logging.getLogger("flask-limiter").isEnabledFor(logging.WARNING)  # its storage errors still show
