"""One background thread per process that visits every live object of a kind, periodically.

The SLO counters, the rejection logs and the in-memory rate-limit storages each need the same thing:
a daemon thread started on first use (never at import, so never in a parent before fork), one per
process however many apps exist, holding its objects weakly (a test's app goes away with its test),
restarted in a forked child (threads do not survive fork), and surviving one failed visit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


class Sweeper(Generic[T]):
    """Calls `visit(item)` for every live item every `period(items)` seconds, from one lazily started thread."""

    def __init__(
        self,
        name: str,
        visit: Callable[[T], object],
        *,
        period: Callable[[list[T]], float],
        after_fork: Callable[[T], object] | None = None,
    ) -> None:
        self.name = name
        self._visit, self._period, self._item_after_fork = visit, period, after_fork
        self._items: weakref.WeakSet[T] = weakref.WeakSet()  # type: ignore[type-var]
        self._reset()
        os.register_at_fork(after_in_child=self._after_fork)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, item: T) -> None:
        """Visit `item` from now on, for as long as it is alive."""
        self._items.add(item)

    def items(self) -> list[T]:
        """The live items now."""
        return list(self._items)

    def ensure_started(self) -> None:
        """Start the thread in this process on first use (cheap when it runs already)."""
        if self.thread is not None:
            return
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._period(self.items()))
            for item in self.items():
                try:
                    self._visit(item)
                except Exception:  # the thread must outlive one failed visit; the failure is logged
                    logger.exception("%s: a periodic visit failed", self.name)

    def _after_fork(self) -> None:
        """In a forked child: no thread yet, and each item forgets what its parent had pending."""
        self._reset()
        if self._item_after_fork is not None:
            for item in self.items():
                self._item_after_fork(item)
