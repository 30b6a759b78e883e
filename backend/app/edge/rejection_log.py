"""Repeated rejections (429s, rejected tokens) logged in aggregate, so a flood cannot amplify into log lines.

The first rejection of a key (client address and limit, or client address and token error) is written
to `security.log` at once with `count: 1`; the ones after it are only counted, and a background thread
writes one line per key and `interval` seconds with their `count` and the time span they cover. So
`sum(count)` over the lines equals the rejections served: nothing is lost (what is pending is written
at exit), and a flood of N rejections a second costs one line per interval. A key with nothing new for
an interval is forgotten, so the next rejection is written at once again. At most `max_keys` keys are
tracked; rejections beyond that share one overflow key per event (counted, never dropped).

No logging library aggregates like this (logging's filters see one record at a time and cannot emit
a count later), hence this small module. Counts are per process; each process writes its own lines.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...log.events import log_security_event
from ..sweeper import Sweeper
from ..timeutil import epoch_iso_micro

#: Seconds between the aggregated lines of one key.
DEFAULT_INTERVAL = 10.0
#: Keys (client x limit) tracked at once; more share an overflow key.
DEFAULT_MAX_KEYS = 10_000
OVERFLOW_CLIENT = "(other clients)"


@dataclass
class _Pending:
    """Rejections of one key not yet written, and when the key last wrote a line."""

    event_type: str
    message: str
    fields: dict[str, Any]
    last_written: float
    count: int = 0
    first_at: float | None = None
    last_at: float | None = None


class RejectionLog:
    """Aggregates repeated security events per key; `record` on the request path, lines from a thread."""

    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        write: Callable[..., None] = log_security_event,
    ) -> None:
        self.interval = max(0.05, float(interval))
        self.max_keys = max(1, int(max_keys))
        self._clock, self._wall, self._write = clock, wall, write
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[tuple[Any, ...], _Pending] = {}

    def record(self, event_type: str, message: str, key: tuple[Any, ...], **fields: Any) -> None:
        """One rejection: written now when its key is new, else counted for the next aggregated line."""
        now, wall = self._clock(), self._wall()
        full_key = (event_type, *key)
        with self._lock:
            pending = self._keys.get(full_key)
            if pending is None and len(self._keys) >= self.max_keys:
                full_key = (event_type, OVERFLOW_CLIENT)
                fields = {**fields, "remote_addr": OVERFLOW_CLIENT}
                pending = self._keys.get(full_key)
            if pending is not None:
                pending.count += 1
                pending.first_at = wall if pending.first_at is None else pending.first_at
                pending.last_at = wall
                pending.fields = fields  # the latest rejection's details (its endpoint, its limit)
                return
            self._keys[full_key] = _Pending(event_type, message, fields, last_written=now)
        # Outside the lock: writing a line must never hold up other request threads.
        self._write(event_type, message, count=1, aggregated=False, **fields)

    def flush(self, *, everything: bool = False) -> int:
        """Write the lines that are due (all pending with `everything`); how many rejections they count."""
        now = self._clock()
        due: list[_Pending] = []
        with self._lock:
            for full_key, pending in list(self._keys.items()):
                if pending.count and (everything or now - pending.last_written >= self.interval):
                    due.append(
                        _Pending(
                            pending.event_type,
                            pending.message,
                            pending.fields,
                            now,
                            pending.count,
                            pending.first_at,
                            pending.last_at,
                        )
                    )
                    pending.count, pending.first_at, pending.last_at = 0, None, None
                    pending.last_written = now
                elif not pending.count and now - pending.last_written >= self.interval:
                    del self._keys[full_key]  # quiet for an interval: the next rejection is written at once
        for line in due:
            self._write(
                line.event_type,
                f"{line.message} ({line.count} times since the last line)",
                count=line.count,
                aggregated=True,
                first_at=epoch_iso_micro(line.first_at) if line.first_at else None,
                last_at=epoch_iso_micro(line.last_at) if line.last_at else None,
                interval_seconds=self.interval,
                **line.fields,
            )
        return sum(line.count for line in due)

    @property
    def tracked(self) -> int:
        """Keys tracked right now."""
        return len(self._keys)

    def after_fork(self) -> None:
        """In a forked child: nothing pending (the parent writes its own lines)."""
        self._reset()


_flusher: Sweeper[RejectionLog] = Sweeper(
    "rejection-log",
    RejectionLog.flush,
    # A quarter interval between checks: a line is at most 1.25 intervals late.
    period=lambda logs: min((log.interval for log in logs), default=DEFAULT_INTERVAL) / 4,
    after_fork=RejectionLog.after_fork,
)


def _close_all() -> None:
    """Write everything pending (process exit)."""
    for log in _flusher.items():
        log.flush(everything=True)


# Registered at import, after the logging set-up's own hook when the app imports this module, so it runs first.
atexit.register(_close_all)


def init_rejection_log(app: Any) -> RejectionLog:
    """Give the app its rejection log (REJECTION_LOG_INTERVAL_SECONDS between aggregated lines)."""
    log = RejectionLog(interval=float(app.config.get("REJECTION_LOG_INTERVAL_SECONDS", DEFAULT_INTERVAL)))
    app.extensions["rejection_log"] = log
    _flusher.add(log)
    return log


def record_rejection(app: Any, event_type: str, message: str, key: tuple[Any, ...], **fields: Any) -> None:
    """Record one rejection in the app's rejection log (see `RejectionLog.record`)."""
    app.extensions["rejection_log"].record(event_type, message, key, **fields)
    _flusher.ensure_started()


def flush_rejections(app: Any) -> int:
    """Write every pending aggregated line of `app` now (tests, shutdown)."""
    log = app.extensions.get("rejection_log")
    return log.flush(everything=True) if log is not None else 0
