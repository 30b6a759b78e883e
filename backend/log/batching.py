"""Between the threads that log and the one that writes: the queue handler, the bounded queue, the writer."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from logging.handlers import QueueHandler
from typing import Any

from .context import _log_context
from .fields import _MAX_ROUTES, _RESERVED, _SCALARS, BATCH_LINGER_SECONDS, MAX_BATCH
from .formatting import JsonFormatter
from .records import StructuredEvent, _frozen, finish_record
from .sinks import SafeRotatingFileHandler


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
