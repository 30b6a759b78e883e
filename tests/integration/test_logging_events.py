"""Context on every line, the automatic security and performance events, and the seed's helpers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flask import Flask

from backend.app.auth.decorators import login_required
from backend.logging_config import (
    CONTEXT_FIELDS,
    configure_logging,
    flush_logs,
    log_context,
    log_performance_metric,
    log_security_event,
)
from config import load_config
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log, register

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SPEC_FIELDS = ("timestamp", "level", "logger", "message", *CONTEXT_FIELDS)


def test_every_line_of_a_request_carries_its_context(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    @app.get("/_ctx")
    @login_required
    def ctx() -> dict[str, Any]:
        logging.getLogger("tests.ctx").info("inside the view")
        logging.getLogger("tests.ctx").error("an error inside the view")
        return {}

    client = app.test_client()
    token = login(client)["access_token"]
    response = client.get("/_ctx", headers={**bearer(token), "traceparent": TRACEPARENT, "X-Request-ID": "req-ctx-1"})
    assert response.status_code == 200
    ours = [
        r
        for name in ("app.log", "errors.log", "performance.log")
        for r in read_log(app, name)
        if r["request_id"] == "req-ctx-1"
    ]
    assert {r["logger"] for r in ours} == {"tests.ctx", "oriel.performance"}
    assert len(ours) == 4  # info + error in app.log, the error again in errors.log, the request line
    user_id = next(r for r in read_log(app, "security.log") if r["event_type"] == "login_succeeded")["user_id"]
    for record in ours:
        assert all(field in record for field in SPEC_FIELDS)
        assert record["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert record["user_id"] == user_id
        assert (record["method"], record["path"], record["endpoint"]) == ("GET", "/_ctx", "ctx")
        assert record["remote_addr"] == "127.0.0.1"
        assert record["level"] in ("INFO", "ERROR") and record["timestamp"].startswith("20")


def test_context_does_not_leak_between_requests(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    token = login(client)["access_token"]
    client.get("/api/me", headers={**bearer(token), "X-Request-ID": "req-a"})
    client.get("/api/errors/catalog", headers={"X-Request-ID": "req-b"})
    logging.getLogger("tests.ctx").info("outside any request")
    perf = {r["request_id"]: r for r in read_log(app, "performance.log")}
    assert perf["req-a"]["user_id"] is not None
    assert perf["req-b"]["user_id"] is None and perf["req-b"]["endpoint"] == "api.catalog"
    outside = next(r for r in read_log(app, "app.log") if r["message"] == "outside any request")
    assert all(outside[f] is None for f in CONTEXT_FIELDS)


def test_job_workers_log_with_job_id_in_their_own_threads(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    def job(n: int) -> None:
        with log_context(job_id=f"job-{n}", user_id=n):
            logging.getLogger("tests.jobs").info("rendering %s", n)
            time.sleep(0.01)  # overlap with the other jobs: contextvars must keep them apart
            logging.getLogger("tests.jobs").error("render %s failed", n)
        logging.getLogger("tests.jobs").info("after job %s", n)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(job, range(8)))
    lines = [r for r in read_log(app, "app.log") if r["logger"] == "tests.jobs"]
    for n in range(8):
        mine = [r for r in lines if r["message"] in (f"rendering {n}", f"render {n} failed")]
        assert len(mine) == 2
        assert all(r["job_id"] == f"job-{n}" and r["user_id"] == n and r["request_id"] is None for r in mine)
    assert all(r["job_id"] is None for r in lines if r["message"].startswith("after job"))
    assert len([r for r in read_log(app, "errors.log") if r["logger"] == "tests.jobs"]) == 8


def test_security_log_gets_every_automatic_event(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_LOGIN="3 per minute")
    client = app.test_client()
    token = login(client)["access_token"]  # register + login_succeeded
    client.post("/api/auth/login", json={"email": "user@example.com", "password": "wrong-password-1"})
    client.get("/api/me")  # no token
    client.get("/api/me", headers=bearer("not.a.jwt"))
    client.get("/admin/api/monitoring/health/check", headers=bearer(token))  # not an admin
    client.get("/api/errors/catalog", headers={"X-Request-ID": "bad id with spaces"})
    statuses = [
        client.post("/api/auth/login", json={"email": "user@example.com", "password": "x" * 12}).status_code
        for _ in range(3)
    ]
    assert 429 in statuses
    events = [r["event_type"] for r in read_log(app, "security.log")]
    for expected in (
        "account_created",
        "login_succeeded",
        "login_failed",
        "token_rejected",
        "authorization_denied",
        "request_id_rejected",
        "rate_limit_exceeded",
    ):
        assert expected in events, expected
    rejected = [r for r in read_log(app, "security.log") if r["event_type"] == "token_rejected"]
    assert {r["code"] for r in rejected} >= {"TOKEN_MISSING", "TOKEN_INVALID"}
    failed = next(r for r in read_log(app, "security.log") if r["event_type"] == "login_failed")
    assert failed["level"] == "WARNING" and failed["email"] == "user@example.com"


def test_performance_log_gets_one_line_per_request_and_a_slow_warning(make_app: Callable[..., Flask]) -> None:
    app = make_app(SLOW_REQUEST_MS=50)

    @app.get("/_slow")
    def slow() -> dict[str, Any]:
        time.sleep(0.08)
        return {}

    client = app.test_client()
    for path in ("/api/errors/catalog", "/api/me", "/nope", "/_slow"):
        client.get(path)
    lines = read_log(app, "performance.log")
    requests = [r for r in lines if r["metric"] == "request"]
    assert [(r["path"], r["status"]) for r in requests] == [
        ("/api/errors/catalog", 200),
        ("/api/me", 401),
        ("/nope", 404),
        ("/_slow", 200),
    ]
    assert all(r["unit"] == "ms" and r["value"] >= 0 and r["level"] == "INFO" for r in requests)
    assert requests[0]["endpoint"] == "api.catalog" and "headers" not in requests[0]
    assert requests[1]["headers"]["User-Agent"].startswith("Werkzeug")
    slow_lines = [r for r in lines if r["metric"] == "slow_request"]
    assert len(slow_lines) == 1
    assert slow_lines[0]["path"] == "/_slow" and slow_lines[0]["level"] == "WARNING"
    assert slow_lines[0]["value"] >= 80 and slow_lines[0]["threshold_ms"] == 50


def test_request_logging_can_be_switched_off_but_slow_requests_still_warn(make_app: Callable[..., Flask]) -> None:
    app = make_app(REQUEST_LOGGING_ENABLED=False, SLOW_REQUEST_MS=30)

    @app.get("/_slow")
    def slow() -> dict[str, Any]:
        time.sleep(0.05)
        return {}

    client = app.test_client()
    client.get("/api/errors/catalog")
    client.get("/_slow")
    assert [r["metric"] for r in read_log(app, "performance.log")] == ["slow_request"]


def test_seed_helpers_keep_their_signatures(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    log_security_event("failed_login", "Multiple failed login attempts", user_id=7, ip_address="10.0.0.9")
    log_performance_metric("video_render_time", 1234.5, video_length=3.0, file_size=2048)
    log_performance_metric("stripe_call", 88.0, service="stripe", operation="create_payment_intent", attempts=2)
    sec = read_log(app, "security.log")[-1]
    assert (sec["event_type"], sec["message"], sec["user_id"], sec["ip_address"]) == (
        "failed_login",
        "Multiple failed login attempts",
        7,
        "10.0.0.9",
    )
    perf = read_log(app, "performance.log")
    assert perf[-2]["metric"] == "video_render_time" and perf[-2]["value"] == 1234.5
    assert (perf[-2]["video_length"], perf[-2]["file_size"]) == (3.0, 2048)
    assert perf[-1]["attempts"] == 2 and perf[-1]["service"] == "stripe"
    # Security and performance lines stay out of app.log; errors.log gets errors from every logger.
    assert not [r for r in read_log(app, "app.log") if r["logger"].startswith("oriel.")]


def test_log_level_filters_and_files_route_by_level(make_app: Callable[..., Flask]) -> None:
    app = make_app(LOG_LEVEL="WARNING")
    log = logging.getLogger("tests.levels")
    log.info("quiet")
    log.warning("loud")
    log.critical("louder")
    app_lines = [r["message"] for r in read_log(app, "app.log") if r["logger"] == "tests.levels"]
    assert app_lines == ["loud", "louder"]
    assert [r["message"] for r in read_log(app, "errors.log") if r["logger"] == "tests.levels"] == ["louder"]


def test_environment_settings_reach_the_config() -> None:
    cfg = load_config(
        {
            "FLASK_ENV": "development",
            "LOG_DIR": "/tmp/somewhere",
            "LOG_LEVEL": "debug",
            "LOG_MAX_BYTES": "2048",
            "LOG_BACKUP_COUNT": "3",
            "SLOW_REQUEST_MS": "250",
            "REQUEST_LOGGING_ENABLED": "false",
        }
    )
    assert (cfg.LOG_DIR, cfg.LOG_LEVEL, cfg.LOG_MAX_BYTES, cfg.LOG_BACKUP_COUNT) == ("/tmp/somewhere", "DEBUG", 2048, 3)
    assert (cfg.SLOW_REQUEST_MS, cfg.REQUEST_LOGGING_ENABLED, cfg.LOG_CONSOLE) == (250, False, True)


def test_size_rotation_keeps_backup_count_files(tmp_path: Path) -> None:
    configure_logging(log_dir=tmp_path, level="INFO", max_bytes=4096, backup_count=3)
    log = logging.getLogger("tests.rotation")
    for n in range(400):
        log.info("line %s %s", n, "z" * 60)
        if n % 20 == 0:
            flush_logs()
    flush_logs()
    names = sorted(p.name for p in tmp_path.glob("app.log*"))
    assert names == ["app.log", "app.log.1", "app.log.2", "app.log.3"]
    assert all(p.stat().st_size < 4096 + 256 * 100 for p in tmp_path.glob("app.log*"))


def test_logging_calls_from_many_threads_all_arrive(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    barrier = threading.Barrier(8)

    def spam(n: int) -> None:
        barrier.wait()
        for i in range(500):
            logging.getLogger("tests.threads").info("t%s-%s", n, i)

    threads = [threading.Thread(target=spam, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [r["message"] for r in read_log(app, "app.log") if r["logger"] == "tests.threads"]
    assert sorted(got) == sorted(f"t{n}-{i}" for n in range(8) for i in range(500))


def test_admin_health_shows_ok_logs(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    register(client, ADMIN_EMAIL, "admin-password-123")
    token = login(client, ADMIN_EMAIL, "admin-password-123")["access_token"]
    body = client.get("/admin/api/monitoring/health/check", headers=bearer(token)).get_json()
    assert body["checks"]["logs"] == "ok"


def _security_lines(app: Flask, event_type: str) -> list[dict[str, Any]]:
    flush_logs()
    return [r for r in read_log(app, "security.log") if r.get("event_type") == event_type]


def test_a_structured_event_reads_the_same_from_the_queue_fast_path_and_through_other_handlers(
    make_app: Callable[..., Flask],
) -> None:
    # With the queue as the only destination the event skips makeRecord and the handler chain; with
    # any other handler attached it takes the standard path, and that handler gets the record too.
    app = make_app()
    headers = {"Authorization": "Bearer sk_live_abcdef0123456789", "User-Agent": "t"}
    fields = {"code": "X", "headers": headers, "note": "line one\nline two", "password": "hunter2hunter2"}
    with app.test_request_context("/p", headers={"X-Request-ID": "same-either-way"}):
        app.preprocess_request()
        log_security_event("fast_path", "an event", **fields)
        seen: list[logging.LogRecord] = []
        other = logging.Handler()
        other.emit = seen.append  # type: ignore[method-assign]
        logging.getLogger("oriel.security").addHandler(other)
        try:
            log_security_event("standard_path", "an event", **fields)
        finally:
            logging.getLogger("oriel.security").removeHandler(other)
    headers["User-Agent"] = "changed after the call"  # what was logged was frozen when logged
    assert [r.getMessage() for r in seen] == ["an event"]
    (fast,) = _security_lines(app, "fast_path")
    (standard,) = _security_lines(app, "standard_path")
    for line in (fast, standard):
        assert line["headers"] == {"Authorization": "[REDACTED]", "User-Agent": "t"}
        assert line["note"] == "line one\\nline two" and line["password"] == "[REDACTED]"
        assert line["request_id"] == "same-either-way" and line["path"] == "/p"
    drop = {"timestamp", "event_type"}
    assert {k: v for k, v in fast.items() if k not in drop} == {k: v for k, v in standard.items() if k not in drop}
    assert list(fast) == list(standard)  # same fields, same order
