"""The one recipe for a Redis client: fail fast (short timeouts, no retries, no health-check pings).

Breakers, job dispatch, fault rules, the health probe and Flask-Limiter's storage all talk to Redis; a dead
Redis must cost them milliseconds, never the client library's default of retrying with backoff. `redis` is
imported only when a client is built, so an app without `REDIS_URL` never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis


def fail_fast_options(timeout: float = 0.25) -> dict[str, Any]:
    """Keyword arguments for `redis.Redis.from_url` (also Flask-Limiter's `storage_options`)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


def make_redis_client(url: str, timeout: float = 0.25) -> redis.Redis:
    """A Redis client for `url` that gives up after `timeout` seconds and never retries."""
    import redis

    return redis.Redis.from_url(url, **fail_fast_options(timeout))
