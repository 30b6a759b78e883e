"""`Idempotency-Key` on POST /api/uploads, /api/renders and /api/payments/checkout, through the real app:
replays are byte-identical and do nothing again, a reused key with another body is 422, a key in use is
409 with Retry-After, 5xx responses are not stored, and concurrent duplicates (threads; SQLite and Redis)
spend one credit and store one upload. Keys live in the database whether or not REDIS_URL is set (#13 point 10):
tests/integration/test_idempotency_redis_outage.py shows them holding across a Redis outage."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from backend.app.edge.idempotency import fingerprint, get_store
from backend.app.models import IdempotencyRecord, Render, Upload
from backend.app.services import credits
from backend.app.services.rendering import get_renderer
from tests.harness.app import bearer, login, read_log
from tests.harness.contract import assert_error
from tests.harness.idempotency import SETTINGS, Caller, count
from tests.harness.payments import payments_app
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.stripe_peer import StripePeer
from tests.harness.renders import SMALL


@pytest.fixture
def wav(audio_files: AudioFactory) -> bytes:
    return audio_files.make("wav", seconds=0.5).read_bytes()


def test_a_replayed_render_is_byte_identical_and_spends_one_credit(make_app: Callable[..., Flask], wav: bytes) -> None:
    app = make_app(**SETTINGS)
    user = Caller(app)
    upload_id = user.upload(wav).get_json()["upload"]["id"]
    before = user.balance()
    key = str(uuid.uuid4())
    first = user.render(upload_id, key)
    assert first.status_code == 202, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    # The client never saw `first` (lost on the way): it retries with the same key.
    again = user.render(upload_id, key)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()  # byte for byte
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    # A new request with the old answer: its own X-Request-ID, and the original's beside it.
    assert again.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    assert again.headers["Idempotent-Original-Request-ID"] == first.headers["X-Request-ID"]
    assert user.balance() == before - 1
    assert count(app, Render) == 1
    # The same JSON with its keys in another order is the same request.
    reordered = app.test_client().post(
        "/api/renders",
        data=f'{{"fps": 24, "resolution": "320x180", "preset": "waveform", "upload_id": {upload_id}}}',
        content_type="application/json",
        headers=user.headers(key),
    )
    assert reordered.status_code == 202 and reordered.get_data() == first.get_data()
    # Without a key, each request is its own.
    assert user.render(upload_id).status_code == 202
    assert count(app, Render) == 2


def test_the_same_key_with_another_body_is_422_key_reused_and_does_nothing(
    make_app: Callable[..., Flask], wav: bytes
) -> None:
    app = make_app(**SETTINGS)
    user = Caller(app)
    upload_id = user.upload(wav).get_json()["upload"]["id"]
    key = str(uuid.uuid4())
    assert user.render(upload_id, key).status_code == 202
    balance = user.balance()
    other = user.render(upload_id, key, preset="spectrum", resolution="320x180", fps=24)
    error = assert_error(other, 422, "IDEMPOTENCY_KEY_REUSED")
    assert error["recoverable"] is False
    assert "Idempotent-Replayed" not in other.headers
    # Another endpoint with the same key is another request too.
    elsewhere = user.upload(wav, key)
    assert_error(elsewhere, 422, "IDEMPOTENCY_KEY_REUSED")
    assert user.balance() == balance and count(app, Render) == 1 and count(app, Upload) == 1


def test_keys_are_scoped_per_user(make_app: Callable[..., Flask], wav: bytes) -> None:
    app = make_app(**SETTINGS)
    alice, bob = Caller(app, "alice@example.com"), Caller(app, "bob@example.com")
    key = "shared-key-1"
    a = alice.upload(wav, key)
    b = bob.upload(wav, key)
    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b.headers
    assert a.get_json()["upload"]["id"] != b.get_json()["upload"]["id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tinside", "caf\u00e9"])
def test_an_invalid_key_is_422_on_the_header_field(make_app: Callable[..., Flask], key: str) -> None:
    app = make_app(**SETTINGS)
    user = Caller(app)
    response = user.render(1, key)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert "Idempotency-Key" in error["details"]["fields"]
    assert count(app, Render) == 0


def test_a_255_character_key_is_accepted(make_app: Callable[..., Flask], wav: bytes) -> None:
    app = make_app(**SETTINGS)
    user = Caller(app)
    key = "k" * 255
    assert user.upload(wav, key).status_code == 201
    assert user.upload(wav, key).headers["Idempotent-Replayed"] == "true"


def test_a_multipart_retry_with_a_new_boundary_is_a_replay_and_other_content_is_reused(
    make_app: Callable[..., Flask], wav: bytes, audio_files: AudioFactory
) -> None:
    app = make_app(**SETTINGS)
    user = Caller(app)
    key = str(uuid.uuid4())
    first = user.upload(wav, key)
    assert first.status_code == 201, first.get_json()
    again = user.upload(wav, key)  # werkzeug's test client draws a fresh random boundary
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_data() == first.get_data()
    other = audio_files.make("wav", seconds=0.5, frequency=880.0).read_bytes()
    assert_error(user.upload(other, key), 422, "IDEMPOTENCY_KEY_REUSED")
    assert_error(user.upload(wav, key, name="renamed.wav"), 422, "IDEMPOTENCY_KEY_REUSED")
    assert count(app, Upload) == 1


def _claim_like(app: Flask, user: Caller, upload_id: int, key: str) -> str:
    """Take the key as a request with the same body would (another process still running it)."""
    body = {"upload_id": upload_id, **SMALL}
    with app.test_request_context("/api/renders", method="POST", json=body, headers=user.headers(key)):
        claim = get_store(app).begin(user.id, key, fingerprint())
    assert claim.token is not None
    return claim.token


def test_a_key_still_in_flight_is_409_with_retry_after_and_free_once_released(
    make_app: Callable[..., Flask], wav: bytes
) -> None:
    app = make_app(**SETTINGS)
    user = Caller(app)
    upload_id = user.upload(wav).get_json()["upload"]["id"]
    key = str(uuid.uuid4())
    token = _claim_like(app, user, upload_id, key)
    busy = user.render(upload_id, key)
    error = assert_error(busy, 409, "IDEMPOTENCY_REQUEST_IN_PROGRESS")
    assert error["recoverable"] is True
    assert error["retry_after"] >= 1 and busy.headers["Retry-After"] == str(error["retry_after"])
    # A different body under a busy key is still a reuse, not a wait.
    assert_error(
        user.render(upload_id, key, preset="spectrum", resolution="320x180", fps=24), 422, "IDEMPOTENCY_KEY_REUSED"
    )
    with app.app_context():
        get_store(app).release(user.id, key, token)  # the other request failed with a 5xx
    assert user.render(upload_id, key).status_code == 202
    assert count(app, Render) == 1


def test_a_claim_whose_process_died_frees_the_key_when_its_lease_ends(
    make_app: Callable[..., Flask], wav: bytes
) -> None:
    app = make_app(**SETTINGS, IDEMPOTENCY_LEASE_SECONDS=0.5)
    user = Caller(app)
    upload_id = user.upload(wav).get_json()["upload"]["id"]
    key = str(uuid.uuid4())
    _claim_like(app, user, upload_id, key)  # never finished nor released: the process "crashed"
    assert_error(user.render(upload_id, key), 409, "IDEMPOTENCY_REQUEST_IN_PROGRESS")
    time.sleep(0.6)
    assert user.render(upload_id, key).status_code == 202
    assert count(app, Render) == 1


def test_a_5xx_is_not_stored_so_the_same_key_retries_the_work(make_app: Callable[..., Flask], wav: bytes) -> None:
    app = make_app(**{**SETTINGS, "RENDER_MIN_FREE_DISK_MB": 10**9})  # no disk has a petabyte free
    user = Caller(app)
    upload_id = user.upload(wav).get_json()["upload"]["id"]
    balance = user.balance()
    key = str(uuid.uuid4())
    refused = user.render(upload_id, key)
    error = assert_error(refused, 503, "RENDERING_RESOURCES_EXHAUSTED")
    assert error["recoverable"] is True and refused.headers["Retry-After"] == "30"
    again = user.render(upload_id, key)
    assert again.status_code == 503 and "Idempotent-Replayed" not in again.headers  # ran again, not replayed
    with app.app_context():
        renderer = get_renderer()
        renderer.settings = dataclasses.replace(renderer.settings, min_free_disk_mb=0)  # disk freed
    ok = user.render(upload_id, key)
    assert ok.status_code == 202 and "Idempotent-Replayed" not in ok.headers
    assert user.render(upload_id, key).headers["Idempotent-Replayed"] == "true"
    assert user.balance() == balance - 1 and count(app, Render) == 1


def test_a_4xx_is_stored_and_replayed(make_app: Callable[..., Flask]) -> None:
    app = make_app(**SETTINGS)
    user = Caller(app)
    key = str(uuid.uuid4())
    missing = user.render(424242, key)
    assert_error(missing, 404, "NOT_FOUND")
    replay = user.render(424242, key)
    assert replay.status_code == 404 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_data() == missing.get_data()


def _hammer(n: int, call: Callable[[FlaskClient], Any], app: Flask) -> list[Any]:
    """`n` threads, each with its own client, released together."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        client = app.test_client()
        barrier.wait(5)
        results[i] = call(client)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def _concurrent_duplicates_happen_once(app: Flask, wav: bytes) -> None:
    user = Caller(app)
    upload_key = str(uuid.uuid4())
    uploads = _hammer(6, lambda c: user.upload(wav, upload_key, client=c), app)
    assert {r.status_code for r in uploads} <= {201, 409}, [r.get_json() for r in uploads]
    done = [r for r in uploads if r.status_code == 201]
    assert done and len({r.get_data() for r in done}) == 1
    for busy in (r for r in uploads if r.status_code == 409):
        assert busy.get_json()["error"]["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS" and busy.headers["Retry-After"]
    assert count(app, Upload) == 1
    upload_id = done[0].get_json()["upload"]["id"]

    before = user.balance()
    render_key = str(uuid.uuid4())
    renders = _hammer(8, lambda c: user.render(upload_id, render_key, client=c), app)
    assert {r.status_code for r in renders} <= {202, 409}, [r.get_json() for r in renders]
    started = [r for r in renders if r.status_code == 202]
    assert started and len({r.get_data() for r in started}) == 1
    assert user.balance() == before - 1
    assert count(app, Render) == 1
    # Every 409 was told to come back: coming back now gets the one answer.
    assert user.render(upload_id, render_key).get_data() == started[0].get_data()


def test_concurrent_duplicates_on_the_database_store_happen_once(make_app: Callable[..., Flask], wav: bytes) -> None:
    _concurrent_duplicates_happen_once(make_app(**SETTINGS), wav)


def test_point10_concurrent_duplicates_with_redis_configured_happen_once_and_the_key_is_in_the_database(
    make_app: Callable[..., Flask], wav: bytes, redis_url: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    app = make_app(
        **SETTINGS, REDIS_URL=redis_url, RATELIMIT_KEY_PREFIX=prefix, CIRCUIT_BREAKER_KEY_PREFIX=f"{prefix}:"
    )
    _concurrent_duplicates_happen_once(app, wav)
    # The lock was the unique constraint of idempotency_keys, not Redis: the keys are rows, and Redis holds none.
    assert type(get_store(app)).__name__ == "SqlIdempotencyStore"
    assert count(app, IdempotencyRecord) == 2  # the upload's key and the render's
    client = redis.Redis.from_url(redis_url)
    assert not list(client.scan_iter(match=f"{prefix}*idem*"))


def test_a_replayed_checkout_creates_one_stripe_session(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = payments_app(make_app, stripe_peer.url)
    client = app.test_client()
    token = login(client, "payer@example.com")["access_token"]
    headers = {**bearer(token), "Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=headers)
    again = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_data() == first.get_data()
    assert len(stripe_peer.creates()) == 1
    # Stripe's key is derived from the client's key: bounded length, per user.
    [create] = stripe_peer.creates()
    assert create.idempotency_key.startswith("checkout:") and len(create.idempotency_key) <= 255


def test_the_openapi_document_declares_the_header_on_each_retryable_write(app: Flask) -> None:
    spec = app.test_client().get("/api/openapi.json").get_json()
    for path in ("/api/uploads", "/api/renders", "/api/payments/checkout"):
        params = spec["paths"][path]["post"].get("parameters", [])
        [header] = [p for p in params if p["name"] == "Idempotency-Key"]
        assert header["in"] == "header"
        assert {"409", "422"} <= set(spec["paths"][path]["post"]["responses"])
    catalog = {e["code"]: e for e in app.test_client().get("/api/errors/catalog").get_json()["errors"]}
    assert (catalog["IDEMPOTENCY_KEY_REUSED"]["status"], catalog["IDEMPOTENCY_KEY_REUSED"]["recoverable"]) == (
        422,
        False,
    )
    in_progress = catalog["IDEMPOTENCY_REQUEST_IN_PROGRESS"]
    assert (in_progress["status"], in_progress["recoverable"]) == (409, True)


def test_concurrent_duplicates_on_postgresql_happen_once(pg_app: Flask, wav: bytes) -> None:
    pg_app.config.update(SETTINGS)
    _concurrent_duplicates_happen_once(pg_app, wav)
    assert type(get_store(pg_app)).__name__ == "SqlIdempotencyStore"


def test_point10_with_redis_unreachable_a_keyed_write_runs_once_and_replays(
    make_app: Callable[..., Flask], wav: bytes
) -> None:
    # Was: 503 EXTERNAL_SERVICE_UNAVAILABLE {"service": "idempotency"} for every keyed write (the key lived in Redis).
    app = make_app(**SETTINGS, REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens on port 1
    user = Caller(app)
    key = str(uuid.uuid4())
    first = user.upload(wav, key)
    assert first.status_code == 201, first.get_json()
    again = user.upload(wav, key)
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_data() == first.get_data()
    assert count(app, Upload) == 1
    assert user.upload(wav).status_code == 201  # without a key, as before


@pytest.mark.parametrize("storage", ["auto", "database", "redis", "REDIS", "memcached", ""])
def test_point10_idempotency_storage_settings_still_start_and_keep_keys_in_the_database(
    make_app: Callable[..., Flask], storage: str
) -> None:
    app = make_app(**SETTINGS, IDEMPOTENCY_STORAGE=storage, IDEMPOTENCY_REDIS_TIMEOUT="0.5")
    assert type(get_store(app)).__name__ == "SqlIdempotencyStore"
    ignored = [r for r in read_log(app, "app.log") if "IDEMPOTENCY_STORAGE" in r["message"]]
    assert [r["level"] for r in ignored] == (["WARNING"] if storage.lower() not in {"auto", "database", ""} else [])


def test_a_402_is_not_stored_so_the_same_key_renders_after_buying_credits(
    make_app: Callable[..., Flask], wav: bytes
) -> None:
    app = make_app(**SETTINGS, FREE_RENDER_CREDITS=0)
    user = Caller(app, credit=0)
    upload_id = user.upload(wav).get_json()["upload"]["id"]
    key = str(uuid.uuid4())
    assert_error(user.render(upload_id, key), 402, "INSUFFICIENT_CREDITS")
    with app.app_context():
        credits.grant(user.id, 1, "bought a pack", "test:pack")
    started = user.render(upload_id, key)
    assert started.status_code == 202 and "Idempotent-Replayed" not in started.headers
    assert user.balance() == 0 and count(app, Render) == 1
