"""Structured, process-safe, non-blocking JSON logging for the app and its workers.

Design, and why not simpler:
- Request threads never touch the disk and do as little as they can: a `ContextQueueHandler` on
  the root logger freezes a copy of the record (message rendered, mutable extras copied, traceback
  rendered, the log context referenced) and hands it to a bounded queue; `log_security_event` and
  `log_performance_metric`, which run on every request, queue a `StructuredEvent` tuple instead when
  nothing but the queue would see the record. A full queue drops the record and counts it.
- One listener thread per process drains the queue in batches; its formatter redacts secrets,
  neutralises control characters and merges the context while it renders each line (a batch at a
  time, with warm caches), so no line reaches a file unredacted. Each batch is appended to its files
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
import errno
import logging
import logging.config
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from concurrent_log_handler import ConcurrentRotatingFileHandler
from pythonjsonlogger.orjson import OrjsonFormatter

from .redaction import MASK, clean_text, is_secret_key, redact, redact_value

SECURITY_LOGGER = "oriel.security"
PERFORMANCE_LOGGER = "oriel.performance"
CONTEXT_FIELDS = ("request_id", "job_id", "trace_id", "user_id", "method", "path", "endpoint", "remote_addr")
LOG_FILES = ("app.log", "errors.log", "security.log", "performance.log")
# LogRecord attributes that are not "extra" fields supplied by the caller.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_CONTEXT_SET = frozenset(CONTEXT_FIELDS)
_NULL_CONTEXT: dict[str, None] = dict.fromkeys(CONTEXT_FIELDS)
_FIXED_FIELDS = frozenset({"timestamp", "level", "logger", "pid", "message"})
_NOT_EXTRA = _RESERVED | _CONTEXT_SET
# Extra values that cannot change after the call: the request thread queues them as they are.
_SCALARS = frozenset({str, int, float, bool, type(None)})
# Lines written per lock acquisition at most; a file may pass maxBytes by up to one batch.
MAX_BATCH = 1024
# How long the writer waits for more records after the first one of a batch. Each batch costs a
# lock, a stat and a write per file and a wake-up, and every wake-up of this thread takes the GIL
# from busy request threads: under load, 0.5 s batches cost a gunicorn worker measurably less than
# 0.1 s ones (4% of a 401's CPU in one run). The price: a process killed with SIGKILL loses up to
# half a second of lines (any exit that runs atexit writes them). `flush_logs` and `stop` cut the
# wait short, so tests and shutdown never wait for it.
BATCH_LINGER_SECONDS = 0.5
# Logger name and level pairs whose sinks are remembered (names are module names: a bounded set).
_MAX_ROUTES = 4096
# Write failures that an open() probe cannot see past: the disk (or the file size limit) is full.
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# A queue drop older than this no longer marks logging as degraded.
DROP_MEMORY_SECONDS = 60.0

_log_context: ContextVar[dict[str, Any] | None] = ContextVar("log_context", default=None)
_EMPTY_CONTEXT: Mapping[str, Any] = MappingProxyType({})


def _clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    # Sanitised once at bind time, so every record of a request reuses the cleaned values.
    return {k: (v if isinstance(v, (int, float, bool)) else clean_text(str(v))) for k, v in fields.items()}


def bind_log_context(**fields: Any) -> None:
    """Attach fields (request_id, user_id, job_id...) to every log line of the current context."""
    current = dict(_log_context.get() or {})
    current.update(_clean_fields({k: v for k, v in fields.items() if v is not None}))
    _log_context.set(current)


def bind_cleaned_log_context(fields: dict[str, Any]) -> None:
    """`bind_log_context` for fields the caller cleaned itself (`clean_text`) and hands over: no None values.

    The request-start hook binds six fields on every request; this skips the copies and the generic
    cleaning pass, so the caller can leave out values that cannot hold a secret (its own ids).
    """
    current = _log_context.get()
    _log_context.set({**current, **fields} if current else fields)


def clear_log_context() -> None:
    """Forget the current context's log fields (end of a request or job)."""
    _log_context.set(None)


def current_log_context() -> dict[str, Any]:
    """A copy of the current context's log fields."""
    return dict(_log_context.get() or {})


def peek_log_context() -> Mapping[str, Any]:
    """The current context's log fields without a copy (read-only: every bind replaces the dict)."""
    return _log_context.get() or _EMPTY_CONTEXT


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
    """Freezes a record on the caller's thread and queues it without blocking.

    The request thread only copies: the message is rendered (its arguments may change later),
    mutable extras are copied (`_frozen`), a traceback is rendered, and the log context (an
    immutable dict, replaced on every bind) is referenced. Redaction, neutralisation and the context
    merge happen on the writer thread, in the files' formatter (`JsonFormatter.add_fields`;
    `finish_record` for other handlers), a batch at a time with warm caches instead of once per
    record between two requests.
    """

    def __init__(self, log_queue: LogQueue) -> None:
        super().__init__(log_queue)  # type: ignore[arg-type] - only our `enqueue` touches the queue
        self.dropped = 0
        self.last_drop: float | None = None

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override] - same contract
        """Filter and queue; no handler lock, the queue is thread-safe and this runs on every request."""
        if self.filters and not self.filter(record):
            return False
        self.emit(record)
        return True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A copy that owns no live objects and that nothing the caller does later can change."""
        # A shallow copy without LogRecord.__init__ (which costs more than the rest of this method);
        # other handlers (pytest's caplog) still see the original.
        prepared = logging.LogRecord.__new__(logging.LogRecord)
        attrs, fields = record.__dict__, prepared.__dict__
        fields.update(attrs)
        fields["msg"] = fields["message"] = record.getMessage()
        fields["args"] = None
        for key in attrs.keys() - _RESERVED:
            value = attrs[key]
            if type(value) not in _SCALARS:
                fields[key] = _frozen(key, value)
        if record.exc_info and record.exc_info[1] is not None:
            fields["exc_type"] = type(record.exc_info[1]).__name__
            fields["_traceback"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            fields["_traceback"] = record.exc_text
        if record.stack_info:
            fields["_stack"] = record.stack_info
        fields["exc_info"] = fields["exc_text"] = fields["stack_info"] = None
        fields["_context"] = _log_context.get()
        return prepared

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue without waiting; count what a full queue drops."""
        if not self.queue.offer(record):
            self.count_drop()

    def count_drop(self) -> None:
        """Count a record the full queue refused (shown by `sink_status` as degraded for a while)."""
        self.dropped += 1
        self.last_drop = time.time()


class FlatFields(dict[str, Any]):
    """A flat dict of scalars (request headers) given to a log helper: queued as is, redacted by the writer.

    The caller hands it over: it must be fresh and never changed afterwards. Plain dicts are copied
    (and nested ones redacted) on the calling thread instead.
    """


# What the writer redacts: scalars and flat copies (everything else was redacted when frozen).
_QUEUEABLE = _SCALARS | {FlatFields}


def _frozen(key: str, value: Any) -> Any:
    """An extra's value as the writer may read it later: a copy nothing the caller does can change."""
    if type(value) is dict and _SCALARS.issuperset(map(type, value.values())):
        return FlatFields(value)
    return redact_value(key, value)  # nested or unknown values: a redacted copy now


def _redacted(key: str, value: Any) -> Any:
    """An extra's value as it may be written: scalars and shallow header copies redacted now."""
    kind = type(value)
    if kind is str:  # most values: redact_value's own first case, without the call
        return MASK if is_secret_key(key) else clean_text(value)
    if kind in _QUEUEABLE:
        return redact_value(key, value)
    return value  # containers were redacted when the record was frozen


def finish_record(record: logging.LogRecord) -> None:
    """Redact a prepared record in place and merge its context, for handlers other than the files.

    The file sinks' formatter does the same while it writes (`JsonFormatter.add_fields`); other
    handlers (the development console) format the record themselves and need it finished first.
    """
    fields = record.__dict__
    fields["msg"] = fields["message"] = clean_text(record.message)
    for key in fields.keys() - _RESERVED:
        if key[0] != "_":
            fields[key] = _redacted(key, fields[key])
    raw = fields.pop("_traceback", None)
    if raw is not None:
        fields["traceback"] = redact(raw)
    raw = fields.pop("_stack", None)
    if raw is not None:
        fields["stack"] = redact(raw)
    context = fields.pop("_context", None)
    if context:
        for key, value in context.items():
            if fields.get(key) is None:  # an explicit extra wins over the bound context
                fields[key] = value


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
        self._out_of_space = False

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
        self._maybe_torn = self._out_of_space = False
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
        # Opening the file proves nothing about space: only a write that succeeds clears these.
        self._out_of_space = isinstance(exc, OSError) and exc.errno in _SPACE_ERRNOS
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
        if self._out_of_space:
            return False
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
        """The fixed fields, the context (null when absent), the extras; redacted on the way.

        Same output as python-json-logger's generic `add_fields` with our renames, in a stable order,
        and it applies what the request thread left to the writer (`ContextQueueHandler.prepare`):
        redaction and neutralisation, the bound context, the traceback. One pass per line: this runs
        for every line on the writer thread. Idempotent on a record `finish_record` already handled.
        """
        attrs = record.__dict__
        _fill_fields(
            log_record,
            record.created,
            record.levelname,
            record.name,
            record.process,
            record.message,
            attrs,
            attrs.get("_context"),
            _NOT_EXTRA,
        )
        raw = attrs.get("_traceback")
        if raw is not None:
            log_record["traceback"] = redact(raw)
        raw = attrs.get("_stack")
        if raw is not None:
            log_record["stack"] = redact(raw)
        log_record.update(message_dict)

    def format_event(self, event: StructuredEvent) -> str:
        """The line for a structured event, without making a `LogRecord` first (same output)."""
        log_data: dict[str, Any] = {}
        level = _LEVEL_NAMES.get(event.level) or logging.getLevelName(event.level)
        pid = os.getpid()
        _fill_fields(
            log_data, event.created, level, event.name, pid, event.message, event.extra, event.context, _CONTEXT_SET
        )
        return self.serialize_log_record(self.process_log_record(log_data))


def _fill_fields(
    log_record: dict[str, Any],
    created: float,
    levelname: str,
    name: str,
    pid: int | None,
    message: str,
    fields: Mapping[str, Any],
    context: Mapping[str, Any] | None,
    not_extra: frozenset[str],
) -> None:
    """Fill a line's fields in their fixed order: `fields` holds the extras (and maybe more, `not_extra`)."""
    log_record["timestamp"] = datetime.fromtimestamp(created, tz=UTC)
    log_record["level"] = levelname
    log_record["logger"] = name
    log_record["pid"] = pid
    log_record["message"] = clean_text(message)
    log_record.update(_NULL_CONTEXT)  # every context field, null when absent, in a fixed order
    if context:  # cleaned when bound; never over a fixed field
        if _FIXED_FIELDS.isdisjoint(context):
            log_record.update(context)
        else:
            log_record.update((k, v) for k, v in context.items() if k not in _FIXED_FIELDS)
    for key, value in fields.items():
        if key in not_extra or key[0] == "_":
            if value is not None and key in _CONTEXT_SET:  # an explicit context field wins over the bound one
                log_record[key] = _redacted(key, value)
        else:
            log_record[key] = _redacted(key, value)


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


class LogQueue:
    """The bounded record queue between the threads that log and the one that writes.

    A deque (append and popleft are atomic under the GIL) rather than `queue.Queue`: putting a
    record costs one append, plus one wake-up only when the writer sleeps, instead of a lock round
    and a condition notify per record. `flush_logs` queues a barrier and waits for the writer to
    pass it.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._ready = threading.Event()  # set when items may be waiting for the writer

    def offer(self, item: Any) -> bool:
        """Queue `item` unless `maxsize` items are already waiting; whether it was queued."""
        items = self._items
        if len(items) >= self.maxsize:
            return False
        items.append(item)
        if not self._ready.is_set():
            self._ready.set()
        return True

    def put(self, item: Any) -> None:
        """Queue `item` whatever the size: stop markers and flush barriers are never dropped."""
        self._items.append(item)
        self._ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until something was queued (or `timeout`); whether something may be waiting."""
        return self._ready.wait(timeout)

    def take(self, limit: int) -> list[Any]:
        """Up to `limit` items in queue order, without waiting (one consumer only)."""
        self._ready.clear()  # before taking: whatever is put from now on wakes the writer again
        items = self._items
        batch = [items.popleft() for _ in range(min(limit, len(items)))]
        if items:
            self._ready.set()  # more than a batch was waiting
        return batch

    def qsize(self) -> int:
        """Items waiting now."""
        return len(self._items)


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
        self._routes: dict[tuple[str, int], tuple[int, ...]] = {}

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
        self.queue.put(_STOP)
        self.hurry()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self.queue.wait()
            if self.queue.qsize() < MAX_BATCH:
                # Linger so one wake-up and one lock per file serve many records: under load this
                # turns three syscall rounds per request into one per file per linger.
                self._hurry.wait(BATCH_LINGER_SECONDS)
                self._hurry.clear()
            records: list[logging.LogRecord | StructuredEvent] = []
            barriers: list[threading.Event] = []
            stop = False
            for item in self.queue.take(MAX_BATCH):
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    barriers.append(item)
                else:
                    records.append(item)
            try:
                if records:
                    self.write_batch(records)
            except Exception as exc:  # noqa: BLE001 - the writer thread must outlive any bad batch
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                for barrier in barriers:  # everything queued before each barrier is written now
                    barrier.set()
            if stop:
                return

    def write_batch(self, items: list[logging.LogRecord | StructuredEvent]) -> None:
        """Format each record once, then hand every sink the lines meant for it."""
        per_sink: list[list[str]] = [[] for _ in self.sinks]
        finished: list[logging.LogRecord] = []
        for item in items:
            try:
                if type(item) is StructuredEvent:
                    name, levelno = item.name, item.level
                    if self.others:  # the console formats for itself: it needs the finished record
                        record = item.as_record()
                        finish_record(record)
                        finished.append(record)
                    line = self.formatter.format_event(item)
                else:
                    name, levelno = item.name, item.levelno
                    if self.others:
                        finish_record(item)
                        finished.append(item)
                    line = self.formatter.format(item)
            except Exception as exc:  # noqa: BLE001 - one unformattable record must not cost the batch
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            for index in self._route(name, levelno):
                per_sink[index].append(line)
        for sink, lines in zip(self.sinks, per_sink, strict=True):
            if lines:
                sink.write_lines(lines)
        for handler in self.others:
            for record in finished:
                if record.levelno >= handler.level:
                    handler.handle(record)

    def _route(self, name: str, levelno: int) -> tuple[int, ...]:
        """The sinks a record goes to: sink filters look at the logger name only, so remember per name."""
        key = (name, levelno)
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= _MAX_ROUTES:
                self._routes.clear()
            probe = logging.makeLogRecord({"name": name, "levelno": levelno})
            route = tuple(i for i, sink in enumerate(self.sinks) if levelno >= sink.level and sink.filter(probe))
            self._routes[key] = route
        return route


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

_security_logger = logging.getLogger(SECURITY_LOGGER)
_performance_logger = logging.getLogger(PERFORMANCE_LOGGER)


# LogRecord attributes of the records `_emit` builds itself, with the values `makeRecord` gives
# when there is no caller to look up (thread and process names are left out, as with
# `logging.logThreads`/`logMultiprocessing` off: no line shows them).
_BUILT_RECORD_DEFAULTS: dict[str, Any] = {
    "args": None,
    "pathname": "(unknown file)",
    "filename": "(unknown file)",
    "module": "(unknown file)",
    "lineno": 0,
    "funcName": "(unknown function)",
    "exc_info": None,
    "exc_text": None,
    "stack_info": None,
    "threadName": None,
    "processName": None,
    "taskName": None,
}
_LOADED_AT = time.time()
_LEVEL_NAMES = {level: logging.getLevelName(level) for level in (10, 20, 30, 40, 50)}


def _queue_is_only_handler(logger: logging.Logger, level: int, qh: ContextQueueHandler) -> bool:
    """Whether `logger`'s records at `level` reach our queue handler and nothing else, unfiltered."""
    if logger.disabled or logger.filters or qh.filters or level < qh.level:
        return False
    root = logging.root
    if logger.parent is root and not logger.handlers and logger.propagate:  # the usual shape
        return len(root.handlers) == 1 and root.handlers[0] is qh
    found = False
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if handler is not qh:
                return False
            found = True
        if not node.propagate:
            break
        node = node.parent
    return found


class StructuredEvent(NamedTuple):
    """What `_emit` queues for a structured event: the writer makes the log record (`as_record`)."""

    name: str
    level: int
    message: str
    extra: dict[str, Any]  # owned by the event; container values already frozen
    context: dict[str, Any] | None
    created: float
    thread: int

    def as_record(self) -> logging.LogRecord:
        """The record `ContextQueueHandler.prepare` would have queued for this event."""
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(_BUILT_RECORD_DEFAULTS)
        created = self.created
        fields.update(
            name=self.name,
            msg=self.message,
            message=self.message,
            levelno=self.level,
            levelname=_LEVEL_NAMES.get(self.level) or logging.getLevelName(self.level),
            created=created,
            msecs=int((created - int(created)) * 1000) + 0.0,
            relativeCreated=(created - _LOADED_AT) * 1000,
            thread=self.thread,
            process=os.getpid(),
            _context=self.context,
        )
        fields.update(self.extra)
        return record


def _emit(logger: logging.Logger, level: int, msg: str, args: tuple[Any, ...], extra: dict[str, Any]) -> None:
    """Log one structured event: straight onto the queue when nothing else would see the record.

    These helpers run on every request. When the queue handler is the logger's only destination
    (production), the request thread queues a `StructuredEvent` tuple and the writer makes the
    record, skipping `makeRecord` (caller and thread-name look-ups no line shows), the handler chain
    and the copy in `prepare`: the same line is written. Any other handler or filter on the way
    (pytest's caplog, a deployer's error tracker) gets the standard path, `makeRecord` and
    `Logger.handle`. `extra` must be the caller's own fresh dict (the helpers build one).
    """
    qh = _state.queue_handler
    if qh is not None and _queue_is_only_handler(logger, level, qh):
        if not _QUEUEABLE.issuperset(map(type, extra.values())):
            for key, value in extra.items():  # `extra` is the helper's own dict: frozen in place
                if type(value) not in _QUEUEABLE:
                    extra[key] = _frozen(key, value)
        message = msg % args if args else msg
        # tuple.__new__: a NamedTuple's own constructor is a Python function, and this runs per request.
        event = (logger.name, level, message, extra, _log_context.get(), time.time(), threading.get_ident())
        if not qh.queue.offer(tuple.__new__(StructuredEvent, event)):
            qh.count_drop()
        return
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
        extra = {"metric": metric_name, "value": value, "unit": unit, **_safe_extra(fields)}
        _emit(_performance_logger, level, "%s=%s%s", (metric_name, value, unit), extra)


def _safe_extra(fields: dict[str, Any]) -> dict[str, Any]:
    # LogRecord refuses extras that clash with its own attributes; prefix them instead.
    if _RESERVED.isdisjoint(fields):
        return fields
    return {(f"field_{k}" if k in _RESERVED else k): v for k, v in fields.items()}
