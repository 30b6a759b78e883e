"""Several gunicorn workers on Redis + PostgreSQL: duplicates of one keyed request, sent at once to
different processes, store one upload and spend one credit. The claim in the database is the cross-process
lock, with or without REDIS_URL, so this holds while Redis is unreachable too (#13 point 10)."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.models import Render, Upload, User
from backend.app.services import credits
from bench import harness
from bench.harness import base_env
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.stripe_peer import StripePeer
from tests.harness.peers.tcp_fault_proxy import TcpFaultProxy

DUPLICATES = 12
REDIS_DB = 12  # the outage test's own Redis database number (wake-up lists and breaker keys have fixed names)
READY_SECONDS = 120.0  # the shared 2-core machine can be very busy: wait longer than the harness's 30 s


@contextmanager
def gunicorn(env: dict[str, str], *, workers: int, threads: int) -> Iterator[harness.Server]:
    """`bench.harness.gunicorn` with a longer wait for the first answer; bound to 127.0.0.1, stopped after."""
    port = harness.free_port()
    args = [str(harness.VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    args += ["--worker-class", "gthread", "--threads", str(threads), "--graceful-timeout", "10", "--preload"]
    process = subprocess.Popen([*args, "wsgi:app"], cwd=harness.ROOT, env=env, start_new_session=True)
    server = harness.Server(port=port, process=process, env=env)
    try:
        harness._wait_ready(server, "/api/errors/catalog", timeout=READY_SECONDS)
        yield server
    finally:
        harness.stop(server)


def _call(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _json(url: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    return _call(url, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def _multipart(data: bytes, name: str) -> tuple[bytes, str]:
    """A multipart body with a fresh random boundary, as every browser retry has."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _at_once(n: int, send: Any) -> list[tuple[int, dict[str, str], bytes]]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait(10)
        results[i] = send()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def _once(results: list[tuple[int, dict[str, str], bytes]], ok: int) -> bytes:
    """Every answer is the one result or a 409 asking to retry; the one result is the same bytes everywhere."""
    assert {status for status, _, _ in results} <= {ok, 409}, [(s, b[:200]) for s, _, b in results]
    bodies = {body for status, _, body in results if status == ok}
    assert len(bodies) == 1
    for status, headers, body in results:
        if status == 409:
            assert json.loads(body)["error"]["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
            assert int(headers["Retry-After"]) >= 1
    return bodies.pop()


@pytest.mark.slow
def test_duplicates_across_gunicorn_workers_on_redis_happen_once(
    tmp_path: Path, pg_app: Flask, postgres_url: str, redis_url: str, audio_files: AudioFactory
) -> None:
    env = base_env(
        tmp_path,
        {
            "DATABASE_URL": postgres_url,
            "REDIS_URL": redis_url,
            "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
            "FREE_RENDER_CREDITS": "5",
        },
    )
    wav = audio_files.make("wav", seconds=0.5).read_bytes()
    with gunicorn(env, workers=3, threads=4) as server:
        _json(server.url("/api/auth/register"), {"email": "many@example.com", "password": "correct-horse-battery"})
        status, _, body = _json(
            server.url("/api/auth/login"), {"email": "many@example.com", "password": "correct-horse-battery"}
        )
        assert status == 200, body
        auth = {"Authorization": f"Bearer {json.loads(body)['access_token']}"}

        upload_key = str(uuid.uuid4())

        def send_upload() -> tuple[int, dict[str, str], bytes]:
            payload, content_type = _multipart(wav, "tone.wav")
            headers = {**auth, "Idempotency-Key": upload_key, "Content-Type": content_type}
            return _call(server.url("/api/uploads"), payload, headers)

        uploads = _at_once(DUPLICATES, send_upload)
        upload = json.loads(_once(uploads, 201))["upload"]

        render_key = str(uuid.uuid4())
        render_body = {"upload_id": upload["id"], "preset": "waveform", "resolution": "320x180", "fps": 24}
        renders = _at_once(
            DUPLICATES,
            lambda: _json(server.url("/api/renders"), render_body, {**auth, "Idempotency-Key": render_key}),
        )
        render = _once(renders, 202)
        # Any worker replays the stored answer to a late retry.
        status, headers, replay = _json(
            server.url("/api/renders"), render_body, {**auth, "Idempotency-Key": render_key}
        )
        assert (status, headers.get("Idempotent-Replayed"), replay) == (202, "true", render)

    with pg_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 1
        assert db.session.scalar(select(func.count()).select_from(Render)) == 1
        user = db.session.scalars(select(User).where(User.email == "many@example.com")).one()
        assert credits.balance(user.id) == 4  # five free credits, one render


def _served_by(log_dir: Path) -> dict[str, int]:
    """request id → pid of the worker that answered it (performance.log's line per request)."""
    served: dict[str, int] = {}
    for line in (log_dir / "performance.log").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("request_id") and record.get("pid"):
            served.setdefault(record["request_id"], int(record["pid"]))
    return served


@pytest.mark.slow
def test_point10_during_a_redis_outage_a_key_sent_to_several_gunicorn_workers_runs_once(
    tmp_path: Path,
    pg_app: Flask,
    postgres_url: str,
    redis_url: str,
    audio_files: AudioFactory,
    stripe_peer: StripePeer,
) -> None:
    parts = urlsplit(redis_url)
    proxy = TcpFaultProxy(parts.port or 6379, target_host=parts.hostname or "127.0.0.1")
    env = base_env(
        tmp_path,
        {
            "DATABASE_URL": postgres_url,
            "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}",  # breakers and wake-ups go through the cut
            "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
            "FREE_RENDER_CREDITS": "5",
            "STRIPE_API_KEY": stripe_peer.api_key,
            "STRIPE_WEBHOOK_SECRET": stripe_peer.webhook_secret,
            "STRIPE_API_BASE": stripe_peer.url,
            "STRIPE_TIMEOUT": "2",
        },
    )
    wav = audio_files.make("wav", seconds=0.5).read_bytes()
    during: dict[str, list[str]] = defaultdict(list)  # key → request ids of its copies sent during the outage
    try:
        # Two gunicorns of two workers each on one database and one Redis: copy i goes to server i % 2, so the
        # copies of one key surely reach different processes (within one server the kernel picks the worker).
        with gunicorn(env, workers=2, threads=4) as first, gunicorn(env, workers=2, threads=4) as second:
            servers = (first, second)
            url = first.url
            _json(url("/api/auth/register"), {"email": "cut@example.com", "password": "correct-horse-battery"})
            status, _, body = _json(
                url("/api/auth/login"), {"email": "cut@example.com", "password": "correct-horse-battery"}
            )
            assert status == 200, body
            auth = {"Authorization": f"Bearer {json.loads(body)['access_token']}"}
            ok = {"upload": 201, "render": 202, "checkout": 201}
            upload_id: list[int] = []

            def send(op: str, key: str, copy: int = 0) -> tuple[int, dict[str, str], bytes]:
                at = servers[copy % len(servers)].url
                headers = {**auth, "Idempotency-Key": key}
                if op == "upload":
                    payload, content_type = _multipart(wav, "tone.wav")
                    return _call(at("/api/uploads"), payload, {**headers, "Content-Type": content_type})
                if op == "render":
                    render = {"upload_id": upload_id[0], "preset": "waveform", "resolution": "320x180", "fps": 24}
                    return _json(at("/api/renders"), render, headers)
                return _json(at("/api/payments/checkout"), {"pack": "starter"}, headers)

            def at_once(op: str, key: str) -> list[tuple[int, dict[str, str], bytes]]:
                copies = iter(range(DUPLICATES))
                results = _at_once(DUPLICATES, lambda: send(op, key, next(copies)))
                during[key] += [headers["X-Request-ID"] for _, headers, _ in results]
                return results

            bodies: dict[str, bytes] = {}
            before = {op: f"before-{op}-{uuid.uuid4()}" for op in ok}
            for op, key in before.items():
                status, _, bodies[key] = send(op, key)
                assert status == ok[op], bodies[key]
                if op == "upload":
                    upload_id.append(json.loads(bodies[key])["upload"]["id"])

            proxy.down()
            for op, key in before.items():  # a key from before the outage, sent to the workers at once
                for status, headers, answer in at_once(op, key):
                    assert (status, headers.get("Idempotent-Replayed"), answer) == (ok[op], "true", bodies[key])
            fresh = {op: f"during-{op}-{uuid.uuid4()}" for op in ok}
            for op, key in fresh.items():  # a new key during the outage, sent to the workers at once: once
                bodies[key] = _once(at_once(op, key), ok[op])
            assert proxy.refused, "the workers did not try Redis during the outage"

            proxy.up()
            for op in ok:
                for key in (before[op], fresh[op]):
                    for copy in range(len(servers)):
                        status, headers, answer = send(op, key, copy)
                        assert (status, headers.get("Idempotent-Replayed"), answer) == (ok[op], "true", bodies[key])
    finally:
        proxy.close()
        direct = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}", socket_connect_timeout=1)
        leftovers = list(direct.scan_iter(match="oriel:*"))
        if leftovers:
            direct.delete(*leftovers)

    # Each key's copies reached several worker processes, and each write happened once.
    served = _served_by(Path(env["LOG_DIR"]))
    for key, request_ids in during.items():
        assert len({served[r] for r in request_ids}) >= 2, f"{key}: every copy reached one process"
    with pg_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 2
        assert db.session.scalar(select(func.count()).select_from(Render)) == 2
        user = db.session.scalars(select(User).where(User.email == "cut@example.com")).one()
        assert credits.balance(user.id) == 3  # five free credits, two renders
    assert len(stripe_peer.sessions) == 2
