"""Buffer error events and request counts per app, and write them off the request path in batches.

Recording appends to a bounded in-memory buffer (a full buffer drops and counts the event rather
than block or grow without limit). One background thread per process flushes every recorder
every `ERROR_STATS_FLUSH_MS` or as soon as one holds `ERROR_STATS_BATCH_SIZE` events. The thread
starts lazily in the process that records, and a forked child (a gunicorn worker) starts with an
empty buffer and no thread, so the parent's pending events are never written twice. `flush()`
writes synchronously (tests, shutdown); an `atexit` hook flushes what is left.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ...extensions import db
from ...resilience import database_breaker
from .events import PendingEvent
from .store import ErrorEventData, write_batch

logger = logging.getLogger(__name__)

# A batch the database keeps refusing is kept and retried this long, then dropped (and logged). It must
# outlast a database outage: the errors of that outage are the ones an operator most needs counted.
RETRY_SECONDS = 300.0
#: Raw rows kept per client-error (4xx) group and UTC minute in one process; all are counted in the rollups.
RAW_PER_MINUTE = 20


class RawSampler:
    """Keep the first `per_minute` raw rows of each 4xx group a minute: a flood of 429s, 404s or 401s is
    counted in full in the groups and rollups but stores a bounded sample of rows (5xx rows are all kept:
    every server fault is worth its row, and a client cannot cause them at will)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = max(0, per_minute)
        self._minute = -1
        self._kept: dict[str, int] = {}
        self.sampled_out = 0

    def keeps(self, source: str, status: int | None, fingerprint: str, created: float) -> bool:
        """Whether an occurrence keeps its raw row (counted against its group's budget of the minute)."""
        if status is None or not 400 <= status < 500 or source != "http":
            return True
        minute = int(created // 60)
        if minute != self._minute:
            if minute < self._minute:  # a late event of an older minute: its own budget is gone, keep it simple
                self.sampled_out += 1
                return False
            self._minute, self._kept = minute, {}
        kept = self._kept.get(fingerprint, 0)
        if kept >= self.per_minute:
            self.sampled_out += 1
            return False
        self._kept[fingerprint] = kept + 1
        return True


class ErrorRecorder:
    """The per-app buffer of error events and per-minute request counts."""

    def __init__(
        self,
        app: Flask,
        *,
        batch_size: int = 1000,
        interval: float = 1.0,
        capacity: int = 10_000,
        retry_seconds: float = RETRY_SECONDS,
        raw_per_minute: int = RAW_PER_MINUTE,
    ) -> None:
        self._app = app
        self.raw_per_minute = raw_per_minute
        self.retry_seconds = retry_seconds
        self.batch_size = max(1, batch_size)
        self.interval = max(0.01, interval)
        self.capacity = max(self.batch_size, capacity)
        self._engine: Engine | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._buffer: deque[ErrorEventData | PendingEvent] = deque()
        self._requests: dict[int, int] = {}
        # A batch whose write failed, with when it first failed (monotonic): retried before newer events.
        self._retry: tuple[list[ErrorEventData], dict[int, int], float] | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._sampler = RawSampler(self.raw_per_minute)
        self.dropped = 0
        self.written = 0
        self.failed_flushes = 0

    def after_fork(self) -> None:
        """In a forked child: forget the parent's pending data (the parent writes it) and its locks."""
        self._engine = None
        self._reset_state()

    @property
    def pending(self) -> int:
        """Events waiting to be written by this process."""
        return len(self._buffer) + (sum(ev.weight for ev in self._retry[0]) if self._retry else 0)

    def submit(self, event: ErrorEventData | PendingEvent) -> bool:
        """Queue an event (or one to build when written); False, and counted, when the buffer is full."""
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("Error statistics buffer full: %s events dropped so far", self.dropped)
            return False
        self._buffer.append(event)
        _writer.ensure_started()
        if len(self._buffer) >= self.batch_size:
            _writer.wake()
        return True

    def count_request(self) -> None:
        """Count one served request in the current UTC minute (for error-per-request ratios)."""
        minute = int(time.time() // 60)
        with self._lock:
            self._requests[minute] = self._requests.get(minute, 0) + 1
        _writer.ensure_started()

    def due(self) -> bool:
        """Whether the writer thread should flush this recorder now."""
        if len(self._buffer) >= self.batch_size:
            return True
        has_data = bool(self._buffer or self._requests or self._retry)
        return has_data and time.monotonic() - self._last_flush >= self.interval

    def _engine_for_app(self) -> Engine:
        if self._engine is None:
            with self._app.app_context():
                self._engine = db.engine
        return self._engine

    def _take(self) -> tuple[list[ErrorEventData], dict[int, int], float | None]:
        if self._retry is not None:
            batch, self._retry = self._retry, None
            return batch
        events: list[ErrorEventData] = []
        # The sampled-out occurrences of one group and minute become one event with their count as its weight:
        # under a flood of 4xx the writer builds and counts one object per group and minute, not one per request.
        folded: dict[tuple[str, int], tuple[ErrorEventData, float]] = {}
        buffer = self._buffer
        sampler = self._sampler
        taken = 0
        while buffer and taken < self.batch_size * 4:
            item = buffer.popleft()
            taken += 1
            if type(item) is PendingEvent:
                fingerprint = item.derived.fingerprint
                if sampler.keeps(item.source, item.status_code, fingerprint, item.created):
                    events.append(item.build())
                    continue
                key = (fingerprint, int(item.created // 60))
                found = folded.get(key)
                if found is None:
                    event = item.build()
                    event.raw = False
                    folded[key] = (event, item.created)
                    events.append(event)
                else:
                    event, latest = found
                    event.weight += 1
                    if item.created > latest:
                        folded[key] = (event, item.created)
            else:
                item.raw = sampler.keeps(item.source, item.status_code, item.fingerprint, item.occurred_at.timestamp())
                events.append(item)
        for event, latest in folded.values():  # the group's last_seen is the latest occurrence
            event.occurred_at = datetime.fromtimestamp(latest, UTC)
        with self._lock:
            requests, self._requests = self._requests, {}
        return events, requests, None

    def flush(self, *, everything: bool = True) -> int:
        """Write what is pending now; the number of events written.

        `everything=False` (the writer thread) writes one batch, and more only while a full batch is
        waiting: under steady load, draining to empty would chase the events that arrive during each
        write and turn one batch per interval into a stream of tiny ones, each paying a transaction.
        """
        total = 0
        with self._flush_lock:
            while True:
                events, requests, failing_since = self._take()
                if not events and not requests:
                    break
                if not self._write(events, requests, failing_since):
                    break
                total += sum(ev.weight for ev in events)
                if not everything and len(self._buffer) < self.batch_size:
                    break
            self._last_flush = time.monotonic()
        return total

    def _write(self, events: list[ErrorEventData], requests: dict[int, int], failing_since: float | None) -> bool:
        try:
            # Around the database breaker: this background writer retries at its own pace (one batch per flush
            # interval), so it needs no breaker to spare a dead database, and an outage's own events must be
            # written as soon as the database is back, not after the breaker's trial: a process killed in
            # between would lose them.
            with database_breaker.bypassed():
                write_batch(self._engine_for_app(), events, requests)
        except SQLAlchemyError:
            self.failed_flushes += 1
            now = time.monotonic()
            if failing_since is not None and now - failing_since >= self.retry_seconds:
                self.dropped += sum(ev.weight for ev in events)
                logger.error(
                    "Error statistics: dropped a batch of %s events after %.0f s of failed writes",
                    len(events),
                    now - failing_since,
                )
            else:
                self._retry = (events, requests, now if failing_since is None else failing_since)
                if failing_since is None:  # once per outage, not once per retry
                    logger.warning(
                        "Error statistics: writing %s events failed; retrying later", len(events), exc_info=True
                    )
            return False
        self.written += sum(ev.weight for ev in events)
        return True

    def status(self) -> dict[str, Any]:
        """This process's writer counters (not shared: each process reports its own)."""
        return {
            "pending": self.pending,
            "dropped": self.dropped,
            "failed_flushes": self.failed_flushes,
            "sampled_out": self._sampler.sampled_out,
        }


class _Writer:
    """The one background thread per process that flushes every live recorder."""

    def __init__(self) -> None:
        self._recorders: weakref.WeakSet[ErrorRecorder] = weakref.WeakSet()
        self._reset()

    def _reset(self) -> None:
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, recorder: ErrorRecorder) -> None:
        """Flush `recorder` from the thread for as long as it is alive."""
        self._recorders.add(recorder)

    def ensure_started(self) -> None:
        """Start the thread in this process on first use."""
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                thread = threading.Thread(target=self._run, name="error-stats-writer", daemon=True)
                thread.start()
                self._thread = thread

    def wake(self) -> None:
        """Flush soon (a recorder reached its batch size)."""
        self._wake.set()

    def _interval(self) -> float:
        return min((r.interval for r in list(self._recorders)), default=1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval())
            self._wake.clear()
            for recorder in list(self._recorders):
                if recorder.due():
                    try:
                        recorder.flush(everything=False)
                    except Exception:  # the writer must outlive one bad batch; the failure is logged
                        logger.exception("Error statistics writer failed to flush")

    def flush_all(self) -> None:
        """Flush every recorder of this process synchronously."""
        for recorder in list(self._recorders):
            recorder.flush()

    def close(self) -> None:
        """Stop the thread and write what is left (process exit)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.flush_all()
        except Exception:  # at exit there is nobody left to raise to; say what was lost
            logger.exception("Error statistics: final flush failed")

    def after_fork(self) -> None:
        """In a forked child: no thread yet (threads do not survive fork), empty buffers."""
        self._reset()
        for recorder in list(self._recorders):
            recorder.after_fork()


_writer = _Writer()
os.register_at_fork(after_in_child=_writer.after_fork)
atexit.register(_writer.close)


def register_recorder(recorder: ErrorRecorder) -> None:
    """Have the process's writer thread flush `recorder`."""
    _writer.add(recorder)


def flush_all() -> None:
    """Write every pending event of this process now (tests, gunicorn `worker_exit`)."""
    _writer.flush_all()
