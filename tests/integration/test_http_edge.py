"""The HTTP edge in-process: trusted proxies, unlimited probes, the per-process warning, size and depth limits (#14).

The same behaviour under real gunicorn behind a forwarding proxy is in tests/system/test_http_edge_gunicorn.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask, request

from backend.app.edge.rate_limits import shared_storage_warning
from backend.app.edge.validation import MAX_JSON_DEPTH
from config import ConfigError, TestingConfig
from tests.harness.app import read_log
from tests.harness.contract import assert_error


def _edge_app(make_app: Callable[..., Flask], **settings: object) -> Flask:
    app = make_app(**settings)

    @app.get("/_edge")
    def edge() -> dict[str, object]:
        return {"remote_addr": request.remote_addr, "scheme": request.scheme}

    return app


def _seen(app: Flask, forwarded_for: str | None, proto: str | None = None) -> dict[str, object]:
    headers = {}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    if proto is not None:
        headers["X-Forwarded-Proto"] = proto
    response = app.test_client().get("/_edge", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert response.status_code == 200
    return response.get_json()


def test_point1_without_trusted_proxies_forwarded_headers_are_ignored(make_app: Callable[..., Flask]) -> None:
    app = _edge_app(make_app)
    assert _seen(app, "203.0.113.9", "https") == {"remote_addr": "10.0.0.1", "scheme": "http"}


def test_point1_trusted_proxies_take_the_client_from_the_last_hops_only(make_app: Callable[..., Flask]) -> None:
    one = _edge_app(make_app, TRUSTED_PROXIES=1)
    assert _seen(one, "192.0.2.5", "https") == {"remote_addr": "192.0.2.5", "scheme": "https"}
    # A client that sends its own X-Forwarded-For only adds entries before the proxy's hop.
    assert _seen(one, "203.0.113.9, 192.0.2.5")["remote_addr"] == "192.0.2.5"
    two = _edge_app(make_app, TRUSTED_PROXIES=2)
    assert _seen(two, "203.0.113.9, 192.0.2.5, 10.1.1.1")["remote_addr"] == "192.0.2.5"
    # Fewer hops than trusted proxies: werkzeug keeps the socket's peer rather than trust a forged entry.
    assert _seen(two, "192.0.2.5")["remote_addr"] == "10.0.0.1"


def test_point1_trusted_proxies_feed_the_rate_limit_key_and_the_log_lines(make_app: Callable[..., Flask]) -> None:
    app = make_app(TRUSTED_PROXIES=1, RATELIMIT_DEFAULT="2 per minute")
    client = app.test_client()

    def get(real: str, spoof: str = "") -> int:
        chain = f"{spoof}, {real}" if spoof else real
        headers = {"X-Forwarded-For": chain}
        return client.get("/api/errors/catalog", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code

    assert [get("192.0.2.5"), get("192.0.2.5")] == [200, 200]
    assert get("192.0.2.5", spoof="198.51.100.1") == 429
    assert get("192.0.2.6") == 200  # another client behind the same balancer
    lines = [r for r in read_log(app, "performance.log") if r.get("metric") == "request"]
    assert [r["remote_addr"] for r in lines] == ["192.0.2.5", "192.0.2.5", "192.0.2.5", "192.0.2.6"]
    security = [r for r in read_log(app, "security.log") if r["event_type"] == "rate_limit_exceeded"]
    assert [r["remote_addr"] for r in security] == ["192.0.2.5"]


def test_point1_trusted_proxies_is_read_and_checked() -> None:
    assert TestingConfig.from_env({"TRUSTED_PROXIES": "2"}).TRUSTED_PROXIES == 2
    assert TestingConfig.from_env({}).TRUSTED_PROXIES == 0
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        TestingConfig.from_env({"TRUSTED_PROXIES": "-1"})
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        TestingConfig.from_env({"TRUSTED_PROXIES": "one"})


def test_point2_probes_and_metrics_are_never_rate_limited(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_DEFAULT="3 per minute")
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert {client.get(path).status_code for _ in range(20)} == {200}, path
    # Everything else keeps the default limit.
    assert [client.get("/api/errors/catalog").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_point3_per_process_limits_are_named_only_when_they_multiply(make_app: Callable[..., Flask]) -> None:
    memory = make_app()
    message = shared_storage_warning(memory, 4)
    assert message is not None and "4 processes" in message and "4 times" in message and "REDIS_URL" in message
    assert shared_storage_warning(memory, 1) is None
    assert shared_storage_warning(make_app(RATELIMIT_ENABLED=False), 4) is None
    assert shared_storage_warning(make_app(REDIS_URL="redis://127.0.0.1:6379/0"), 4) is None


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/auth/register", "/api/errors/report", "/api/renders"])
def test_point7_deeply_nested_json_is_a_400_not_a_recursion_error(make_app: Callable[..., Flask], path: str) -> None:
    client = make_app().test_client()
    for body in (b"[" * 100_000, b'{"a":' * 50_000):
        response = client.post(path, data=body, headers={"Content-Type": "application/json"})
        if path == "/api/renders":  # a login is needed first: the depth limit must not turn a 401 into a 400
            assert_error(response, 401, "TOKEN_MISSING")
            continue
        if path == "/api/errors/report" and len(body) > 16 * 1024:
            assert_error(response, 413, "PAYLOAD_TOO_LARGE")
            continue
        error = assert_error(response, 400, "MALFORMED_JSON")
        assert error["details"] == {"max_depth": MAX_JSON_DEPTH}


def test_point7_depth_limit_is_exact_and_small_bodies_are_untouched(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()

    def register(depth: int) -> str:
        nested = "[" * (depth - 1) + "]" * (depth - 1)
        body = '{"email": "deep@example.com", "password": "correct-horse-battery", "x": ' + nested + "}"
        response = client.post("/api/auth/register", data=body, headers={"Content-Type": "application/json"})
        return response.get_json()["error"]["code"]

    assert register(MAX_JSON_DEPTH) == "VALIDATION_ERROR"  # parsed: the unknown field "x" is what is wrong
    assert register(MAX_JSON_DEPTH + 1) == "MALFORMED_JSON"
    report = client.post("/api/errors/report", data=b"[" * 5000, headers={"Content-Type": "application/json"})
    assert_error(report, 400, "MALFORMED_JSON")


def test_point7_url_and_header_limits_answer_in_the_envelope(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    error = assert_error(client.get("/api/errors/catalog?pad=" + "x" * 5000), 414, "REQUEST_URI_TOO_LONG")
    assert error["details"]["limit_bytes"] == 4096
    error = assert_error(client.get("/healthz", headers={"X-Big": "y" * 9000}), 431, "REQUEST_HEADER_FIELDS_TOO_LARGE")
    assert error["details"]["header"] == "X-BIG"
    many = {f"X-H{n}": "1" for n in range(110)}
    error = assert_error(client.get("/healthz", headers=many), 431, "REQUEST_HEADER_FIELDS_TOO_LARGE")
    assert error["details"]["limit_headers"] == 100
    assert client.get("/healthz", headers={f"X-H{n}": "1" for n in range(60)}).status_code == 200
    statuses = [r["status"] for r in read_log(app, "performance.log") if r.get("metric") == "request"]
    assert statuses == [414, 431, 431, 200]
