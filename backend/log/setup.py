"""Setting logging up and tearing it down: the four files behind one queue, fork and exit, flush, health."""

from __future__ import annotations

import atexit
import logging
import logging.config
import os
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from .batching import BatchingListener, ContextQueueHandler, LogQueue
from .fields import DROP_MEMORY_SECONDS, PERFORMANCE_LOGGER, SECURITY_LOGGER
from .formatting import ConsoleFormatter, JsonFormatter
from .sinks import SafeRotatingFileHandler, _LoggerFilter


class _LoggingState:
    def __init__(self) -> None:
        self.listener: BatchingListener | None = None
        self.queue_handler: ContextQueueHandler | None = None
        self.lock = threading.Lock()
        self.fork_hook_installed = False
        # Streams inherited over fork: kept referenced so garbage collection never flushes a
        # parent's half-written buffer into the file a second time.
        self.inherited: list[Any] = []


_state = _LoggingState()


def _file_sinks(
    log_dir: Path, max_bytes: int, backup_count: int, retry_seconds: float
) -> list[SafeRotatingFileHandler]:
    specs: list[tuple[str, int, logging.Filter]] = [
        ("app.log", logging.DEBUG, _LoggerFilter(exclude=(SECURITY_LOGGER, PERFORMANCE_LOGGER))),
        ("errors.log", logging.ERROR, _LoggerFilter()),
        ("security.log", logging.DEBUG, _LoggerFilter(include=(SECURITY_LOGGER,))),
        ("performance.log", logging.DEBUG, _LoggerFilter(include=(PERFORMANCE_LOGGER,))),
    ]
    with suppress(OSError):  # a missing or unusable directory degrades the sinks, it does not stop the app
        log_dir.mkdir(parents=True, exist_ok=True)
    sinks = []
    for name, level, log_filter in specs:
        sink = SafeRotatingFileHandler(
            str(log_dir / name), max_bytes=max_bytes, backup_count=backup_count, retry_seconds=retry_seconds
        )
        sink.setLevel(level)
        sink.setFormatter(JsonFormatter())
        sink.addFilter(log_filter)
        sinks.append(sink)
    return sinks


def configure_logging(
    log_dir: str | os.PathLike[str] = "logs",
    level: str = "INFO",
    console: bool = False,
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 10,
    queue_size: int = 100_000,
    retry_seconds: float = 2.0,
) -> None:
    """Set up the four JSON log files behind one queue; safe to call again (reconfigures)."""
    with _state.lock:
        shutdown_logging()
        log_queue = LogQueue(maxsize=queue_size)
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"queue": {"()": ContextQueueHandler, "log_queue": log_queue}},
                "root": {"level": level.upper(), "handlers": ["queue"]},
                "loggers": {
                    # werkzeug's access log duplicates performance.log; SDKs are chatty at INFO.
                    "werkzeug": {"level": "WARNING"},
                    "urllib3": {"level": "WARNING"},
                    "google": {"level": "WARNING"},
                    "stripe": {"level": "WARNING"},
                    # One INFO line per 429 would duplicate the aggregated security.log line (rate_limit_log).
                    "flask-limiter": {"level": "WARNING"},
                },
            }
        )
        qh = next(h for h in logging.getLogger().handlers if isinstance(h, ContextQueueHandler))
        others: list[logging.Handler] = []
        if console:
            # The console gets the prepared (redacted, context-bearing) record, like the files.
            console_handler = logging.StreamHandler()
            console_handler.setFormatter(ConsoleFormatter())
            others.append(console_handler)
        listener = BatchingListener(
            log_queue, _file_sinks(Path(log_dir), max_bytes, backup_count, retry_seconds), others
        )
        listener.start()
        _state.listener, _state.queue_handler = listener, qh
        if not _state.fork_hook_installed:
            os.register_at_fork(after_in_child=_restart_after_fork)
            _state.fork_hook_installed = True


def _restart_after_fork() -> None:
    """In a forked child: a fresh queue and a writer thread of its own (the parent's did not survive)."""
    _state.lock = threading.Lock()
    old, qh = _state.listener, _state.queue_handler
    if old is None or qh is None:
        return
    for sink in old.sinks:
        if sink.stream is not None:
            _state.inherited.append(sink.stream)
            sink.stream = None  # type: ignore[assignment] - reopened on the next write
    fresh = LogQueue(maxsize=old.queue.maxsize)
    qh.queue = fresh
    qh.dropped, qh.last_drop = 0, None
    _state.listener = BatchingListener(fresh, old.sinks, old.others)
    _state.listener.start()
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        # multiprocessing children leave through os._exit, skipping atexit, and clear their exit
        # finalizers right after fork: register ours from its after-fork callbacks, which run later.
        mp_util.register_after_fork(_state, _flush_on_multiprocessing_exit)


def _flush_on_multiprocessing_exit(_state_obj: object) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(None, shutdown_logging, exitpriority=-100)


def shutdown_logging() -> None:
    """Flush the queue and close the files (at exit, and before reconfiguring)."""
    listener = _state.listener
    if listener is not None:
        listener.stop()
        for handler in [*listener.sinks, *listener.others]:
            handler.close()
    if _state.queue_handler is not None:
        logging.getLogger().removeHandler(_state.queue_handler)
    _state.listener, _state.queue_handler = None, None


def flush_logs(timeout: float = 5.0) -> None:
    """Block until every record queued so far has been written (tests and shutdown)."""
    qh, listener = _state.queue_handler, _state.listener
    if qh is None or listener is None:
        return
    barrier = threading.Event()
    qh.queue.put(barrier)
    deadline = time.monotonic() + timeout
    # Hurry on every round: the barrier may sit behind more than one batch.
    while not barrier.is_set() and time.monotonic() < deadline:
        listener.hurry()
        barrier.wait(min(0.02, max(0.0, deadline - time.monotonic())))


def sink_status() -> dict[str, Any]:
    """The state of every log sink (for the health endpoints)."""
    listener, qh = _state.listener, _state.queue_handler
    if listener is None or qh is None:
        return {"state": "not_configured", "queue_dropped": 0, "queue_depth": 0, "sinks": []}
    sinks = [sink.status() for sink in listener.sinks]
    recent_drop = qh.last_drop is not None and time.time() - qh.last_drop < DROP_MEMORY_SECONDS
    writer_alive = listener._thread is not None and listener._thread.is_alive()
    degraded = any(s["state"] != "ok" for s in sinks) or recent_drop or not writer_alive
    return {
        "state": "degraded" if degraded else "ok",
        "queue_dropped": qh.dropped,
        "queue_depth": qh.queue.qsize(),
        "writer_alive": writer_alive,
        "writer_errors": listener.errors,
        "sinks": sinks,
    }


atexit.register(shutdown_logging)
