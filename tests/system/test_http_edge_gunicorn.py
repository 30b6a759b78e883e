"""The HTTP edge under real gunicorn: behind a forwarding proxy (#14 points 1-3) and at its size limits (point 7).

Users are played by sockets leaving from different loopback addresses (127.0.0.2, 127.0.0.3); the
proxy in tests/harness/peers/forwarding_proxy.py appends each one's address to X-Forwarded-For, as a load
balancer does.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.harness import Server, base_env, gunicorn, migrate
from tests.harness.peers.forwarding_proxy import ForwardingProxy, bound_session_address, loopback_alias_works

pytestmark = pytest.mark.slow

USER_A, USER_B = "127.0.0.2", "127.0.0.3"
LIMITED = "/api/errors/catalog"


def _user(source: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", bound_session_address(source))
    return session


def _lines(server: Server, name: str) -> list[dict[str, Any]]:
    path = server.log_dir / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _wait_for(server: Server, name: str, predicate: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The lines of one log that match, once at least one does (the workers write them in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in _lines(server, name) if predicate(line)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@contextmanager
def _behind_proxy(tmp_path: Path, extra: dict[str, str], workers: int = 2) -> Iterator[tuple[Server, ForwardingProxy]]:
    env = base_env(tmp_path, {"RATELIMIT_ENABLED": "true", "LOG_LEVEL": "INFO", **extra})
    migrate(env)
    with gunicorn(env, workers=workers, threads=2, ready_path="/healthz") as server:
        proxy = ForwardingProxy(server.url("")).start()
        try:
            yield server, proxy
        finally:
            proxy.stop()


def test_point1_and_2_trusted_proxy_names_the_real_client_and_probes_are_never_limited(
    tmp_path: Path, redis_url: str
) -> None:
    """TRUSTED_PROXIES=1: one bucket per real client, a spoofed X-Forwarded-For changes nothing, logs name them."""
    if not loopback_alias_works(USER_B):
        pytest.fail("127.0.0.3 must be usable as a source address (Linux routes all of 127/8 to lo)")
    extra = {
        "TRUSTED_PROXIES": "1",
        "REDIS_URL": redis_url,  # shared limits: the two workers count one bucket
        "RATELIMIT_KEY_PREFIX": f"edge-{uuid.uuid4().hex}",
        "RATELIMIT_DEFAULT": "5 per minute",
    }
    with _behind_proxy(tmp_path, extra) as (server, proxy):
        a, b = _user(USER_A), _user(USER_B)
        assert [a.get(proxy.url + LIMITED, timeout=10).status_code for _ in range(5)] == [200] * 5
        limited = a.get(proxy.url + LIMITED, timeout=10)
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "RATE_LIMITED"
        # A client cannot pick its own address: what it puts before the proxy's hop is ignored.
        for spoof in ("203.0.113.9", "203.0.113.9, 198.51.100.7", USER_B):
            spoofed = a.get(
                proxy.url + LIMITED, headers={"X-Forwarded-For": spoof, "X-Request-ID": "spoof"}, timeout=10
            )
            assert spoofed.status_code == 429, spoof
        # Another user behind the same balancer has a bucket of its own.
        assert b.get(proxy.url + LIMITED, timeout=10).status_code == 200
        # Point 2: the balancer's probes and the metrics scrape are never limited (5 a minute is the default here).
        for path in ("/healthz", "/readyz", "/metrics"):
            assert {a.get(proxy.url + path, timeout=10).status_code for _ in range(12)} == {200}, path
        remote_a = _wait_for(server, "performance.log", lambda r: r.get("request_id") == "spoof")
        assert {r["remote_addr"] for r in remote_a} == {USER_A}
        security = _wait_for(server, "security.log", lambda r: r.get("event_type") == "rate_limit_exceeded")
        assert security and {r["remote_addr"] for r in security} == {USER_A}
        served = [r for r in _lines(server, "performance.log") if r.get("metric") == "request"]
        assert {r["remote_addr"] for r in served} >= {USER_A, USER_B}
        assert "203.0.113.9" not in {r["remote_addr"] for r in served}
    assert not [r for r in _lines(server, "app.log") if r.get("event_type") == "rate_limits_per_process"]


def test_point1_and_3_without_trusted_proxies_headers_are_ignored_and_per_process_limits_warn_once(
    tmp_path: Path,
) -> None:
    """TRUSTED_PROXIES=0 (default): the balancer is the client; two workers without Redis warn once at start."""
    with _behind_proxy(tmp_path, {"RATELIMIT_DEFAULT": "1000 per minute"}) as (server, proxy):
        a = _user(USER_A)
        assert a.get(proxy.url + LIMITED, headers={"X-Request-ID": "via-proxy"}, timeout=10).status_code == 200
        direct = requests.get(
            server.url(LIMITED), headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "direct"}, timeout=10
        )
        assert direct.status_code == 200
        via_proxy = _wait_for(server, "performance.log", lambda r: r.get("request_id") == "via-proxy")
        direct_lines = _wait_for(server, "performance.log", lambda r: r.get("request_id") == "direct")
        assert {r["remote_addr"] for r in via_proxy} == {"127.0.0.1"}  # the balancer's address, as configured
        assert {r["remote_addr"] for r in direct_lines} == {"127.0.0.1"}  # not the forged header
        warnings = _wait_for(server, "app.log", lambda r: r.get("event_type") == "rate_limits_per_process")
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "WARNING" and "2 processes" in warnings[0]["message"]
    assert "REDIS_URL" in warnings[0]["message"]


def _raw(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (requests would refuse a NUL or fold headers) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def _get(path: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_point7_oversized_requests_get_the_envelope_from_the_app_under_gunicorn(tmp_path: Path) -> None:
    """A 5,000-byte URL, a 9 KB header and 110 headers reach the app and get its JSON; what gunicorn keeps is named."""
    env = base_env(tmp_path, {"LOG_LEVEL": "INFO"})
    migrate(env)
    cases = {
        "url": (_get("/api/errors/catalog?pad=" + "x" * 5000), 414, "REQUEST_URI_TOO_LONG"),
        "header": (_get("/healthz", [("X-Big", "y" * 9 * 1024)]), 431, "REQUEST_HEADER_FIELDS_TOO_LARGE"),
        "headers": (_get("/healthz", [(f"X-H{n}", "1") for n in range(110)]), 431, "REQUEST_HEADER_FIELDS_TOO_LARGE"),
    }
    with gunicorn(env, workers=1, threads=2, ready_path="/healthz") as server:
        for name, (request, status, code) in cases.items():
            got, headers, body = _raw(server, request)
            assert got == status, (name, body[:300])
            assert headers["content-type"] == "application/json", name
            error = json.loads(body)["error"]
            assert error["code"] == code and error["request_id"] == headers["x-request-id"], name
        deep = requests.post(
            server.url("/api/auth/login"), data=b"[" * 100_000, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert deep.status_code == 400 and deep.json()["error"]["code"] == "MALFORMED_JSON"
        # Left to gunicorn (README, "What gunicorn refuses"): bytes that are not HTTP never reach the app.
        nul, headers, _ = _raw(server, _get("/healthz", [("X-Nul", "a\x00b")]))
        assert nul == 400 and "x-request-id" not in headers
        served = _wait_for(server, "performance.log", lambda r: r.get("status") in (414, 431))
    assert sorted(r["status"] for r in served if r.get("metric") == "request") == [414, 431, 431]
