"""Wake-ups: how an idle worker learns that a job was enqueued. Never the source of truth.

The job table is the queue; a wake-up only saves an idle worker its polling delay. So a lost
wake-up (Redis restarted, a worker died holding one) costs at most `JOBS_POLL_SECONDS` of latency,
never a job, and Redis being down degrades latency, not correctness.

- `LocalDispatcher` (embedded default): an in-process event, plus polling for other processes.
- `RedisDispatcher` (`REDIS_URL`): one Redis list per queue; enqueue pushes, idle workers on any
  machine block on BLPOP. No client retries and short timeouts (SPEC section 10: redis-py's default
  retry made one call take 6.8 s when Redis died).

A wake-up is pushed after the enqueueing transaction commits, inside the request that enqueued (a
render's POST), so a dead or hung Redis must cost that request next to nothing (#13 point 10): pushes
have their own client with 0.25 s timeouts, and after a failed push none is tried for
`push_pause_seconds` (2 s): the workers poll meanwhile, so the request pays at most one short timeout
per pause and per process, and never waits for Redis at all between two attempts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

logger = logging.getLogger(__name__)

KEY_PREFIX = "oriel:jobs:wake:"
MAX_PENDING_WAKEUPS = 10_000


class Dispatcher(Protocol):
    """Sends and waits for wake-ups."""

    def notify(self, queues: Iterable[str]) -> None:
        """Wake a worker listening on any of `queues` (best effort)."""

    def wait(self, queues: Sequence[str], timeout: float) -> bool:
        """Block up to `timeout` seconds for a wake-up; True if one came."""

    def close(self) -> None:
        """Release connections."""


class LocalDispatcher:
    """In-process wake-ups; other processes are found by polling the job table."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def notify(self, queues: Iterable[str]) -> None:
        """Wake this process's idle worker threads."""
        self._event.set()

    def wait(self, queues: Sequence[str], timeout: float) -> bool:
        """Sleep until notified or `timeout` passes."""
        woke = self._event.wait(timeout)
        self._event.clear()
        return woke

    def close(self) -> None:
        """Nothing to release."""


class RedisDispatcher:
    """Wake-ups through Redis lists, shared by every machine."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 2.0,
        push_timeout: float = 0.25,
        push_pause_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis

        from ..redis_client import make_redis_client  # one fail-fast Redis client recipe

        self._url = url
        self._local = LocalDispatcher()
        self._socket_timeout = socket_timeout
        # Waiting blocks on BLPOP, so its socket must outlive the blocking call; pushing is on a request's path.
        self._client = make_redis_client(url, timeout=socket_timeout)
        self._push_client = make_redis_client(url, timeout=push_timeout)
        self._push_pause = push_pause_seconds
        self._clock = clock
        self._push_paused_until = float("-inf")
        self._redis_error: type[Exception] = redis.RedisError
        self._last_warning = float("-inf")
        self.skipped_pushes = 0  # wake-ups not pushed during a pause (the workers' polling finds the jobs)

    def _warn(self, action: str, exc: Exception) -> None:
        now = self._clock()
        if now - self._last_warning > 30:
            self._last_warning = now
            logger.warning("Redis wake-up %s failed (%s); workers fall back to polling", action, exc)

    def notify(self, queues: Iterable[str]) -> None:
        """Push one wake-up per queue (and wake local threads); skipped for a while after a failed push."""
        self._local.notify(queues)
        if self._clock() < self._push_paused_until:
            self.skipped_pushes += 1
            return
        try:
            pipe = self._push_client.pipeline(transaction=False)
            for queue in set(queues):
                pipe.lpush(KEY_PREFIX + queue, 1)
                pipe.ltrim(KEY_PREFIX + queue, 0, MAX_PENDING_WAKEUPS - 1)
            pipe.execute()
        except self._redis_error as exc:
            self._push_paused_until = self._clock() + self._push_pause
            self._warn("push", exc)

    def wait(self, queues: Sequence[str], timeout: float) -> bool:
        """BLPOP on the queues' lists for up to `timeout` seconds."""
        # The socket must outlive the blocking call, or redis-py reports a timeout as an error.
        blocking = max(0.01, min(timeout, self._socket_timeout - 0.5))
        try:
            popped: Any = self._client.blpop([KEY_PREFIX + q for q in queues], timeout=blocking)
        except self._redis_error as exc:
            self._warn("wait", exc)
            return self._local.wait(queues, timeout)
        return popped is not None

    def close(self) -> None:
        """Close the connection pools."""
        self._client.close()
        self._push_client.close()


def build_dispatcher(redis_url: str | None) -> Dispatcher:
    """Redis wake-ups when `REDIS_URL` is set, otherwise in-process ones."""
    return RedisDispatcher(redis_url) if redis_url else LocalDispatcher()
