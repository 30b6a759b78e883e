"""A gthread web worker starts every request thread at boot (gunicorn.conf.py `post_worker_init`).

gunicorn's own `ThreadPoolExecutor` starts a thread only when a request finds none idle, so a worker's
thread count climbs whenever its concurrency first reaches a new level: the soak suite once saw a worker go
from 7 to 8 threads long after its warm-up. The control run (gunicorn without the project's config) shows
that the load used here really does drive a worker to all of its threads; with the config nothing starts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import ROOT, VENV_BIN, base_env, free_port, migrate

pytestmark = pytest.mark.slow

THREADS = 4


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@contextlib.contextmanager
def _one_worker(env: dict[str, str], config: str) -> Iterator[tuple[int, int]]:
    """gunicorn with one gthread worker of THREADS threads and `config`; yields (port, worker pid)."""
    port = free_port()
    args = [str(VENV_BIN / "gunicorn"), "--config", config, "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    args += ["--worker-class", "gthread", "--threads", str(THREADS), "--log-level", "warning", "wsgi:app"]
    process = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"gunicorn exited with {process.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not answer in time"
                time.sleep(0.2)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(children) == 1, children
        yield port, int(children[0])
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _threads_with_every_request_thread_busy(port: int, pid: int) -> int:
    """The worker's thread count while THREADS requests each hold a request thread (their bodies unsent)."""
    held = []
    try:
        for _ in range(THREADS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            head = b"POST /api/errors/report HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            sock.sendall(head + b"Content-Length: 100\r\n\r\n{")  # the handler now waits for 99 more bytes
            held.append(sock)
        time.sleep(1.5)
        return _threads(pid)
    finally:
        for sock in held:
            sock.close()


def test_a_gthread_worker_starts_every_request_thread_at_boot(tmp_path: Path) -> None:
    env = base_env(tmp_path, {"FLASK_ENV": "testing"})
    migrate(env)
    bare = tmp_path / "bare.conf.py"
    bare.write_text("# gunicorn's defaults: no hooks\n", encoding="utf-8")

    with _one_worker(env, str(bare)) as (port, pid):  # control: gunicorn's pool starts threads on demand
        at_boot = _threads(pid)
        busy = _threads_with_every_request_thread_busy(port, pid)
    assert busy >= at_boot + 1, (at_boot, busy)  # the load below really reaches threads not started at boot

    with _one_worker(env, str(ROOT / "gunicorn.conf.py")) as (port, pid):
        at_boot = _threads(pid)
        busy = _threads_with_every_request_thread_busy(port, pid)
        time.sleep(0.5)
        after = _threads(pid)
    assert busy == at_boot == after, (at_boot, busy, after)
