"""#13 point 10: with REDIS_URL set and Redis unreachable, keyed writes keep working and happen once.

The real app with everything Redis serves turned on (shared rate limits, breaker state, job wake-ups, fault rules)
reaches the real Redis through `TcpFaultProxy`, which the test cuts (the real Redis is never stopped). Keys live
in the database, so a key first used before the outage is a replay during and after it, and uploads, renders
and checkouts (the Stripe peer; local storage) succeed during it, each done once. A hung Redis (accepts, never
answers) costs a keyed write at most a short timeout. The same across gunicorn workers:
tests/system/test_idempotency_gunicorn.py.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from flask import Flask
from werkzeug.test import TestResponse

from backend.app.jobs import runtime
from backend.app.jobs.dispatch import RedisDispatcher
from backend.app.models import Render, Upload
from tests.harness.idempotency import SETTINGS, Caller, count
from tests.harness.payments import PACKS
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.stripe_peer import StripePeer
from tests.harness.peers.tcp_fault_proxy import TcpFaultProxy

pytestmark = pytest.mark.redis

REDIS_DB = 11  # this file's own Redis database number (wake-up lists have a fixed name)
#: A keyed write during an outage answers within this (a 0.25 s Redis timeout at most, plus the work itself on a
#: busy shared machine); redis-py's default retry loop alone would take several seconds.
FAST_ENOUGH = 1.5


@dataclass
class RedisLine:
    """The app's Redis, through a proxy the test can cut."""

    url: str
    proxy: TcpFaultProxy
    prefix: str

    def keys(self) -> list[bytes]:
        """This test's keys in the real Redis (read directly, not through the proxy)."""
        direct = redis.Redis.from_url(self.direct_url, socket_connect_timeout=1)
        return list(direct.scan_iter(match=f"*{self.prefix}*"))  # breakers' and (LIMITS:...) rate limits' keys

    @property
    def direct_url(self) -> str:
        """The real Redis, this file's database."""
        return self.url.replace(f":{self.proxy.port}/", f":{self.proxy.target[1]}/")


@pytest.fixture
def redis_line(redis_url: str) -> Iterator[RedisLine]:
    parts = urlsplit(redis_url)
    proxy = TcpFaultProxy(parts.port or 6379, target_host=parts.hostname or "127.0.0.1")
    line = RedisLine(f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}", proxy, f"p10{uuid.uuid4().hex[:8]}")
    yield line
    proxy.close()
    direct = redis.Redis.from_url(line.direct_url, socket_connect_timeout=1)
    mine = line.keys()
    if mine:
        direct.delete(*mine)


def outage_app(make_app: Callable[..., Flask], url: str, prefix: str, stripe_url: str, **extra: Any) -> Flask:
    """An app that uses Redis for everything it can: rate limits (on), breakers, wake-ups, fault-injection rules."""
    return make_app(
        **{
            **SETTINGS,
            "REDIS_URL": url,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_DEFAULT": "1000 per minute",
            "RATELIMIT_KEY_PREFIX": prefix,
            "CIRCUIT_BREAKER_KEY_PREFIX": f"{prefix}:",
            "FAULT_INJECTION_ENABLED": True,  # its rules are re-read from Redis once a second, on guarded calls
            "STRIPE_API_KEY": StripePeer.api_key,
            "STRIPE_WEBHOOK_SECRET": StripePeer.webhook_secret,
            "STRIPE_API_BASE": stripe_url,
            "STRIPE_TIMEOUT": 2.0,
            "RENDER_PACKS": PACKS,
            **extra,
        }
    )


class Writer:
    """A caller whose keyed writes are timed: each answer and how long it took."""

    def __init__(self, app: Flask, upload_id: int | None = None) -> None:
        self.caller = Caller(app, credit=10)
        self.app = app
        self.upload_id = upload_id
        self.wav = b""
        self.slowest = 0.0

    def _timed(self, send: Callable[[], TestResponse]) -> TestResponse:
        started = time.monotonic()
        response = send()
        self.slowest = max(self.slowest, time.monotonic() - started)
        return response

    def upload(self, key: str) -> TestResponse:
        return self._timed(lambda: self.caller.upload(self.wav, key))

    def render(self, key: str) -> TestResponse:
        assert self.upload_id is not None
        return self._timed(lambda: self.caller.render(self.upload_id, key))

    def checkout(self, key: str) -> TestResponse:
        headers = self.caller.headers(key)
        return self._timed(
            lambda: self.app.test_client().post("/api/payments/checkout", json={"pack": "starter"}, headers=headers)
        )

    def write(self, op: str, key: str) -> TestResponse:
        return {"upload": self.upload, "render": self.render, "checkout": self.checkout}[op](key)


OK = {"upload": 201, "render": 202, "checkout": 201}


def _first(writer: Writer, op: str, key: str) -> bytes:
    response = writer.write(op, key)
    assert response.status_code == OK[op], (op, response.get_json())
    assert "Idempotent-Replayed" not in response.headers
    return response.get_data()


def _replays(writer: Writer, op: str, key: str, body: bytes) -> None:
    response = writer.write(op, key)
    assert (response.status_code, response.headers.get("Idempotent-Replayed")) == (OK[op], "true"), (
        op,
        response.status_code,
        response.get_json(),
    )
    assert response.get_data() == body


def test_point10_keys_used_before_a_redis_outage_replay_during_and_after_it_and_keyed_writes_keep_working(
    make_app: Callable[..., Flask], redis_line: RedisLine, stripe_peer: StripePeer, audio_files: AudioFactory
) -> None:
    app = outage_app(make_app, redis_line.url, redis_line.prefix, stripe_peer.url)
    writer = Writer(app)
    writer.wav = audio_files.make("wav", seconds=0.5).read_bytes()
    writer.upload_id = writer.caller.upload(writer.wav).get_json()["upload"]["id"]
    balance = writer.caller.balance()

    before = {op: f"before-{op}-{uuid.uuid4()}" for op in OK}
    bodies: dict[str, bytes] = {}
    for op, key in before.items():
        bodies[key] = _first(writer, op, key)
    # Redis was in use: the rate limits and breaker state of this app are there.
    assert redis_line.keys(), "the app never reached Redis before the outage"

    redis_line.proxy.down()
    writer.slowest = 0.0
    for op, key in before.items():
        _replays(writer, op, key, bodies[key])  # a key first used before the outage is still a replay
    during = {op: f"during-{op}-{uuid.uuid4()}" for op in OK}
    for op, key in during.items():
        bodies[key] = _first(writer, op, key)  # the write works (was: 503 for every keyed write)
        _replays(writer, op, key, bodies[key])  # and happens once
    assert writer.slowest < FAST_ENOUGH, f"a keyed write took {writer.slowest:.2f} s with Redis down"
    assert redis_line.proxy.refused, "the app did not try Redis during the outage"

    redis_line.proxy.up()
    for op in OK:
        for key in (before[op], during[op]):
            _replays(writer, op, key, bodies[key])  # and after it, every key from before and during

    assert count(app, Upload) == 1 + 2  # the setup's, then one per upload key
    assert count(app, Render) == 2
    assert writer.caller.balance() == balance - 2
    assert len(stripe_peer.sessions) == 2
    assert len({r.idempotency_key for r in stripe_peer.creates()}) == 2


def _hung_redis() -> socket.socket:
    """A listener that never accepts: connections complete in the kernel's backlog, then nothing answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def test_point10_a_hung_redis_costs_a_keyed_write_at_most_a_short_timeout(
    make_app: Callable[..., Flask], stripe_peer: StripePeer, audio_files: AudioFactory
) -> None:
    listener = _hung_redis()
    try:
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        app = outage_app(make_app, url, f"p10h{uuid.uuid4().hex[:6]}", stripe_peer.url)
        writer = Writer(app)
        writer.wav = audio_files.make("wav", seconds=0.5).read_bytes()
        first = writer._timed(lambda: writer.caller.upload(writer.wav))  # a write without a key meets Redis too
        assert first.status_code == 201, first.get_json()
        writer.upload_id = first.get_json()["upload"]["id"]
        for op in OK:
            key = f"hung-{op}-{uuid.uuid4()}"
            body = _first(writer, op, key)
            _replays(writer, op, key, body)
        assert writer.slowest < FAST_ENOUGH, f"a keyed write took {writer.slowest:.2f} s with Redis hung"
        assert count(app, Render) == 1 and len(stripe_peer.sessions) == 1
    finally:
        listener.close()


def test_point10_render_wake_ups_cost_one_short_timeout_then_pause_while_redis_hangs(
    make_app: Callable[..., Flask],
) -> None:
    listener = _hung_redis()
    try:
        app = make_app(**SETTINGS, REDIS_URL=f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        dispatcher = runtime(app).dispatcher
        assert isinstance(dispatcher, RedisDispatcher)
        started = time.monotonic()
        dispatcher.notify(["renders"])  # after a render's commit, on the request's thread
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(20):
            dispatcher.notify(["renders"])
        rest = time.monotonic() - started
    finally:
        listener.close()
    assert first < 0.6, f"one wake-up took {first:.2f} s (bounded by its 0.25 s timeout)"
    assert rest < 0.1 and dispatcher.skipped_pushes == 20  # paused: the workers poll meanwhile
