"""The file sinks: process-safe rotating files that write batches and degrade instead of failing."""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from concurrent_log_handler import ConcurrentRotatingFileHandler

from .fields import _SPACE_ERRNOS


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
