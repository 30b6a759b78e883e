"""Observability costs, measured as ratios within one run (`python bench/bench_observability.py`).

1. Per-request cost of the metrics and SLO hooks: `GET /healthz` through the full app (Flask test
   client), with metrics and SLO counting on vs off in alternating rounds, and the two hooks alone
   (called directly, which noise on a shared machine cannot hide). Target: under 10% of a trivial request.
2. The fault injector's check on every guarded attempt, disabled and enabled with no rule.
   Target: a few microseconds (a guarded call itself costs about 100 us with its log line).
3. The admin health report with a hung dependency (a Redis that accepts and never answers), probe
   deadline 0.25 s (below the Redis client's own 0.5 s timeout): the endpoint answers at the deadline
   with "timeout" instead of hanging. Target: < deadline + 0.3 s.
4. A `/metrics` scrape (single process) after the requests above.

Everything runs in this process; the hung "Redis" is a socket on 127.0.0.1 that never answers.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask import Flask
from flask_migrate import upgrade

from backend.app import create_app
from backend.app.extensions import db
from backend.app.resilience.faults import wrap as inject_fault
from config import TestingConfig

ADMIN = "bench-admin@example.com"


def make_app(folder: Path, **overrides: Any) -> Flask:
    """A migrated SQLite app in `folder` with quiet logs."""
    settings: dict[str, Any] = {
        "SECRET_KEY": "bench-secret-key-0123456789abcdef",
        "JWT_SECRET_KEY": "bench-jwt-secret-key-0123456789abcdef",
        "LOG_DIR": str(folder / "logs"),
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'bench.db'}",
        "ADMIN_EMAILS": frozenset({ADMIN}),
        "RATELIMIT_ENABLED": False,
        "REQUEST_LOGGING_ENABLED": False,
        "ERROR_STATS_ENABLED": False,
    }
    settings.update(overrides)
    app = create_app(TestingConfig, **settings)
    with app.app_context():
        upgrade()
    return app


def per_request_us(app: Flask, path: str, n: int, rounds: int = 5) -> float:
    """Median over rounds of the mean microseconds per request."""
    client = app.test_client()
    for _ in range(200):
        client.get(path)
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            client.get(path)
        results.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(results)


def interleaved_us(apps: tuple[Flask, Flask], path: str, n: int, rounds: int) -> tuple[float, float]:
    """Median us/request of each app, measured in alternating rounds so machine noise hits both alike."""
    clients = [a.test_client() for a in apps]
    for client in clients:
        for _ in range(200):
            client.get(path)
    results: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for index, client in enumerate(clients):
            started = time.perf_counter()
            for _ in range(n):
                client.get(path)
            results[index].append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(results[0]), statistics.median(results[1])


def per_call_us(fn: Any, n: int, rounds: int = 5) -> float:
    """Median over rounds of the mean microseconds per call."""
    for _ in range(500):
        fn()
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        results.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(results)


def admin_token(app: Flask) -> str:
    """Register and log in the bench admin."""
    client = app.test_client()
    body = {"email": ADMIN, "password": "correct-horse-battery"}
    client.post("/api/auth/register", json=body)
    app.test_cli_runner().invoke(args=["users", "create-admin", ADMIN])  # registering proves nothing
    return str(client.post("/api/auth/login", json=body).get_json()["access_token"])


def main() -> None:
    """Run the four measurements and print them."""
    n = 3000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "on").mkdir()
        (root / "off").mkdir()
        (root / "hung").mkdir()
        on = make_app(root / "on")
        off = make_app(root / "off", METRICS_ENABLED=False, SLO_ENABLED=False)

        print(f"## 1. GET /healthz through the app, {n // 3} requests x 15 alternating rounds (median us/request)")
        base, full = interleaved_us((off, on), "/healthz", n // 3, 15)
        print(f"  metrics and SLO hooks off   {base:8.1f} us")
        print(f"  metrics and SLO hooks on    {full:8.1f} us   ratio {full / base:5.3f}  (+{full - base:.1f} us)")

        ours = ("backend.app.monitoring.metrics", "backend.app.monitoring.alerts.slo")
        hooks = [f for f in on.after_request_funcs[None] if f.__module__ in ours]
        names = {f.__module__ + "." + f.__name__ for f in hooks}
        with on.test_request_context("/healthz"):
            from flask import Response

            from backend.app.edge.request_context import request_started

            request_started.set(time.perf_counter())
            response = Response("{}", status=200)
            per_hook = per_call_us(lambda: [hook(response) for hook in hooks], n * 10)
        print(f"  the hooks alone ({', '.join(sorted(names))}): {per_hook:6.2f} us per request")

        print(f"\n## 2. The fault-injection check on each guarded attempt, {n * 10} calls x 5 rounds (median us/call)")
        plain = make_app(root / "off", METRICS_ENABLED=False, SLO_ENABLED=False)
        chaos = make_app(root / "on", FAULT_INJECTION_ENABLED=True, METRICS_ENABLED=False, SLO_ENABLED=False)

        def noop() -> None:
            return None

        with plain.app_context():
            disabled = per_call_us(lambda: inject_fault("storage", "noop", noop), n * 10)
        with chaos.app_context():
            no_rule = per_call_us(lambda: inject_fault("storage", "noop", noop), n * 10)
        print(f"  fault injection disabled    {disabled:8.2f} us")
        print(f"  enabled, no rule            {no_rule:8.2f} us")

        print("\n## 3. Admin health report with a hung dependency (probe deadline 0.25 s)")
        hung = socket.socket()
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        port = hung.getsockname()[1]
        app = make_app(
            root / "hung",
            REDIS_URL=f"redis://127.0.0.1:{port}/0",
            CIRCUIT_BREAKER_STORAGE="memory",
            HEALTH_PROBE_DEADLINE=0.25,
        )
        headers = {"Authorization": f"Bearer {admin_token(app)}"}
        client = app.test_client()
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            body = client.get("/admin/api/monitoring/health/services", headers=headers).get_json()
            timings.append(time.perf_counter() - started)
        redis_probe = body["services"]["redis"]["probe"]["status"]
        print(f"  3 calls: {', '.join(f'{t:.2f} s' for t in timings)}   redis probe: {redis_probe}")
        hung.close()

        print("\n## 4. /metrics scrape, single process")
        scrape = per_request_us(on, "/metrics", 50, rounds=3)
        print(f"  {scrape / 1000:8.2f} ms per scrape")
        for each in (on, off, plain, chaos, app):
            with each.app_context():
                db.engine.dispose()


if __name__ == "__main__":
    main()
