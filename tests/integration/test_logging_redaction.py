"""Canary secrets sent through every path never reach any log file; CR/LF never forges a line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import stripe
from flask import Flask

from backend.log.redaction import MASK, clean_text, is_secret_key, neutralise, redact, redact_value
from backend.logging_config import flush_logs, log_security_event
from tests.harness.app import login, register

# Each canary carries a unique tag; a leak is any occurrence of the tag in any log file.
PASSWORD = "pw-CANARYpass-81f3"
JWT_LIKE = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJDQU5BUllqd3QifQ.CANARYjwtSig42"
OPAQUE_TOKEN = "tok-CANARYopaque-77a1"
COOKIE = "session=CANARYcookie-5f0e"
API_KEY = "ak-CANARYquery-19bd"
DB_PASSWORD = "CANARYdbpass-a41c"
STRIPE_KEY = "sk_test_CANARYstripe4c0ffee9"
CARD = "4242 4242 4242 4242"
TAGS = ("CANARYpass", "CANARYjwt", "CANARYopaque", "CANARYcookie", "CANARYquery", "CANARYdbpass", "CANARYstripe", CARD)

logger = logging.getLogger("tests.canary_routes")


def _add_failing_routes(app: Flask) -> None:
    """Views that fail the way real code does, with secrets in what they raise and log."""

    def db_error() -> str:
        url = f"postgresql+psycopg://app:{DB_PASSWORD}@db.internal:5432/prod"
        logger.error("cannot reach database %s", url, extra={"database_url": url, "dsn": url})
        raise RuntimeError(f"connection to {url} failed")

    def sdk_error() -> str:
        body = {"error": {"type": "invalid_request_error", "message": f"Invalid API Key provided: {STRIPE_KEY}"}}
        exc = stripe.AuthenticationError(body["error"]["message"], http_body=json.dumps(body), json_body=body)
        # What an adapter logs before translating: the SDK's error body, whole.
        logger.warning("stripe call failed: %s", exc.http_body, extra={"sdk_body": exc.json_body})
        raise exc

    def exc_message() -> str:
        raise ValueError(f"charge failed for card {CARD} with password={PASSWORD} and token {JWT_LIKE}")

    app.add_url_rule("/_canary/db", view_func=db_error)
    app.add_url_rule("/_canary/sdk", view_func=sdk_error)
    app.add_url_rule("/_canary/exc", view_func=exc_message)


def _all_log_text(log_dir: Path) -> str:
    flush_logs()
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(log_dir.iterdir()) if p.is_file())


def test_canary_secrets_from_every_path_never_reach_any_log_file(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    _add_failing_routes(app)
    client = app.test_client()
    log_dir = Path(app.config["LOG_DIR"])

    # Login body: a wrong password, then a right one, then a body that fails validation.
    register(client, "canary@example.com", PASSWORD)
    assert (
        client.post("/api/auth/login", json={"email": "canary@example.com", "password": PASSWORD + "x"}).status_code
        == 401
    )
    tokens = login(client, "canary@example.com", PASSWORD)
    assert client.post("/api/auth/login", json={"email": 5, "password": PASSWORD}).status_code == 422
    # Authorization and Cookie headers on failing requests (the request line logs headers on errors).
    client.set_cookie("session", COOKIE.split("=", 1)[1].split(";")[0])  # the test client sends jar cookies only
    for auth in (f"Bearer {JWT_LIKE}", f"Token {OPAQUE_TOKEN}", f"Basic {OPAQUE_TOKEN}"):
        assert client.get("/api/me", headers={"Authorization": auth, "Cookie": COOKIE}).status_code in (401, 422)
    assert (
        client.get(
            "/no/such/page", headers={"Authorization": f"Bearer {tokens['access_token']}", "Cookie": COOKIE}
        ).status_code
        == 404
    )
    # Query strings (logged on the request line).
    assert client.get(f"/api/errors/catalog?api_key={API_KEY}&password={PASSWORD}&q={STRIPE_KEY}").status_code == 200
    assert client.get(f"/no/such/page?token={OPAQUE_TOKEN}&card={CARD}").status_code == 404
    # Exception messages, a database URL in an error, an SDK error body.
    assert client.get("/_canary/exc").status_code == 500
    assert client.get("/_canary/db").status_code == 500
    assert client.get("/_canary/sdk").status_code in (401, 500)
    # Direct helper calls with secret-named and secret-shaped fields.
    log_security_event("api_key_used", f"key {STRIPE_KEY} used", api_key=API_KEY, details={"password": PASSWORD})
    logger.warning("pre-rendered failure", extra={"traceback": f"Traceback ...\nValueError: token {JWT_LIKE}"})

    text = _all_log_text(log_dir)
    leaks = [tag for tag in TAGS if tag in text]
    assert leaks == []
    # The test is only meaningful if these paths were logged at all.
    assert text.count(MASK) >= 15
    perf = [json.loads(line) for line in (log_dir / "performance.log").read_text().splitlines()]
    assert any("headers" in r and r["headers"].get("Authorization") == MASK for r in perf)
    assert any("headers" in r and r["headers"].get("Cookie") == MASK for r in perf)
    assert any("api_key=" in (r.get("query") or "") for r in perf)
    errors = [json.loads(line) for line in (log_dir / "errors.log").read_text().splitlines()]
    assert {"ValueError", "RuntimeError"} <= {r.get("exc_type") for r in errors}
    assert all(r.get("traceback") for r in errors if r.get("exc_type") == "ValueError")


def _lines_with(log_dir: Path, marker: str) -> list[str]:
    flush_logs()
    found = []
    for path in log_dir.iterdir():
        for line in path.read_text(encoding="utf-8").split("\n"):
            if marker in line:
                found.append(line)
    return found


@pytest.mark.parametrize(
    "injected",
    ['a\r\nFORGED-LINE {"level": "CRITICAL"}', "b\nFORGED-LINE", "c\rFORGED-LINE", "d\u2028FORGED-LINE\x1b[31m"],
)
def test_cr_lf_and_control_characters_produce_exactly_one_line(make_app: Callable[..., Flask], injected: str) -> None:
    app = make_app()
    log_dir = Path(app.config["LOG_DIR"])
    logging.getLogger("tests.injection").warning("user said %s", injected)
    log_security_event("probe", "value", user_agent=injected)
    flush_logs()
    lines = _lines_with(log_dir, "FORGED-LINE")
    # app.log (the warning) and security.log (the event): one line each, both whole JSON objects.
    assert len(lines) == 2
    for line in lines:
        record = json.loads(line)
        assert "\r" not in json.dumps(record, ensure_ascii=False).replace("\\r", "")
        text = record.get("message", "") + str(record.get("user_agent", ""))
        assert "\n" not in text and "\r" not in text and "\x1b" not in text


def test_injection_through_the_url_path_and_headers_is_one_line(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    log_dir = Path(app.config["LOG_DIR"])
    response = client.get("/api/x%0d%0aFORGED-PATH", headers={"User-Agent": "ua\tFORGED-UA"})
    assert response.status_code == 404
    path_lines = _lines_with(log_dir, "FORGED-PATH")
    assert path_lines  # the path is logged (context field) ...
    for line in path_lines:  # ... and every line carrying it is one whole JSON object
        record = json.loads(line)
        assert record["path"] == "/api/x\\r\\nFORGED-PATH"
    assert any(
        json.loads(line)["headers"]["User-Agent"] == "ua\\tFORGED-UA" for line in _lines_with(log_dir, "FORGED-UA")
    )


def test_console_lines_are_single_lines_too(make_app: Callable[..., Flask], capsys: pytest.CaptureFixture[str]) -> None:
    make_app(LOG_CONSOLE=True)
    logging.getLogger("tests.console").warning("user said %s", "x\r\nFORGED-CONSOLE")
    flush_logs()
    err = capsys.readouterr().err
    console = [line for line in err.splitlines() if "FORGED-CONSOLE" in line]
    assert len(console) == 1 and "WARNING" in console[0] and "tests.console" in console[0]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abcdefghijkl", "abcdefghijkl"),
        ("authorization=Token zzz999yyy", "zzz999yyy"),
        ("Cookie: session=abc123secret; other=1", "abc123secret"),
        ("postgresql://app:s3cr3tpw@db:5432/prod", "s3cr3tpw"),
        ("redis://:r3dispw@cache:6379/0", "r3dispw"),
        ("GET /x?api_key=KEYVAL1&password=PWVAL1&q=1", "PWVAL1"),
        ('{"password": "pw123456", "email": "a@b"}', "pw123456"),
        ("'client_secret': 'cs-999888'", "cs-999888"),
        ("X-Auth-Token: tok987654", "tok987654"),
        ("smtp_password=hunter2hunter2", "hunter2hunter2"),
        ("card 4242-4242-4242-4242 declined", "4242-4242-4242-4242"),
        ("stripe error sk_live_abcdefgh12345", "sk_live_abcdefgh12345"),
        ("webhook whsec_abcdef123456", "whsec_abcdef123456"),
        ("sendgrid SG.abcdefghijk.lmnopqrstuvw", "SG.abcdefghijk.lmnopqrstuvw"),
    ],
)
def test_redact_masks_each_secret_shape(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert MASK in redact(text)


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in (
        "401 TOKEN_MISSING: An access token is required; send it in the Authorization header.",
        "/api/errors/catalog",
        "order 1234567890123 shipped",  # 13 digits failing the Luhn check: not a card
        "3f2a9c0e4b5d4e6f8a7b9c0d1e2f3a4b",
    ):
        assert redact(text) == text


def test_structured_values_are_masked_by_key_and_shape() -> None:
    value = {
        "password": "x",
        "Card-Number": 4242424242424242,
        "nested": {"X-Api-Key": "k"},
        "items": ["Bearer abcdefgh"],
    }
    assert redact_value("fields", value) == {
        "password": MASK,
        "Card-Number": MASK,
        "nested": {"X-Api-Key": MASK},
        "items": ["Bearer " + MASK],
    }
    assert redact_value("amount", 1999) == 1999
    assert is_secret_key("Authorization") and is_secret_key("refresh-token") and not is_secret_key("endpoint")
    assert neutralise("a\r\nb") == "a\\r\\nb"
    assert clean_text("pw=1\nx password=abc") == "pw=1\\nx password=" + MASK
