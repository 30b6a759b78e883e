"""Several gunicorn workers on Redis + PostgreSQL: duplicates of one keyed request, sent at once to
different processes, store one upload and spend one credit (the Redis claim is the cross-process lock)."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app import credits
from backend.app.extensions import db
from backend.app.models import Render, Upload, User
from bench import harness
from bench.harness import base_env
from tests.peers.audio import AudioFactory

DUPLICATES = 12
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
