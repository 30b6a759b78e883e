"""Structured, process-safe, non-blocking JSON logging for the app and its workers.

Design, and why not simpler:
- Request threads never touch the disk: a `ContextQueueHandler` on the root logger renders the
  message, attaches the log context (request ID, user, path...), redacts and neutralises it, then
  hands it to a bounded queue. A full queue drops the record and counts it rather than block.
- One listener thread per process drains the queue in batches and appends each batch to its files
  under one cross-process lock. The files are `concurrent-log-handler` sinks: it locks around every
  write and rotation and reopens a file another process rotated away. The stdlib
  `RotatingFileHandler` loses and tears lines with several processes (SPEC section 10).
- A thread does not survive `fork()`: gunicorn with `--preload` and forking job runners would get a
  queue nobody drains. An at-fork hook gives each child a fresh queue and its own listener.
- Each file sink survives a missing, read-only or full `LOG_DIR`: it records the failure (shown by
  the health endpoint through `sink_status()`), drops and counts lines, and retries every few
  seconds; a line torn by a full disk is terminated before the next one is written.
"""

from __future__ import annotations

import atexit
import logging
import logging.config
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from pathlib import Path
from typing import Any

from concurrent_log_handler import ConcurrentRotatingFileHandler
from pythonjsonlogger.orjson import OrjsonFormatter

from .redaction import clean_text, redact, redact_value

SECURITY_LOGGER = "oriel.security"
PERFORMANCE_LOGGER = "oriel.performance"
CONTEXT_FIELDS = ("request_id", "job_id", "trace_id", "user_id", "method", "path", "endpoint", "remote_addr")
LOG_FILES = ("app.log", "errors.log", "security.log", "performance.log")
# LogRecord attributes that are not "extra" fields supplied by the caller.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_NOT_EXTRA = _RESERVED | frozenset(CONTEXT_FIELDS)
# Lines written per lock acquisition at most; a file may pass maxBytes by up to one batch.
MAX_BATCH = 256
# How long the writer waits for more records after the first one of a batch. Each batch costs a
# lock, a stat and a write per file (about 25 µs each) and a thread wake-up: at a few hundred
# requests a second, 20 ms batches held 3 lines a file, 100 ms batches hold 15. `flush_logs` and
# `stop` cut the wait short, so tests and shutdown never wait for it.
BATCH_LINGER_SECONDS = 0.1
# A queue drop older than this no longer marks logging as degraded.
DROP_MEMORY_SECONDS = 60.0

_log_context: ContextVar[dict[str, Any] | None] = ContextVar("log_context", default=None)


def _clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    # Sanitised once at bind time, so every record of a request reuses the cleaned values.
    return {k: (v if isinstance(v, (int, float, bool)) else clean_text(str(v))) for k, v in fields.items()}


def bind_log_context(**fields: Any) -> None:
    """Attach fields (request_id, user_id, job_id...) to every log line of the current context."""
    current = dict(_log_context.get() or {})
    current.update(_clean_fields({k: v for k, v in fields.items() if v is not None}))
    _log_context.set(current)


def clear_log_context() -> None:
    """Forget the current context's log fields (end of a request or job)."""
    _log_context.set(None)


def current_log_context() -> dict[str, Any]:
    """A copy of the current context's log fields."""
    return dict(_log_context.get() or {})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields for the duration of a block (job workers use it for `job_id`)."""
    added = _clean_fields({k: v for k, v in fields.items() if v is not None})
    token = _log_context.set({**(_log_context.get() or {}), **added})
    try:
        yield
    finally:
        _log_context.reset(token)


class ContextQueueHandler(QueueHandler):
    """Enriches and redacts a record on the caller's thread, then queues it without blocking."""

    def __init__(self, log_queue: queue.Queue[Any]) -> None:
        super().__init__(log_queue)
        self.dropped = 0
        self.last_drop: float | None = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Freeze message, context and traceback into a redacted copy that owns no live objects."""
        # A shallow copy without LogRecord.__init__ (which costs more than the rest of this method);
        # other handlers (pytest's caplog) still see the original.
        prepared = logging.LogRecord.__new__(logging.LogRecord)
        attrs, fields = record.__dict__, prepared.__dict__
        fields.update(attrs)
        fields["msg"] = fields["message"] = clean_text(record.getMessage())
        fields["args"] = None
        for key in attrs.keys() - _RESERVED:
            fields[key] = redact_value(key, attrs[key])
        if record.exc_info and record.exc_info[1] is not None:
            prepared.exc_type = type(record.exc_info[1]).__name__
            prepared.traceback = redact("".join(traceback.format_exception(*record.exc_info)))
        elif record.exc_text:
            prepared.traceback = redact(record.exc_text)
        if record.stack_info:
            prepared.stack = redact(record.stack_info)
        prepared.exc_info = None
        prepared.exc_text = None
        prepared.stack_info = None
        context = _log_context.get()
        if context:
            for key, value in context.items():
                if fields.get(key) is None:  # an explicit extra wins over the bound context
                    fields[key] = value
        return prepared

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue without waiting; count what a full queue drops."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self.last_drop = time.time()


class SafeRotatingFileHandler(ConcurrentRotatingFileHandler):
    """A process-safe rotating file that writes batches and degrades instead of failing."""

    def __init__(self, filename: str, *, max_bytes: int, backup_count: int, retry_seconds: float = 2.0) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        self.sink_name = Path(filename).name
        self.retry_seconds = retry_seconds
        self.failed_since: float | None = None
        self.last_error: str | None = None
        self.dropped = 0
        self.written = 0
        self._next_attempt = 0.0
        self._maybe_torn = False

    def write_lines(self, lines: list[str]) -> None:
        """Append whole lines under one cross-process lock, rotating first when the file is full."""
        if self.failed_since is not None and time.monotonic() < self._next_attempt:
            self.dropped += len(lines)
            return
        try:
            if self.failed_since is not None:
                # A removed LOG_DIR comes back by itself; a file in its place keeps failing here.
                Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            self._do_lock()
            try:
                self._check_stream()
                if self._should_rotate():
                    self.doRollover()
                prefix = "\n" if self._maybe_torn and self._ends_mid_line() else ""
                self._append(prefix + "\n".join(lines))
            finally:
                self._do_unlock()
        except (OSError, RuntimeError, ValueError) as exc:
            # OSError: disk full, directory gone or replaced; RuntimeError: lock not acquired;
            # ValueError: a stream closed under us. All mean "cannot write now", never "crash".
            self._fail(exc, len(lines))
            return
        self.written += len(lines)
        self._maybe_torn = False
        self.failed_since = None

    def _append(self, text: str) -> None:
        """Write under the lock; on failure cut the file back so no partial line stays behind."""
        try:
            size = os.stat(self.baseFilename).st_size
        except FileNotFoundError:
            size = 0
        try:
            self.do_write(text)
        except OSError:
            # A full disk (ENOSPC, EFBIG) can take part of the batch. Close first (closing flushes
            # what is still buffered), then truncate: we still hold the lock, nobody else wrote.
            stream, self.stream = self.stream, None  # type: ignore[assignment]
            if stream is not None:
                with suppress(OSError, ValueError):
                    stream.close()
            with suppress(OSError):
                os.truncate(self.baseFilename, size)
            raise

    def _should_rotate(self) -> bool:
        try:
            return self.shouldRollover(None)  # type: ignore[arg-type] - the record is unused
        except OSError:
            return False

    def _ends_mid_line(self) -> bool:
        try:
            with open(self.baseFilename, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return False
                fh.seek(-1, os.SEEK_END)
                return fh.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def _fail(self, exc: BaseException, lost: int) -> None:
        self.dropped += lost
        if self.failed_since is None:
            self.failed_since = time.time()
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._next_attempt = time.monotonic() + self.retry_seconds
        self._maybe_torn = True
        # Reopen both the file and the lock file by path next time: the directory may have been
        # replaced, and writers locking different lock files would no longer exclude each other.
        for attr in ("stream", "stream_lock"):
            stream = getattr(self, attr)
            if stream is not None:
                with suppress(OSError, ValueError):
                    stream.close()
            setattr(self, attr, None)

    def _probe(self) -> bool:
        try:
            with open(self.baseFilename, "a", encoding="utf-8"):
                return True
        except OSError:
            return False

    def emit(self, record: logging.LogRecord) -> None:
        """Format and write one record (the listener normally calls `write_lines` with batches)."""
        self.write_lines([self.format(record)])

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API name
        """Record the failure for the health endpoint instead of printing to stderr."""
        exc = sys.exc_info()[1]
        self._fail(exc if exc is not None else OSError("unknown write failure"), 1)

    def status(self) -> dict[str, Any]:
        """This sink's health for monitoring (a failed sink with no traffic is probed, not trusted)."""
        if self.failed_since is not None and time.monotonic() >= self._next_attempt and self._probe():
            self.failed_since = None
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
            "%(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
            timestamp=True,
        )

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        """The fixed fields, then the context (null when absent), then the caller's extras.

        Same output as python-json-logger's generic `add_fields` with our renames, in a stable
        order and at a third of the cost: this runs for every line on the writer thread.
        """
        attrs = record.__dict__
        log_record["timestamp"] = datetime.fromtimestamp(record.created, tz=UTC)
        log_record["level"] = record.levelname
        log_record["logger"] = record.name
        log_record["pid"] = record.process
        log_record["message"] = record.message
        for name in CONTEXT_FIELDS:
            log_record[name] = attrs.get(name)
        for key, value in attrs.items():
            if key not in _NOT_EXTRA and not key.startswith("_"):
                log_record[key] = value
        log_record.update(message_dict)


class ConsoleFormatter(logging.Formatter):
    """Readable single lines for development consoles."""

    def format(self, record: logging.LogRecord) -> str:
        """`time level logger [request] message`, with the traceback indented below."""
        rid = getattr(record, "request_id", None) or getattr(record, "job_id", None) or "-"
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name} [{rid}] {record.getMessage()}"
        tb = getattr(record, "traceback", None)
        return f"{line}\n{tb.rstrip()}" if tb else line


_STOP = object()


class LogQueue(queue.Queue[Any]):
    """The bounded record queue, drained a batch at a time: one lock round per batch, not two per record."""

    def get_many(self, limit: int) -> list[Any]:
        """Up to `limit` queued items, without waiting (an empty list when there are none)."""
        with self.not_empty:  # the queue's one mutex
            items = [self._get() for _ in range(min(limit, self._qsize()))]
            if items:
                self.not_full.notify(len(items))
        return items

    def tasks_done(self, count: int) -> None:
        """`task_done()` for `count` items at once (what `flush_logs` waits on)."""
        with self.all_tasks_done:
            unfinished = self.unfinished_tasks - count
            if unfinished < 0:
                raise ValueError("tasks_done() called too many times")
            if unfinished == 0:
                self.all_tasks_done.notify_all()
            self.unfinished_tasks = unfinished


class BatchingListener:
    """Drains the queue on one thread and writes each batch to the file sinks in one go per file."""

    def __init__(
        self, log_queue: LogQueue, sinks: list[SafeRotatingFileHandler], others: list[logging.Handler]
    ) -> None:
        self.queue = log_queue
        self.sinks = sinks
        self.others = others
        self.formatter = JsonFormatter()
        self.errors = 0
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._hurry = threading.Event()

    def start(self) -> None:
        """Start the writer thread (a daemon: it must never keep a process alive)."""
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def hurry(self) -> None:
        """Write the current batch without waiting out the linger (flush and shutdown)."""
        self._hurry.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Write everything queued so far, then stop the thread."""
        if self._thread is None or not self._thread.is_alive():
            return
        self.queue.put(_STOP)  # blocking on purpose: shutdown must not lose the stop marker
        self.hurry()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            if batch[0] is not _STOP and self.queue.qsize() < MAX_BATCH:
                # Linger so one wake-up and one lock per file serve many records: under load this
                # turns three syscall rounds per request into one per file per linger.
                self._hurry.wait(BATCH_LINGER_SECONDS)
                self._hurry.clear()
            batch += self.queue.get_many(MAX_BATCH - 1)
            stop = any(item is _STOP for item in batch)
            try:
                self.write_batch([r for r in batch if r is not _STOP])
            except Exception as exc:  # noqa: BLE001 - the writer thread must outlive any bad record
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self.queue.tasks_done(len(batch))
            if stop:
                return

    def write_batch(self, records: list[logging.LogRecord]) -> None:
        """Format each record once and hand every sink the lines meant for it."""
        lines: dict[int, str] = {}
        for sink in self.sinks:
            chosen = [r for r in records if r.levelno >= sink.level and sink.filter(r)]
            if not chosen:
                continue
            out = []
            for record in chosen:
                line = lines.get(id(record))
                if line is None:
                    line = lines[id(record)] = self.formatter.format(record)
                out.append(line)
            sink.write_lines(out)
        for handler in self.others:
            for record in records:
                if record.levelno >= handler.level:
                    handler.handle(record)


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
    if qh is None:
        return
    deadline = time.monotonic() + timeout
    while qh.queue.unfinished_tasks and time.monotonic() < deadline:  # type: ignore[attr-defined]
        if listener is not None:
            listener.hurry()
        time.sleep(0.005)


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

_security_logger = logging.getLogger(SECURITY_LOGGER)
_performance_logger = logging.getLogger(PERFORMANCE_LOGGER)


def _emit(logger: logging.Logger, level: int, msg: str, args: tuple[Any, ...], extra: dict[str, Any]) -> None:
    # Logger.log would also walk the stack for the caller's file, line and function (findCaller):
    # no log line shows them, and these two helpers run on every request.
    record = logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args, None, "(unknown function)", extra)
    logger.handle(record)


def log_security_event(event_type: str, message: str, *, level: int = logging.WARNING, **fields: Any) -> None:
    """Write a security event (login, token failure, denial, admin action) to `security.log`."""
    if _security_logger.isEnabledFor(level):
        _emit(_security_logger, level, message, (), {"event_type": event_type, **_safe_extra(fields)})


def log_performance_metric(
    metric_name: str, value: float, *, unit: str = "ms", level: int = logging.INFO, **fields: Any
) -> None:
    """Write a performance metric (request duration, outbound call...) to `performance.log`."""
    if _performance_logger.isEnabledFor(level):
        _emit(
            _performance_logger,
            level,
            "%s=%s%s",
            (metric_name, value, unit),
            {"metric": metric_name, "value": value, "unit": unit, **_safe_extra(fields)},
        )


def _safe_extra(fields: Mapping[str, Any]) -> dict[str, Any]:
    # LogRecord refuses extras that clash with its own attributes; prefix them instead.
    return {(f"field_{k}" if k in _RESERVED else k): v for k, v in fields.items()}
