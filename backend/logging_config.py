"""Structured, process-safe, non-blocking JSON logging for the app and its workers.

Design, and why not simpler:
- Request threads never touch the disk: a `ContextQueueHandler` on the root logger captures the
  log context (request ID, user, path...) and redacts the record, then hands it to a bounded queue.
  One listener thread per process writes it out. A full queue drops the record and counts it
  rather than block a request.
- Files are written by `concurrent-log-handler`, which locks across processes around every write
  and rotation and reopens a file another process rotated away. The stdlib `RotatingFileHandler`
  loses and tears lines with several processes (SPEC section 10).
- Each file sink survives a missing, read-only or full `LOG_DIR`: it records the failure (shown
  by the health endpoint through `sink_status()`), drops the line and retries later.
"""

from __future__ import annotations

import atexit
import logging
import logging.config
import os
import queue
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any

from concurrent_log_handler import ConcurrentRotatingFileHandler
from pythonjsonlogger.orjson import OrjsonFormatter

from .redaction import neutralise, redact, redact_value

SECURITY_LOGGER = "oriel.security"
PERFORMANCE_LOGGER = "oriel.performance"
CONTEXT_FIELDS = ("request_id", "job_id", "trace_id", "user_id", "method", "path", "endpoint", "remote_addr")
# LogRecord attributes that are not "extra" fields supplied by the caller.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_log_context: ContextVar[dict[str, Any] | None] = ContextVar("log_context", default=None)


def bind_log_context(**fields: Any) -> None:
    """Attach fields (request_id, user_id, job_id...) to every log line of the current context."""
    current = dict(_log_context.get() or {})
    current.update({k: v for k, v in fields.items() if v is not None})
    _log_context.set(current)


def clear_log_context() -> None:
    """Forget the current context's log fields (end of a request or job)."""
    _log_context.set(None)


def current_log_context() -> dict[str, Any]:
    """A copy of the current context's log fields."""
    return dict(_log_context.get() or {})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields for the duration of a block (used by job workers for `job_id`)."""
    token = _log_context.set({**(_log_context.get() or {}), **fields})
    try:
        yield
    finally:
        _log_context.reset(token)


class ContextQueueHandler(QueueHandler):
    """Enriches and redacts a record on the caller's thread, then queues it without blocking."""

    def __init__(self, log_queue: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(log_queue)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Freeze message, context and traceback into a picklable, redacted copy."""
        prepared = logging.makeLogRecord(record.__dict__)
        message = record.getMessage()
        prepared.msg = neutralise(redact(message))
        prepared.args = None
        prepared.message = prepared.msg
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            prepared.exc_type = type(exc).__name__
            prepared.traceback = redact("".join(traceback.format_exception(*record.exc_info)))
        elif record.exc_text:
            prepared.traceback = redact(record.exc_text)
        prepared.exc_info = None
        prepared.exc_text = None
        prepared.stack_info = None
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                setattr(prepared, key, redact_value(key, value))
        for key, value in (_log_context.get() or {}).items():
            if getattr(prepared, key, None) is None:
                setattr(prepared, key, neutralise(redact(str(value))))
        return prepared

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue without waiting; count what a full queue drops."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class SafeRotatingFileHandler(ConcurrentRotatingFileHandler):
    """A process-safe rotating file that degrades instead of failing when the disk does."""

    retry_after_seconds = 5.0

    def __init__(self, filename: str, **kwargs: Any) -> None:
        self.sink_name = Path(filename).name
        self.failed_since: float | None = None
        self.last_error: str | None = None
        self.dropped = 0
        self.written = 0
        self._next_attempt = 0.0
        self._init_kwargs = kwargs
        self._ready = False
        logging.Handler.__init__(self)
        self.baseFilename = os.path.abspath(filename)
        self._try_open()

    def _try_open(self) -> bool:
        try:
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            level, formatter = self.level, self.formatter
            filters = list(self.filters)
            ConcurrentRotatingFileHandler.__init__(self, self.baseFilename, **self._init_kwargs)
            self.setLevel(level)
            self.setFormatter(formatter)
            self.filters = filters
            self._ready = True
            return True
        except OSError as exc:
            self._record_failure(exc)
            return False

    def _record_failure(self, exc: BaseException) -> None:
        if self.failed_since is None:
            self.failed_since = time.time()
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._next_attempt = time.monotonic() + self.retry_after_seconds

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record, or drop and count it while the sink is failing."""
        if not self._ready and (time.monotonic() < self._next_attempt or not self._try_open()):
            self.dropped += 1
            return
        failures_before = self.dropped
        super().emit(record)
        if self.dropped == failures_before:
            self.written += 1
            if self.failed_since is not None and self._still_writable():
                self.failed_since = None
                self.last_error = None

    def _still_writable(self) -> bool:
        return os.access(self.baseFilename, os.W_OK)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API name
        """Record the failure for the health endpoint instead of printing to stderr."""
        self.dropped += 1
        import sys

        exc = sys.exc_info()[1]
        self._record_failure(exc if exc is not None else OSError("unknown write failure"))
        try:
            if self.stream is not None:
                self.stream.close()
        except OSError:
            pass
        self.stream = None  # type: ignore[assignment] - reopen on the next attempt

    def status(self) -> dict[str, Any]:
        """This sink's health for monitoring."""
        return {
            "file": self.sink_name,
            "state": "ok" if self.failed_since is None else "degraded",
            "failed_since": self.failed_since,
            "last_error": self.last_error,
            "written": self.written,
            "dropped": self.dropped,
        }


class _LoggerFilter(logging.Filter):
    """Pass records by logger name: `include` prefixes, or everything but `exclude` prefixes."""

    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.include, self.exclude = include, exclude

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if self.include:
            return name.startswith(self.include)
        return not name.startswith(self.exclude)


class JsonFormatter(OrjsonFormatter):
    """python-json-logger with orjson and the field names of SPEC section 4."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
        )

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        """Add the context fields (null when absent) so every line has the same shape."""
        super().add_fields(log_record, record, message_dict)
        for name in CONTEXT_FIELDS:
            log_record.setdefault(name, getattr(record, name, None))


class ConsoleFormatter(logging.Formatter):
    """Readable single lines for development consoles."""

    def format(self, record: logging.LogRecord) -> str:
        """`time level logger [request] message`, with the traceback indented below."""
        rid = getattr(record, "request_id", None) or getattr(record, "job_id", None) or "-"
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name} [{rid}] {record.getMessage()}"
        tb = getattr(record, "traceback", None)
        return f"{line}\n{tb.rstrip()}" if tb else line


class _LoggingState:
    def __init__(self) -> None:
        self.listener: QueueListener | None = None
        self.queue_handler: ContextQueueHandler | None = None
        self.sinks: list[SafeRotatingFileHandler] = []
        self.lock = threading.Lock()


_state = _LoggingState()


def _file_sinks(log_dir: Path, max_bytes: int, backup_count: int) -> list[SafeRotatingFileHandler]:
    kwargs = {"maxBytes": max_bytes, "backupCount": backup_count, "encoding": "utf-8"}
    specs: list[tuple[str, int, logging.Filter]] = [
        ("app.log", logging.DEBUG, _LoggerFilter(exclude=(SECURITY_LOGGER, PERFORMANCE_LOGGER))),
        ("errors.log", logging.ERROR, _LoggerFilter()),
        ("security.log", logging.DEBUG, _LoggerFilter(include=(SECURITY_LOGGER,))),
        ("performance.log", logging.DEBUG, _LoggerFilter(include=(PERFORMANCE_LOGGER,))),
    ]
    formatter = JsonFormatter()
    sinks = []
    for name, level, log_filter in specs:
        sink = SafeRotatingFileHandler(str(log_dir / name), **kwargs)
        sink.setLevel(level)
        sink.setFormatter(formatter)
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
) -> None:
    """Set up the four JSON log files behind one queue; safe to call again (reconfigures)."""
    with _state.lock:
        shutdown_logging()
        log_queue: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=queue_size)
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
                },
            }
        )
        qh = next(h for h in logging.getLogger().handlers if isinstance(h, ContextQueueHandler))
        sinks = _file_sinks(Path(log_dir), max_bytes, backup_count)
        targets: list[logging.Handler] = list(sinks)
        if console:
            # The console gets the prepared (redacted, context-bearing) record, like the files.
            console_handler = logging.StreamHandler()
            console_handler.setFormatter(ConsoleFormatter())
            targets.append(console_handler)
        listener = QueueListener(log_queue, *targets, respect_handler_level=True)
        listener.start()
        _state.listener, _state.queue_handler, _state.sinks = listener, qh, sinks


def shutdown_logging() -> None:
    """Flush the queue and close the files (at exit, and before reconfiguring)."""
    listener = _state.listener
    if listener is not None:
        listener.stop()  # drains what is queued before returning
        for handler in listener.handlers:
            handler.close()
    if _state.queue_handler is not None:
        logging.getLogger().removeHandler(_state.queue_handler)
    _state.listener, _state.queue_handler, _state.sinks = None, None, []


def flush_logs(timeout: float = 5.0) -> None:
    """Block until every record queued so far has been written (tests and shutdown)."""
    qh = _state.queue_handler
    if qh is None:
        return
    deadline = time.monotonic() + timeout
    while qh.queue.unfinished_tasks and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.005)


def sink_status() -> dict[str, Any]:
    """The state of every log sink (for the health endpoints)."""
    sinks = [sink.status() for sink in _state.sinks]
    queue_dropped = _state.queue_handler.dropped if _state.queue_handler else 0
    degraded = any(s["state"] != "ok" for s in sinks) or queue_dropped > 0
    return {
        "state": "not_configured" if not sinks else ("degraded" if degraded else "ok"),
        "queue_dropped": queue_dropped,
        "sinks": sinks,
    }


atexit.register(shutdown_logging)

_security_logger = logging.getLogger(SECURITY_LOGGER)
_performance_logger = logging.getLogger(PERFORMANCE_LOGGER)


def log_security_event(event_type: str, message: str, *, level: int = logging.WARNING, **fields: Any) -> None:
    """Write a security event (login, token failure, denial, admin action) to `security.log`."""
    _security_logger.log(level, message, extra={"event_type": event_type, **_safe_extra(fields)})


def log_performance_metric(metric_name: str, value: float, *, unit: str = "ms", **fields: Any) -> None:
    """Write a performance metric (request duration, outbound call...) to `performance.log`."""
    _performance_logger.info(
        "%s=%s%s",
        metric_name,
        value,
        unit,
        extra={"metric": metric_name, "value": value, "unit": unit, **_safe_extra(fields)},
    )


def _safe_extra(fields: Mapping[str, Any]) -> dict[str, Any]:
    # LogRecord refuses extras that clash with its own attributes; prefix them instead.
    return {(f"field_{k}" if k in _RESERVED else k): v for k, v in fields.items()}
