"""Multi-process consistency: 4 gunicorn workers and 2 job workers on Redis + PostgreSQL agree on breaker
state, rate limits, error statistics and metrics.

The two job workers run beside the web workers on the same database and Redis (they poll, lease and
heartbeat throughout); they are asserted alive at the end so a crash would not pass unseen.

Every request goes on a new connection (urllib never reuses one) with its own X-Request-ID; the request
log's `pid` field proves the requests really were answered by several workers, not assumed to be.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.conftest import ADMIN_EMAIL
from tests.system import Answer, System, running_system

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

WORKERS = 4
ROUNDS = 40  # requests per check: enough for every worker to answer several


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """4 gunicorn workers (1 thread each, so concurrent requests must use other processes) and 2 job workers."""
    with running_system(
        tmp_path_factory.mktemp("consistency"),
        workers=WORKERS,
        threads=1,
        job_workers=2,
        redis_db=8,
        extra={"FAULT_INJECTION_ENABLED": "true", "REQUEST_LOGGING_ENABLED": "true"},
    ) as running:
        _wait_for_every_worker(running)
        yield running


def _wait_for_every_worker(system: System, timeout: float = 90.0) -> None:
    """Readiness means one worker answered; the others may still be importing the app, so wait for all."""
    deadline = time.monotonic() + timeout
    while True:
        ids = {rid for rid, _ in _traced_many(system, 16, "GET", "/healthz")}
        if len(_pids(system, ids)) >= WORKERS or time.monotonic() > deadline:
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tokens(system: System) -> dict[str, dict[str, str]]:
    """An admin's and a user's Authorization headers, logged in once (logins count against the login limit)."""
    return {
        "admin": {"Authorization": f"Bearer {system.token(ADMIN_EMAIL)}"},
        "user": {"Authorization": f"Bearer {system.token('buyer@example.com')}"},
    }


def _traced(system: System, method: str, path: str, payload: object = None, **headers: str) -> tuple[str, Answer]:
    rid = uuid.uuid4().hex
    return rid, system.call(method, path, payload, headers={"X-Request-ID": rid, **headers})


def _traced_many(
    system: System, count: int, method: str, path: object, payload: object = None, **headers: str
) -> list[tuple[str, Answer]]:
    """`count` traced requests, 8 at a time: concurrency is what makes them land on several workers.

    Sent one by one, the worker that just answered usually wins the next accept, so a sequential
    loop can stay on one or two processes and prove nothing about the others.
    """
    paths = [path(n) if callable(path) else path for n in range(count)]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda p: _traced(system, method, p, payload, **headers), paths))


def _pids(system: System, request_ids: set[str], timeout: float = 10.0) -> Counter[int]:
    """Which worker process answered each request, read from the request log (waits for the writers)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {
            line["request_id"]: line["pid"]
            for line in system.log_lines("performance.log")
            if line.get("request_id") in request_ids and "pid" in line
        }
        if len(seen) == len(request_ids) or time.monotonic() > deadline:
            return Counter(seen.values())
        time.sleep(0.3)


def _assert_spread(system: System, request_ids: set[str]) -> None:
    pids = _pids(system, request_ids)
    assert sum(pids.values()) == len(request_ids), "some requests are missing from the request log"
    assert len(pids) >= 3, f"requests did not spread across the workers: {pids}"


def test_requests_really_spread_across_workers(system: System) -> None:
    ids = {rid for rid, _ in _traced_many(system, ROUNDS, "GET", "/api/errors/catalog")}
    _assert_spread(system, ids)


def test_breaker_forced_open_on_one_worker_fails_fast_on_all_and_reset_reaches_all(
    system: System, tokens: dict[str, dict[str, str]]
) -> None:
    admin, user = tokens["admin"], tokens["user"]
    forced = system.call("POST", "/admin/api/monitoring/circuit-breakers/stripe/force-open", headers=admin)
    assert forced.status == 200, forced.body
    before = len(system.stripe.requests)
    ids = set()
    for rid, answer in _traced_many(system, ROUNDS, "POST", "/api/payments/checkout", {"pack": "starter"}, **user):
        ids.add(rid)
        assert answer.status == 503, answer.body
        assert answer.json()["error"]["code"] == "CIRCUIT_OPEN"
        assert int(answer.headers["Retry-After"]) >= 1
    assert len(system.stripe.requests) == before, "a worker called Stripe through a forced-open breaker"
    _assert_spread(system, ids)

    reset = system.call("POST", "/admin/api/monitoring/circuit-breakers/reset/stripe", headers=admin)
    assert reset.status == 200, reset.body
    time.sleep(1.2)  # breaker state read from Redis is cached for at most a second per process
    ids = set()
    for rid, answer in _traced_many(system, ROUNDS, "GET", "/api/errors/circuit-breakers", **admin):
        ids.add(rid)
        assert answer.status == 200, answer.body
        assert answer.json()["breakers"]["stripe"]["state"] == "closed", answer.body
    _assert_spread(system, ids)


def test_a_rate_limit_of_n_is_n_across_workers(system: System, tokens: dict[str, dict[str, str]]) -> None:
    client = redis.Redis.from_url(system.redis_url)
    for key in client.scan_iter("*LIMIT*"):  # the logins made for the tokens must not count here
        client.delete(key)
    # RATELIMIT_LOGIN is 10 per minute per client address: 10 attempts pass (wrong password: 401), then 429.
    body = {"email": "nobody@example.com", "password": "wrong-password-123"}
    answers = _traced_many(system, 25, "POST", "/api/auth/login", body)
    ids = {rid for rid, _ in answers}
    statuses = [answer.status for _, answer in answers]
    assert statuses.count(401) == 10, statuses
    assert statuses.count(429) == 15, statuses
    _assert_spread(system, ids)


def test_error_statistics_add_up_across_workers(system: System, tokens: dict[str, dict[str, str]]) -> None:
    admin = tokens["admin"]

    def not_found() -> int:
        stats = system.call("GET", "/admin/api/monitoring/errors/stats", headers=admin).json()
        return int(stats["by_code"].get("NOT_FOUND", {}).get("total", 0))

    start = not_found()
    ids = set()
    for rid, answer in _traced_many(system, ROUNDS, "GET", lambda n: f"/api/missing/{n}"):
        ids.add(rid)
        assert answer.status == 404
    _assert_spread(system, ids)
    deadline = time.monotonic() + 15  # each worker's writer thread flushes its events on its own schedule
    while not_found() - start < ROUNDS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not_found() - start == ROUNDS


def _metric_total(text: str, path_pattern: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or "_total{" not in line or "request" not in line:
            continue
        if re.search(path_pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_totals_equal_the_requests_sent(system: System) -> None:
    for worker in system.job_workers:  # the last test: both job workers survived the whole module
        assert worker.poll() is None, "a job worker exited"
    first = system.call("GET", "/metrics")
    assert first.status == 200, first.body[:300]
    route = r'(?:endpoint|route|path)="[^"]*system[-_]health'
    before = _metric_total(first.body.decode(), route)
    ids = {rid for rid, _ in _traced_many(system, ROUNDS, "GET", "/api/errors/system-health")}
    _assert_spread(system, ids)
    after = _metric_total(system.call("GET", "/metrics").body.decode(), route)
    assert after - before == ROUNDS, (before, after)
