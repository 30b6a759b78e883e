"""Retry guidance in every error: `recoverable` always, and `retry_after` with `Retry-After` wherever the
server knows when (rate limits, open breakers, a busy idempotency key, no render capacity, an unreachable
database), each checked through the real app."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

from flask import Flask

from backend.app.edge.idempotency import fingerprint, get_store
from backend.app.error_catalog import entries, lookup
from backend.app.resilience.state import get_breaker
from backend.app.services import credits
from tests.harness.app import bearer, login
from tests.harness.contract import assert_error
from tests.harness.payments import payments_app
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.stripe_peer import StripePeer

RENDER = {"preset": "waveform", "resolution": "320x180", "fps": 24}
KNOWN_WHEN = ("RATE_LIMITED", "CIRCUIT_OPEN", "IDEMPOTENCY_REQUEST_IN_PROGRESS", "RENDERING_RESOURCES_EXHAUSTED")


def test_every_catalog_code_says_whether_a_retry_can_succeed() -> None:
    for entry in entries():
        assert isinstance(entry.recoverable, bool), entry
        if entry.status in (429, 502, 504):
            assert entry.recoverable, entry
    for code in (*KNOWN_WHEN, "DATABASE_UNAVAILABLE"):
        entry = lookup(code)
        assert entry is not None and entry.recoverable, code
    for code in ("VALIDATION_ERROR", "IDEMPOTENCY_KEY_REUSED", "TOKEN_EXPIRED", "NOT_FOUND", "INSUFFICIENT_CREDITS"):
        assert lookup(code).recoverable is False, code  # type: ignore[union-attr]


def test_a_rate_limit_says_when(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_LOGIN="2 per minute")
    client = app.test_client()
    for _ in range(2):
        client.post("/api/auth/login", json={"email": "a@example.com", "password": "wrong-password-1"})
    limited = client.post("/api/auth/login", json={"email": "a@example.com", "password": "wrong-password-1"})
    error = assert_error(limited, 429, "RATE_LIMITED")
    assert error["recoverable"] is True and 1 <= error["retry_after"] <= 60
    assert limited.headers["Retry-After"] == str(error["retry_after"])


def test_an_open_breaker_says_when_and_a_keyed_request_can_retry_once_it_closes(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url)
    client = app.test_client()
    headers = {**bearer(login(client, "breaker@example.com")["access_token"]), "Idempotency-Key": str(uuid.uuid4())}
    with app.app_context():
        get_breaker("stripe").force_open("test")
    refused = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=headers)
    error = assert_error(refused, 503)
    assert error["recoverable"] is True and error["retry_after"] >= 1
    assert refused.headers["Retry-After"] == str(error["retry_after"])
    assert stripe_peer.creates() == []
    with app.app_context():
        get_breaker("stripe").reset("test")
    # The 503 was not stored: the same key now does the work.
    done = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=headers)
    assert done.status_code == 201 and "Idempotent-Replayed" not in done.headers
    assert len(stripe_peer.creates()) == 1


def _user_with_upload(app: Flask, audio_files: AudioFactory) -> tuple[dict[str, str], int, int]:
    client = app.test_client()
    headers = bearer(login(client, "render@example.com")["access_token"])
    wav = audio_files.make("wav", seconds=0.5).read_bytes()
    response = client.post(
        "/api/uploads", data={"file": (io.BytesIO(wav), "a.wav")}, headers=headers, content_type="multipart/form-data"
    )
    assert response.status_code == 201, response.get_json()
    user_id = client.get("/api/me", headers=headers).get_json()["user"]["id"]
    return headers, user_id, response.get_json()["upload"]["id"]


def test_no_render_capacity_says_when(make_app: Callable[..., Flask], audio_files: AudioFactory) -> None:
    app = make_app(RENDER_MAX_CONCURRENT=0, RENDER_RETRY_AFTER_SECONDS=7, RENDER_DISPATCH="none")
    headers, user_id, upload_id = _user_with_upload(app, audio_files)
    with app.app_context():
        before = credits.balance(user_id)
    refused = app.test_client().post("/api/renders", json={"upload_id": upload_id, **RENDER}, headers=headers)
    error = assert_error(refused, 503, "RENDERING_RESOURCES_EXHAUSTED")
    assert error["recoverable"] is True and error["retry_after"] == 7 and refused.headers["Retry-After"] == "7"
    with app.app_context():
        assert credits.balance(user_id) == before  # refused before a credit was spent


def test_a_busy_idempotency_key_says_when(make_app: Callable[..., Flask], audio_files: AudioFactory) -> None:
    app = make_app(RENDER_DISPATCH="none", RENDER_MIN_FREE_DISK_MB=0, RENDER_MIN_FREE_MEMORY_MB=0)
    headers, user_id, upload_id = _user_with_upload(app, audio_files)
    key = str(uuid.uuid4())
    headers = {**headers, "Idempotency-Key": key}
    body = {"upload_id": upload_id, **RENDER}
    with app.test_request_context("/api/renders", method="POST", json=body, headers=headers):
        assert get_store(app).begin(user_id, key, fingerprint()).token  # another process is running it
    busy = app.test_client().post("/api/renders", json=body, headers=headers)
    error = assert_error(busy, 409, "IDEMPOTENCY_REQUEST_IN_PROGRESS")
    assert error["recoverable"] is True and error["retry_after"] >= 1
    assert busy.headers["Retry-After"] == str(error["retry_after"])


def test_an_unreachable_database_says_when(make_app: Callable[..., Flask]) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI="postgresql+psycopg://postgres@127.0.0.1:1/test")
    response = app.test_client().post("/api/auth/register", json={"email": "x@example.com", "password": "pw-12345678"})
    error = assert_error(response, 503, "DATABASE_UNAVAILABLE")
    assert error["recoverable"] is True and error["retry_after"] >= 1
    assert response.headers["Retry-After"] == str(error["retry_after"])


def test_errors_a_retry_cannot_fix_say_so_and_carry_no_retry_after(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    cases = [
        (client.get("/api/me"), 401),
        (client.get("/api/nowhere"), 404),
        (client.post("/api/auth/register", json={"email": "not-an-email"}), 422),
    ]
    for response, status in cases:
        error = assert_error(response, status)
        assert error["recoverable"] is False and "retry_after" not in error and "Retry-After" not in response.headers
