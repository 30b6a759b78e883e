"""Security through the real stack (gunicorn, 2 workers, PostgreSQL, Redis, Stripe/SendGrid peers on loopback):
login brute force hits the rate limit and is logged; the client error report endpoint under abuse (size,
rate, malformed JSON, script in fields, stored sanitised); request-ID and header injection (CR/LF, huge
headers); canary secrets (SECRET_KEY, JWT secret, Stripe and SendGrid keys, the database password and a
user's password) found nowhere in any log file or any response of a realistic session.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.harness.app import ADMIN_EMAIL
from tests.harness.system import CANARIES, Answer, System, running_system

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

USER_PASSWORD = "canary-user-pw-Zq8#Lm3!"  # a user's password is a canary too
SEEN: list[Answer] = []  # every response of the module, scanned for canaries at the end


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The stack with rate limits on and every log line written (requests included)."""
    with running_system(
        tmp_path_factory.mktemp("security"),
        workers=2,
        threads=4,
        redis_db=9,
        extra={"REQUEST_LOGGING_ENABLED": "true", "FAULT_INJECTION_ENABLED": "true"},
    ) as running:
        yield running


def _call(system: System, *args: object, **kwargs: object) -> Answer:
    answer = system.call(*args, **kwargs)  # type: ignore[arg-type]
    SEEN.append(answer)
    return answer


def _reset_limits(system: System) -> None:
    client = redis.Redis.from_url(system.redis_url)
    for key in client.scan_iter("*LIMIT*"):
        client.delete(key)


def _raw_request(system: System, head: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are (no client library would send CR/LF in a header) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", system.server.port), timeout=timeout) as sock:
        sock.sendall(head)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _security_events(
    system: System, event_type: str, at_least: int = 1, timeout: float = 10.0
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in system.log_lines("security.log") if line.get("event_type") == event_type]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def _counted(system: System, event_type: str, at_least: int, timeout: float = 15.0) -> list[dict[str, object]]:
    """Lines of an aggregated security event once their counts add up to `at_least` (rejection_log.py)."""
    deadline = time.monotonic() + timeout
    while True:
        found = _security_events(system, event_type, 1, timeout=0)
        if sum(int(line.get("count", 1)) for line in found) >= at_least or time.monotonic() > deadline:  # type: ignore[call-overload]
            return found
        time.sleep(0.3)


def test_login_brute_force_hits_the_rate_limit_and_is_logged(system: System) -> None:
    _reset_limits(system)
    _call(system, "POST", "/api/auth/register", {"email": "target@example.com", "password": USER_PASSWORD})
    statuses = []
    for n in range(16):
        answer = _call(system, "POST", "/api/auth/login", {"email": "target@example.com", "password": f"guess-{n}-xx"})
        statuses.append(answer.status)
        if answer.status == 429:
            error = answer.json()["error"]
            assert error["code"] == "RATE_LIMITED" and int(answer.headers["Retry-After"]) >= 1
    # The account's own throttle (5 failures a minute, from any address) stops the guessing first.
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 11, statuses
    # Even the right password is refused while the limit holds: guessing cannot continue.
    right = _call(system, "POST", "/api/auth/login", {"email": "target@example.com", "password": USER_PASSWORD})
    assert right.status == 429
    failed = _security_events(system, "login_failed", 5)
    assert len(failed) >= 5
    # The per-address limit (10 a minute) holds across accounts.
    others = [
        _call(
            system, "POST", "/api/auth/login", {"email": f"other-{n}@example.com", "password": "wrong-guess-x"}
        ).status
        for n in range(12)
    ]
    assert others[-1] == 429 and set(others) == {401, 429}, others
    # Every 429 is in the aggregated lines' counts: the account's throttle (naming it) or the address limit.
    rejected = statuses.count(429) + 1 + others.count(429)
    throttled = _counted(system, "login_throttled", 5)
    assert all(line.get("account") == "target@example.com" for line in throttled), throttled[:2]
    throttled_count = sum(int(line["count"]) for line in throttled)  # type: ignore[call-overload]
    assert throttled_count >= 5  # guesses 6 to 10 broke only the account's limit
    limited = _counted(system, "rate_limit_exceeded", rejected - throttled_count)
    assert throttled_count + sum(int(line["count"]) for line in limited) == rejected  # type: ignore[call-overload]
    assert all(line.get("endpoint") == "auth.login" for line in limited), limited[:2]
    _reset_limits(system)


def test_error_report_endpoint_under_abuse(system: System) -> None:
    _reset_limits(system)
    url = "/api/errors/report"
    # Malformed JSON, wrong types, unknown fields, a body over the field limits: 4xx envelopes, nothing stored.
    for body, headers in [
        (b'{"message": "x",', {"Content-Type": "application/json"}),
        (b"\xff\xfe not json", {"Content-Type": "application/json"}),
        (b'{"message": 5}', {"Content-Type": "application/json"}),
        (b'{"message": "x", "admin": true}', {"Content-Type": "application/json"}),
        (json.dumps({"message": "x" * 5000}).encode(), {"Content-Type": "application/json"}),
        (
            json.dumps({"message": "x", "context": {f"k{i}": i for i in range(50)}}).encode(),
            {"Content-Type": "application/json"},
        ),
        (b"message=x", {"Content-Type": "application/x-www-form-urlencoded"}),
    ]:
        answer = _call(system, "POST", url, body=body, headers=headers)
        assert 400 <= answer.status < 500, (body[:60], answer.status)
        assert answer.json()["error"]["code"]
    # A body far over MAX_CONTENT_LENGTH is refused from its Content-Length, before it is read.
    huge = _raw_request(
        system,
        b"POST /api/errors/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 62914560\r\nConnection: close\r\n\r\n" + b'{"message": "' + b"A" * 65536,
    )
    assert huge.startswith(b"HTTP/1.1 413"), huge[:300]
    assert b'"code": "PAYLOAD_TOO_LARGE"' in huge or b"413" in huge
    _reset_limits(system)
    # Script and markup in every text field: accepted, stored sanitised.
    marker = uuid.uuid4().hex
    report = {
        "message": f"<script>alert('{marker}')</script><img src=x onerror=alert(1)>boom {marker}",
        "error_type": "<b>TypeError</b>",
        "stack": f"at <svg onload=alert(1)> (javascript:alert(1):1:2)\n{marker}",
        "url": "javascript:alert(document.cookie)",
        "user_agent": "Mozilla\r\nX-Injected: 1",
        "context": {"note": "<iframe src=//evil.example></iframe>"},
    }
    accepted = _call(system, "POST", url, report)
    assert accepted.status in {200, 201, 202}, accepted.body
    stored = _stored_client_text(system, marker)
    assert marker in stored
    for bad in ("<script", "<img", "onerror=", "<svg", "<iframe", "javascript:", "\r\n"):
        assert bad not in stored, (bad, stored[:500])
    # Rate: the report limit (30 per minute per address) holds across workers.
    statuses = [_call(system, "POST", url, {"message": f"flood {n}"}).status for n in range(40)]
    assert statuses.count(429) >= 9 and 429 in statuses[:31], statuses
    _reset_limits(system)


def _stored_client_text(system: System, marker: str, timeout: float = 15.0) -> str:
    """Everything stored for client-reported errors mentioning `marker` (the writer flushes asynchronously)."""
    url = system.database_url
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT row_to_json(e)::text FROM error_events e WHERE e.source = 'client'"
                " UNION ALL SELECT row_to_json(g)::text FROM error_groups g WHERE g.source = 'client'"
            ).fetchall()
        text = json.loads(json.dumps("\n".join(r[0] for r in rows)))
        if marker in text or time.monotonic() > deadline:
            return text.replace("\\r\\n", "\r\n")
        time.sleep(0.5)


def test_request_id_and_header_injection(system: System) -> None:
    # A CR/LF-laden request ID (sent raw; gunicorn refuses a bare CR/LF inside a header, which is fine too).
    evil = b"abc\r\nSet-Cookie: pwned=1"
    raw = _raw_request(
        system,
        b"GET /api/errors/catalog HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + evil + b"\r\nConnection: close\r\n\r\n",
    )
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    assert b"\r\nset-cookie: pwned" not in head.lower()
    # Invalid request IDs are replaced, never echoed; the replacement is logged as a security event.
    for bad in ["<script>alert(1)</script>", "a" * 500, "id with spaces", "%0d%0aX-Evil:%201", "../../etc/passwd"]:
        answer = _call(system, "GET", "/api/errors/catalog", headers={"X-Request-ID": bad})
        assert answer.status == 200
        rid = answer.headers["X-Request-ID"]
        assert rid != bad and len(rid) <= 128 and rid.isascii() and all(c.isalnum() or c in "-_.:" for c in rid)
    assert len(_security_events(system, "request_id_rejected", 5)) >= 5
    # A header whose value smuggles a CR/LF-forged log line: the log stays one JSON object per line.
    _raw_request(
        system,
        b'GET /api/nope HTTP/1.1\r\nHost: x\r\nUser-Agent: ua\\r\\n{"level": "CRITICAL", "forged": true}\r\n'
        b"Connection: close\r\n\r\n",
    )
    # Huge headers: refused (4xx), the server keeps serving.
    for head_bytes in (
        b"GET /api/errors/catalog HTTP/1.1\r\nHost: x\r\nX-Big: " + b"A" * 20000 + b"\r\nConnection: close\r\n\r\n",
        b"GET /api/errors/catalog HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"Connection: close\r\n\r\n",
        b"GET /api/errors/catalog HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + b"B" * 16000
        + b"\r\nConnection: close\r\n\r\n",
    ):
        answer = _raw_request(system, head_bytes)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
        assert 400 <= status < 500, answer[:200]
    assert _call(system, "GET", "/api/errors/catalog").status == 200
    time.sleep(1.0)
    for name in ("app.log", "errors.log", "security.log", "performance.log"):
        path = system.log_dir / name
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                parsed = json.loads(line)  # every line is one JSON object: nothing forged a second one
                assert parsed.get("forged") is not True


def test_canary_secrets_appear_in_no_log_and_no_response(system: System) -> None:
    """A realistic session: sign-up, login, profile, a payment, uploads, errors, admin reads, token abuse."""
    _reset_limits(system)
    email = "canary-user@example.com"
    _call(system, "POST", "/api/auth/register", {"email": email, "password": USER_PASSWORD})
    login = _call(system, "POST", "/api/auth/login", {"email": email, "password": USER_PASSWORD})
    assert login.status == 200, login.body
    tokens = login.json()
    user = {"Authorization": f"Bearer {tokens['access_token']}"}
    admin_login = _call(system, "POST", "/api/auth/register", {"email": ADMIN_EMAIL, "password": USER_PASSWORD})
    assert admin_login.status in {201, 409}
    system.promote_admin(ADMIN_EMAIL)
    admin_token = _call(system, "POST", "/api/auth/login", {"email": ADMIN_EMAIL, "password": USER_PASSWORD}).json()
    admin = {"Authorization": f"Bearer {admin_token['access_token']}"}
    # Wrong passwords (logged as failures), the password in odd places a careless logger would copy.
    _call(system, "POST", "/api/auth/login", {"email": email, "password": USER_PASSWORD + "x"})
    _call(system, "POST", "/api/auth/register", {"email": "not-an-email", "password": USER_PASSWORD})
    _call(system, "GET", f"/api/nope?password={USER_PASSWORD}&token={tokens['access_token']}")
    _call(
        system,
        "POST",
        "/api/auth/login",
        body=f'{{"email": "{email}", "password": "{USER_PASSWORD}"'.encode(),
        headers={"Content-Type": "application/json"},
    )
    _call(system, "GET", "/api/me", headers=user)
    _call(system, "GET", "/api/payments/credits", headers=user)
    checkout = _call(system, "POST", "/api/payments/checkout", {"pack": "starter"}, headers=user)
    assert checkout.status in {200, 201, 400, 422, 502, 503}, checkout.body
    _call(system, "POST", "/api/payments/checkout", {"pack": "nope"}, headers=user)
    _call(
        system,
        "POST",
        "/api/payments/webhook",
        {"type": "checkout.session.completed"},
        headers={"Stripe-Signature": "t=1,v1=deadbeef"},
    )
    _call(system, "POST", "/api/uploads", body=b"not multipart", headers={**user, "Content-Type": "text/plain"})
    _call(system, "GET", "/api/renders", headers=user)
    # A careless client reports its form state: the password arrives under a key that says what it is.
    _call(
        system,
        "POST",
        "/api/errors/report",
        {
            "message": "sign-in form failed",
            "url": f"http://127.0.0.1/login?password={USER_PASSWORD}",
            "context": {"password": USER_PASSWORD, "email": email},
        },
    )
    _call(system, "GET", "/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}x"})
    _call(system, "POST", "/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"})
    _call(system, "POST", "/api/auth/logout", headers=user)
    _call(system, "GET", "/api/me", headers=user)  # revoked now
    time.sleep(2.0)  # the error writers flush: the admin reads below must see this session's events
    for path in (
        "/admin/api/monitoring/errors/stats",
        "/admin/api/monitoring/logs/recent-errors",
        "/admin/api/monitoring/health/services",
        "/admin/api/monitoring/health/check",
        "/admin/api/monitoring/circuit-breakers",
        "/admin/api/monitoring/faults",
        "/admin/api/monitoring/alerts/configure",
        "/admin/api/monitoring/slo",
        "/admin/api/monitoring/dead-letters",
        "/api/errors/system-health",
        "/api/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        _call(system, "GET", path, headers=admin)
    # A dependency failing makes adapters raise (and log) exceptions that carry their configuration.
    _call(
        system,
        "POST",
        "/admin/api/monitoring/faults",
        {"service": "stripe", "mode": "status", "status": 401, "rate": 1.0, "duration_seconds": 30},
        headers=admin,
    )
    time.sleep(1.2)
    _call(system, "POST", "/api/payments/checkout", {"pack": "starter"}, headers=user)
    _call(system, "DELETE", "/admin/api/monitoring/faults", headers=admin)
    system.stripe.stop()  # and one outage for real
    _call(system, "POST", "/api/payments/checkout", {"pack": "starter"}, headers=user)
    _call(system, "GET", "/admin/api/monitoring/health/check", headers=admin)
    time.sleep(2.0)  # the log writers flush on their own schedule

    canaries = {**CANARIES, "USER_PASSWORD": USER_PASSWORD}
    logs = system.all_log_text()
    assert len(logs) > 10_000, "the session wrote too little to prove anything"
    assert "login_failed" in logs and "token_rejected" in logs
    for name, secret in canaries.items():
        assert secret not in logs, f"{name} found in a log file"
        for answer in SEEN:
            text = answer.body.decode("utf-8", "replace") + json.dumps(answer.headers)
            at = text.find(secret)
            assert at < 0, f"{name} found in a response ({answer.status}): {text[max(0, at - 300) : at + 50]}"
