"""Circuit-breaker costs, measured as ratios within one run (`make bench-breaker`).

1. Closed-breaker overhead per call: `breaker.call(noop)` vs `noop()`, in memory and on Redis;
   and the whole `@with_error_recovery` stack (breaker, tenacity, budget, performance log line).
2. Concurrency: 16 threads each making a call that sleeps 20 ms (simulated I/O), through ONE closed
   breaker vs no breaker. A breaker that serialised calls (pybreaker's lock) would take 16 x 20 ms.
3. An open breaker's fail-fast latency through the app (Flask test client, full middleware):
   503 CIRCUIT_OPEN vs a healthy trivial route, in memory and on Redis. Target: < 5 ms.

Redis figures need Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379/0); keys use a unique
prefix and are deleted afterwards. Nothing here listens on a network port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask import jsonify

from backend.app import create_app
from backend.app.redis_client import make_redis_client
from backend.app.resilience.breaker import CircuitBreaker, CircuitOpenError
from backend.app.resilience.breaker_redis import RedisBreakerStore
from backend.app.resilience.breaker_store import BreakerConfig, BreakerStore, MemoryBreakerStore
from backend.app.resilience.recovery import get_breaker, with_error_recovery
from config import TestingConfig

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    """Mean microseconds per call over n calls (after a short warm-up)."""
    for _ in range(min(200, n)):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def redis_store() -> RedisBreakerStore | None:
    """A Redis store on a unique prefix, or None when Redis is not reachable."""
    store = RedisBreakerStore(make_redis_client(REDIS_URL), prefix=f"bench:{uuid.uuid4().hex}:")
    try:
        store.client.ping()
    except Exception as exc:
        print(f"  (Redis at {REDIS_URL} unreachable: {exc}; Redis figures skipped)")
        return None
    return store


def bench_overhead(n: int, stores: dict[str, BreakerStore]) -> None:
    """Closed-breaker overhead per call."""
    print("\n## 1. Closed-breaker overhead per call")
    base = per_call_us(lambda: None, n)
    print(f"  no breaker (bare call)          {base:8.2f} us/call")
    redis = stores.get("redis")
    if isinstance(redis, RedisBreakerStore):
        ping = per_call_us(redis.client.ping, max(2000, n // 10))
        print(f"  (one Redis PING round trip      {ping:8.2f} us: a Redis breaker call makes two round trips)")
    for label, store in stores.items():
        breaker = CircuitBreaker("bench", BreakerConfig(), store, listeners=[])
        count = n if label == "memory" else max(2000, n // 10)
        cost = per_call_us(lambda b=breaker: b.call(lambda: None), count) - base
        print(f"  breaker.call, {label:<17} {cost:8.2f} us/call overhead  ({count} calls)")
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(TestingConfig, LOG_DIR=tmp, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp}/b.db")

        @with_error_recovery("bench", "noop", max_retries=3, idempotent=True)
        def guarded() -> None:
            return None

        with app.app_context():
            cost = per_call_us(guarded, max(2000, n // 10)) - base
        print(f"  @with_error_recovery, memory    {cost:8.2f} us/call overhead  (incl. performance.log line)")


def bench_concurrency(rounds: int, stores: dict[str, BreakerStore], width: int = 16, io_ms: float = 20.0) -> None:
    """16 concurrent 20 ms calls through one closed breaker vs none."""
    print(f"\n## 2. {width} concurrent calls of {io_ms:.0f} ms each, {rounds} rounds (median wall time per round)")

    def io() -> None:
        time.sleep(io_ms / 1000)

    def round_time(pool: ThreadPoolExecutor, call: Callable[[], Any]) -> float:
        started = time.perf_counter()
        for future in [pool.submit(call) for _ in range(width)]:
            future.result()
        return time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=width) as pool:
        round_time(pool, io)  # start the threads
        bare = statistics.median(round_time(pool, io) for _ in range(rounds))
        print(f"  no breaker                      {bare * 1000:8.1f} ms")
        for label, store in stores.items():
            breaker = CircuitBreaker("bench-conc", BreakerConfig(), store, listeners=[])
            guarded = statistics.median(round_time(pool, lambda b=breaker: b.call(io)) for _ in range(rounds))
            print(f"  one closed breaker, {label:<11} {guarded * 1000:8.1f} ms   ratio {guarded / bare:5.2f}")
    print(f"  (fully serialised would be      {width * io_ms:8.1f} ms   ratio {width * io_ms / 1000 / bare:5.2f})")


def bench_fail_fast(n: int, redis_ok: bool) -> None:
    """Open breaker → 503 CIRCUIT_OPEN through the whole app."""
    print(f"\n## 3. Open-breaker fail-fast through the app ({n} requests each, Flask test client)")
    configs: list[tuple[str, dict[str, Any]]] = [("memory", {})]
    prefix = f"bench:{uuid.uuid4().hex}:"
    if redis_ok:
        configs.append(("redis", {"REDIS_URL": REDIS_URL, "CIRCUIT_BREAKER_KEY_PREFIX": prefix}))
    try:
        for label, extra in configs:
            with tempfile.TemporaryDirectory() as tmp:
                app = create_app(
                    TestingConfig,
                    LOG_DIR=tmp,
                    SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp}/b.db",
                    RATELIMIT_ENABLED=False,
                    RETRY_SLEEP_ENABLED=False,
                    **extra,
                )

                @with_error_recovery("stripe", "create_session", max_retries=3)
                def create_session() -> str:
                    return "never reached"

                app.add_url_rule("/bench/ok", "bench_ok", lambda: jsonify(ok=True))
                app.add_url_rule("/bench/pay", "bench_pay", lambda: jsonify(r=create_session()), methods=["POST"])
                with app.app_context():
                    get_breaker("stripe").force_open(actor="bench")
                client = app.test_client()
                assert client.post("/bench/pay").status_code == 503

                def timed(call: Callable[[], Any]) -> list[float]:
                    samples = []
                    for _ in range(n):
                        started = time.perf_counter()
                        call()
                        samples.append((time.perf_counter() - started) * 1000)
                    return sorted(samples)

                for _ in range(50):
                    client.get("/bench/ok")
                ok = timed(lambda c=client: c.get("/bench/ok"))
                open_ = timed(lambda c=client: c.post("/bench/pay"))
                with app.app_context():
                    breaker = get_breaker("stripe")

                    def reject(b: CircuitBreaker = breaker) -> None:
                        with contextlib.suppress(CircuitOpenError):
                            b.acquire()

                    alone = statistics.median(timed(reject))
                p50, p99 = statistics.median(open_), open_[int(len(open_) * 0.99) - 1]
                base = statistics.median(ok)
                print(
                    f"  {label:<7} 503 CIRCUIT_OPEN p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   "
                    f"healthy 200 p50 {base:6.2f} ms   ratio {p50 / base:4.2f}   "
                    f"(the breaker's own rejection: {alone:5.3f} ms)"
                )
                with app.app_context():
                    get_breaker("stripe").reset(actor="bench")
    finally:
        if redis_ok:
            RedisBreakerStore(make_redis_client(REDIS_URL), prefix=prefix).delete_all()


def main() -> None:
    """Run the three benchmarks and print a report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000, help="calls for the overhead benchmark")
    parser.add_argument("--rounds", type=int, default=30, help="rounds for the concurrency benchmark")
    parser.add_argument("--requests", type=int, default=1000, help="requests for the fail-fast benchmark")
    args = parser.parse_args()
    print(f"# bench_breaker  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    stores: dict[str, BreakerStore] = {"memory": MemoryBreakerStore()}
    redis = redis_store()
    if redis is not None:
        stores["redis"] = redis
    try:
        bench_overhead(args.calls, stores)
        bench_concurrency(args.rounds, stores)
        bench_fail_fast(args.requests, redis is not None)
    finally:
        if redis is not None:
            redis.delete_all()


if __name__ == "__main__":
    main()
