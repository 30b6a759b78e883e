"""Where circuit-breaker state lives: the state machine's data types and the in-memory store.

A store owns the state machine so every transition is decided atomically where the state is:
under a per-breaker lock in memory (held for microseconds, never across the guarded call), or
inside one Lua script in Redis (`breaker_redis`). Both stores implement the same rules, and the
breaker tests run against both:

- CLOSED: every call is admitted; outcomes go into a time-bucketed sliding window. Once the window
  holds `min_calls` calls and the failure rate reaches `failure_rate_threshold`, the breaker OPENs.
- OPEN: calls are rejected until `recovery_timeout` has passed since opening; then the first
  caller moves it to HALF_OPEN.
- HALF_OPEN: at most `half_open_max_calls` trial calls run at once; the rest are rejected. One
  failed trial re-opens it; `half_open_max_calls` successful trials close it (with a fresh window).
  Trial slots held longer than `trial_timeout` (a caller died mid-call) are reclaimed.
- FORCED_OPEN and DISABLED are admin overrides: reject everything, or admit everything and count
  nothing, until an admin resets the breaker.

Every transition bumps `epoch`, so an outcome reported by a call admitted under an older epoch
(before a reset, say) cannot move the new state.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from ..errors import ExternalServiceError


class AdminActionNotAppliedError(ExternalServiceError):
    """The admin action could not be saved where every process reads it; nothing was changed."""

    code = "ADMIN_ACTION_NOT_APPLIED"


class BreakerState(StrEnum):
    """The states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


class Outcome(StrEnum):
    """How a guarded call ended, as far as the breaker is concerned."""

    SUCCESS = "success"  # includes permanent errors: the service answered
    FAILURE = "failure"  # transient or throttled
    SLOW = "slow"  # succeeded or not, took longer than the slow-call threshold: counts as a failure


@dataclass(frozen=True)
class BreakerConfig:
    """Tuning of one breaker. The defaults match the seed's "5 failures, 60 s recovery"."""

    failure_rate_threshold: float = 0.5  # open when failures / calls in the window reach this
    min_calls: int = 5  # ... and the window holds at least this many calls
    window_seconds: float = 60.0  # sliding window length
    buckets: int = 10  # window granularity (window_seconds / buckets per bucket)
    recovery_timeout: float = 60.0  # seconds OPEN before trial calls are let through
    half_open_max_calls: int = 1  # concurrent trial calls in HALF_OPEN; this many successes close it
    slow_call_seconds: float | None = None  # a call at least this long counts as a failure; None: off
    trial_timeout: float = 120.0  # a trial slot held longer than this is reclaimed
    half_open_retry_after: float = 1.0  # what a caller rejected in HALF_OPEN is told to wait

    @property
    def bucket_width(self) -> float:
        """Seconds per window bucket."""
        return self.window_seconds / self.buckets


@dataclass(frozen=True)
class Admission:
    """A store's answer to "may this call go through?"."""

    allowed: bool
    state: BreakerState
    epoch: int
    trial: bool = False
    retry_after: float | None = None
    transition: tuple[BreakerState, BreakerState] | None = None
    opened_at: float | None = None


class BreakerStore(Protocol):
    """The storage interface: memory or Redis, same semantics."""

    @property
    def storage(self) -> str:
        """'memory', 'redis' or 'local-fallback' (Redis configured but unreachable)."""
        ...

    @property
    def shared_through(self) -> str:
        """Where admin actions (reset, force-open, disable) are shared: 'redis', 'database' or 'process'."""
        ...

    def acquire(self, name: str, config: BreakerConfig, now: float) -> Admission:
        """Admit or reject one call, moving OPEN → HALF_OPEN when its time has come."""
        ...

    def record(
        self, name: str, config: BreakerConfig, now: float, outcome: Outcome, epoch: int, trial: bool
    ) -> tuple[BreakerState, BreakerState] | None:
        """Count one call's outcome; returns the transition it caused, if any."""
        ...

    def set_state(self, name: str, state: BreakerState, now: float) -> tuple[BreakerState, BreakerState] | None:
        """Admin override: CLOSED (reset, with a fresh window), FORCED_OPEN or DISABLED."""
        ...

    def snapshot(self, name: str, config: BreakerConfig, now: float) -> dict[str, Any]:
        """State and window counts for monitoring."""
        ...


@dataclass
class _Entry:
    state: BreakerState = BreakerState.CLOSED
    opened_at: float | None = None
    epoch: int = 0
    trials: int = 0
    trial_ok: int = 0
    half_open_at: float = 0.0
    # bucket index → [calls, failures, slow]
    window: dict[int, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def summarise(window: dict[int, list[int]], config: BreakerConfig, now: float) -> tuple[int, int, int]:
    """Calls, failures and slow calls in the window (dropping buckets that slid out)."""
    current = math.floor(now / config.bucket_width)
    for stale in [b for b in window if b <= current - config.buckets]:
        del window[stale]
    calls = sum(v[0] for v in window.values())
    failures = sum(v[1] for v in window.values())
    slow = sum(v[2] for v in window.values())
    return calls, failures, slow


def build_snapshot(
    state: BreakerState,
    opened_at: float | None,
    counts: tuple[int, int, int],
    trials: int,
    config: BreakerConfig,
    now: float,
) -> dict[str, Any]:
    """The snapshot dict both stores return."""
    calls, failures, slow = counts
    retry_after: float | None = None
    if state is BreakerState.OPEN and opened_at is not None:
        retry_after = max(0.0, opened_at + config.recovery_timeout - now)
    elif state is BreakerState.HALF_OPEN and trials >= config.half_open_max_calls:
        retry_after = config.half_open_retry_after
    elif state is BreakerState.FORCED_OPEN:
        retry_after = config.recovery_timeout
    return {
        "state": state.value,
        "calls_in_window": calls,
        "failures_in_window": failures,
        "slow_in_window": slow,
        "failure_rate": round(failures / calls, 4) if calls else 0.0,
        "opened_at": opened_at,
        "retry_after": retry_after,
        "trials_in_flight": trials,
    }


class MemoryBreakerStore:
    """Breaker state in this process only (one process, or Redis fallback)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    @property
    def storage(self) -> str:
        """Always 'memory'."""
        return "memory"

    @property
    def shared_through(self) -> str:
        """'process': an admin action reaches this process only."""
        return "process"

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            with self._lock:
                entry = self._entries.setdefault(name, _Entry())
        return entry

    def names(self) -> list[str]:
        """Every breaker this store has seen."""
        return list(self._entries)

    def seed(self, name: str, state: BreakerState, opened_at: float | None) -> None:
        """Start a breaker from a known state (the last one Redis reported, when falling back)."""
        entry = self._entry(name)
        with entry.lock:
            entry.state, entry.opened_at = state, opened_at

    def peek_state(self, name: str) -> BreakerState | None:
        """A breaker's state without creating it (None when this store has not seen it)."""
        entry = self._entries.get(name)
        return None if entry is None else entry.state

    def clear(self) -> None:
        """Forget every breaker."""
        with self._lock:
            self._entries.clear()

    def acquire(self, name: str, config: BreakerConfig, now: float) -> Admission:
        """Admit or reject one call (see the module docstring for the rules)."""
        e = self._entry(name)
        with e.lock:
            if e.state in (BreakerState.CLOSED, BreakerState.DISABLED):
                return Admission(True, e.state, e.epoch)
            if e.state is BreakerState.FORCED_OPEN:
                return Admission(False, e.state, e.epoch, retry_after=config.recovery_timeout)
            transition = None
            if e.state is BreakerState.OPEN:
                opened_at = e.opened_at or now
                wait = opened_at + config.recovery_timeout - now
                if wait > 0:
                    return Admission(False, e.state, e.epoch, retry_after=wait, opened_at=opened_at)
                e.state, e.epoch, e.trials, e.trial_ok, e.half_open_at = BreakerState.HALF_OPEN, e.epoch + 1, 0, 0, now
                transition = (BreakerState.OPEN, BreakerState.HALF_OPEN)
            if e.trials >= config.half_open_max_calls and now - e.half_open_at >= config.trial_timeout:
                e.trials, e.half_open_at = 0, now  # the trial callers never reported back
            if e.trials < config.half_open_max_calls:
                e.trials += 1
                return Admission(True, e.state, e.epoch, trial=True, transition=transition, opened_at=e.opened_at)
            return Admission(False, e.state, e.epoch, retry_after=config.half_open_retry_after, transition=transition)

    def record(
        self, name: str, config: BreakerConfig, now: float, outcome: Outcome, epoch: int, trial: bool
    ) -> tuple[BreakerState, BreakerState] | None:
        """Count one outcome; returns the transition it caused."""
        e = self._entry(name)
        failed = outcome is not Outcome.SUCCESS
        with e.lock:
            if trial and e.state is BreakerState.HALF_OPEN and epoch == e.epoch:
                e.trials = max(0, e.trials - 1)
                if failed:
                    e.state, e.opened_at, e.epoch, e.trials, e.trial_ok = BreakerState.OPEN, now, e.epoch + 1, 0, 0
                    return (BreakerState.HALF_OPEN, BreakerState.OPEN)
                e.trial_ok += 1
                if e.trial_ok >= config.half_open_max_calls:
                    e.state, e.opened_at, e.epoch, e.trials, e.trial_ok = BreakerState.CLOSED, None, e.epoch + 1, 0, 0
                    e.window.clear()
                    return (BreakerState.HALF_OPEN, BreakerState.CLOSED)
                return None
            if e.state is not BreakerState.CLOSED:
                return None  # a late result from before the last transition, or an admin override
            index = math.floor(now / config.bucket_width)
            bucket = e.window.get(index)
            if bucket is None:
                summarise(e.window, config, now)  # drop buckets that slid out, so the dict stays small
                bucket = e.window[index] = [0, 0, 0]
            bucket[0] += 1
            bucket[1] += failed
            bucket[2] += outcome is Outcome.SLOW
            if not failed:
                return None  # a success cannot raise the failure rate
            calls, failures, _ = summarise(e.window, config, now)
            if calls >= config.min_calls and failures / calls >= config.failure_rate_threshold:
                e.state, e.opened_at, e.epoch, e.trials, e.trial_ok = BreakerState.OPEN, now, e.epoch + 1, 0, 0
                return (BreakerState.CLOSED, BreakerState.OPEN)
            return None

    def set_state(self, name: str, state: BreakerState, now: float) -> tuple[BreakerState, BreakerState] | None:
        """Admin override (reset to CLOSED with a fresh window, FORCED_OPEN, DISABLED)."""
        e = self._entry(name)
        with e.lock:
            old = e.state
            e.state, e.epoch, e.trials, e.trial_ok = state, e.epoch + 1, 0, 0
            e.opened_at = now if state is BreakerState.FORCED_OPEN else None
            e.window.clear()
            return (old, state) if old is not state else None

    def snapshot(self, name: str, config: BreakerConfig, now: float) -> dict[str, Any]:
        """State and window counts."""
        e = self._entry(name)
        with e.lock:
            counts = summarise(e.window, config, now)
            snap = build_snapshot(e.state, e.opened_at, counts, e.trials, config, now)
        snap["storage"] = self.storage
        return snap
