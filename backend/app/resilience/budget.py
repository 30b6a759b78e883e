"""A retry budget per service: retries may add at most ~20% to the calls of a short window.

Finagle's `RetryBudget` and gRPC's retry throttling: every call deposits `ratio` of a token, every
retry withdraws one, over a sliding window of `window_seconds`, plus a small floor of
`min_retries_per_second` so a quiet service can still retry once in a while. When a dependency
fails for everyone, retries stay a fraction of the traffic instead of multiplying it by
`max_retries + 1`. An exhausted budget fails the call without retrying and is counted.

The budget is per process (like Finagle's, per client): it bounds what this process adds to an
outage; it needs no shared storage and costs no I/O.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetConfig:
    """How much retrying a service may do."""

    ratio: float = 0.2
    window_seconds: float = 10.0
    min_retries_per_second: float = 0.5
    buckets: int = 10


class RetryBudget:
    """Sliding-window token budget: `record_call()` per call, `try_spend()` before each retry."""

    def __init__(self, name: str, config: BudgetConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.config = config or BudgetConfig()
        self._clock = clock
        self._width = self.config.window_seconds / self.config.buckets
        # bucket index → [calls, retries]; only the last `buckets` indexes are kept.
        self._buckets: dict[int, list[int]] = {}
        self._lock = threading.Lock()  # guards counters only: never held across a call
        self.exhausted = 0

    def _bucket(self) -> list[int]:
        index = math.floor(self._clock() / self._width)
        oldest = index - self.config.buckets + 1
        for stale in [k for k in self._buckets if k < oldest]:
            del self._buckets[stale]
        return self._buckets.setdefault(index, [0, 0])

    def _totals(self) -> tuple[int, int]:
        calls = sum(b[0] for b in self._buckets.values())
        retries = sum(b[1] for b in self._buckets.values())
        return calls, retries

    def _allowance(self, calls: int) -> float:
        cfg = self.config
        return cfg.min_retries_per_second * cfg.window_seconds + cfg.ratio * calls

    def record_call(self) -> None:
        """Count one logical call (its first attempt): each deposits `ratio` of a retry."""
        with self._lock:
            self._bucket()[0] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and counted) when the budget is spent."""
        with self._lock:
            bucket = self._bucket()
            calls, retries = self._totals()
            if retries + 1 <= self._allowance(calls):
                bucket[1] += 1
                return True
            self.exhausted += 1
            exhausted = self.exhausted
        logger.warning("Retry budget of %s exhausted: failing without retry (%s times so far)", self.name, exhausted)
        return False

    def snapshot(self) -> dict[str, Any]:
        """Calls, retries and remaining retries in the window, and how often the budget ran out."""
        with self._lock:
            self._bucket()
            calls, retries = self._totals()
            remaining = max(0.0, self._allowance(calls) - retries)
        return {
            "calls_in_window": calls,
            "retries_in_window": retries,
            "retries_remaining": math.floor(remaining),
            "exhausted": self.exhausted,
            "ratio": self.config.ratio,
            "window_seconds": self.config.window_seconds,
        }

    def reset(self) -> None:
        """Forget the window and the counters (tests, admin reset)."""
        with self._lock:
            self._buckets.clear()
            self.exhausted = 0


class BudgetRegistry:
    """One budget per service name, created on first use."""

    def __init__(self, config: BudgetConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or BudgetConfig()
        self._clock = clock
        self._budgets: dict[str, RetryBudget] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> RetryBudget:
        """The budget of one service."""
        budget = self._budgets.get(name)
        if budget is None:
            with self._lock:
                budget = self._budgets.setdefault(name, RetryBudget(name, self.config, self._clock))
        return budget

    def all(self) -> dict[str, RetryBudget]:
        """Every budget created so far."""
        return dict(self._budgets)
