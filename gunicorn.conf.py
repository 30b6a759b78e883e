"""gunicorn settings read from the project root (`gunicorn wsgi:app`); command-line flags still win.

Process hooks and the request-size limits live here. With `PROMETHEUS_MULTIPROC_DIR` set, each worker writes its metrics
to files in that directory: the master empties it at start (stale files from an earlier run would
be summed in) and marks each worker dead when it exits, so gauges of dead workers are dropped.

A gthread worker starts all of its request threads before it accepts its first connection
(`post_worker_init`), so a worker's thread count is fixed from start to exit. The first worker also
warns, once per start, when rate limits live in each process's memory (no REDIS_URL, several workers).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

#: How long a worker waits for its request threads to start before it serves anyway (seconds).
THREAD_START_TIMEOUT = 10.0

# Above the app's own limits (backend/app/edge/ingress.py: 4,096-byte URL, 8,192-byte header, 100 headers), so
# the app answers those in its JSON envelope; beyond these gunicorn refuses before the app sees the request.
limit_request_line = 8190  # gunicorn's maximum
limit_request_field_size = 16380
limit_request_fields = 200


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def on_starting(server: Any) -> None:
    """Empty the metrics directory before the first worker starts."""
    folder = _multiproc_dir()
    if folder is None:
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def post_worker_init(worker: Any) -> None:
    """Warn once about per-process rate limits, then start the request threads of a gthread worker."""
    _warn_about_per_process_limits(worker)
    _start_request_threads(worker)


def _warn_about_per_process_limits(worker: Any) -> None:
    """The first worker (age 1: one line per start, not one per worker) says when limits are not shared."""
    if worker.age != 1:
        return
    from flask import Flask

    from backend.app.edge.rate_limits import logger, shared_storage_warning

    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        message = shared_storage_warning(app, int(worker.cfg.workers))
        if message is not None:
            logger.warning(message, extra={"event_type": "rate_limits_per_process", "processes": worker.cfg.workers})


def _start_request_threads(worker: Any) -> None:
    """Start every request thread of a gthread worker now instead of on the first burst that needs it.

    gunicorn runs a gthread worker's requests on a `ThreadPoolExecutor`, which starts a thread only
    when a request finds none idle: the worker's thread count creeps up to `--threads` whenever its
    concurrency first reaches a new high (hours after start, or never), that request pays for the
    thread start, and a late eighth thread cannot be told apart from a leak (the soak suite saw one).
    Each pool thread is started by a task that waits until all of them run at once. A pool that
    cannot start them all in time still serves: it grows on demand, as gunicorn's does, and says so.
    """
    pool = getattr(worker, "tpool", None)
    if not isinstance(pool, ThreadPoolExecutor):
        return  # sync and async workers have no request thread pool
    size = max(1, int(worker.cfg.threads))
    everyone_started = threading.Barrier(size)
    tasks = [pool.submit(everyone_started.wait, THREAD_START_TIMEOUT) for _ in range(size)]
    done, late = wait_futures(tasks, timeout=THREAD_START_TIMEOUT + 1.0)
    if late or any(task.exception() is not None for task in done):
        everyone_started.abort()  # release the threads that did start
        worker.log.warning("Worker %s: not all %s request threads started; the pool grows on demand", worker.pid, size)


def child_exit(server: Any, worker: Any) -> None:
    """Tell prometheus-client a worker is gone (its live gauges stop counting)."""
    if _multiproc_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
