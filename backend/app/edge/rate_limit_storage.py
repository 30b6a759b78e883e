"""In-memory rate-limit storage (`oriel-memory://`) that expires old counters without a thread per 10 ms.

`limits`' own `MemoryStorage` schedules its clean-up on every hit: a new `threading.Timer` thread each
time the previous one has finished, 10 ms later. Under gunicorn that is a hundred thread starts a
second per busy worker, and each pass walks every key; measured here it cost about 50 µs of CPU a
request (bench_error_stack, rate limits on in memory). Reads never depend on the clean-up (`get` and
`incr` check a key's expiry themselves), so this subclass leaves the counting to `limits` unchanged
and only replaces the scheduling: one daemon thread per process sweeps every live storage once a
second. The hook it overrides is `MemoryStorage`'s private `__schedule_expiry`; a test fails if the
override stops being called (tests/integration/test_rate_limits.py).
"""

from __future__ import annotations

from limits.storage import MemoryStorage

from ..sweeper import Sweeper

#: Seconds between two sweeps of expired counters.
SWEEP_SECONDS = 1.0


class SweptMemoryStorage(MemoryStorage):
    """`limits`' memory storage, swept once a second by one shared thread instead of a Timer per 10 ms."""

    STORAGE_SCHEME = ["oriel-memory"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.sweeps = 0
        _sweeper.add(self)

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - overrides the parent's private hook
        _sweeper.ensure_started()

    def sweep(self) -> None:
        """Drop the counters and windows that have expired (what the parent's timer did)."""
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        self.sweeps += 1


_sweeper: Sweeper[SweptMemoryStorage] = Sweeper(
    "rate-limit-sweeper", SweptMemoryStorage.sweep, period=lambda _storages: SWEEP_SECONDS
)
