"""Prometheus metrics: counters from hooks, gauges at scrape, the token, and 4 gunicorn workers adding up."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask

from backend.app.resilience.recovery import get_breaker, with_error_recovery
from bench.harness import base_env, gunicorn
from tests.harness.app import ADMIN_EMAIL, bearer, login
from tests.harness.contract import assert_error
from tests.harness.metrics import sample


def test_requests_errors_and_breakers_are_counted(app: Flask) -> None:
    """Requests by endpoint and status, errors by code, breaker state, transitions, retries and fallbacks."""
    client = app.test_client()
    for _ in range(3):
        client.get("/healthz")
    client.get("/no/such/page")
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    client.post("/admin/api/monitoring/circuit-breakers/email/force-open", headers=headers)

    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("refused")
        return "ok"

    with app.app_context():
        assert with_error_recovery("storage", "upload", max_retries=2, idempotent=True)(flaky)() == "ok"
        served = with_error_recovery("stripe", "charge", max_retries=0, fallback=lambda exc: "later")(_refuse)()
        assert served == "later"
        assert get_breaker("email").state.value == "forced_open"

    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "oriel_http_requests_total", endpoint="api.healthz", status="200", method="GET") == 3
    assert sample(text, "oriel_http_requests_total", endpoint="unmatched", status="404") == 1
    assert sample(text, "oriel_errors_total", code="NOT_FOUND") == 1
    assert sample(text, "oriel_circuit_breaker_state", service="email") == 3
    assert sample(text, "oriel_circuit_breaker_state", service="storage") == 0
    assert sample(text, "oriel_circuit_breaker_transitions_total", service="email", to_state="forced_open") == 1
    assert sample(text, "oriel_outbound_retries_total", service="storage") == 1
    assert sample(text, "oriel_outbound_calls_total", service="storage", outcome="ok") == 1
    assert sample(text, "oriel_fallbacks_served_total", service="stripe") == 1
    assert sample(text, "oriel_dead_letters") == 0
    assert "oriel_queue_depth" in text and "oriel_jobs" in text


def _refuse() -> None:
    raise ConnectionError("refused")


def test_metrics_token_is_required_when_set(make_app: Callable[..., Flask]) -> None:
    """With METRICS_TOKEN, no or a wrong token is a 401 envelope; the right one scrapes."""
    app = make_app(METRICS_TOKEN="scrape-token-123")
    client = app.test_client()
    assert_error(client.get("/metrics"), 401, "METRICS_TOKEN_REQUIRED")
    assert_error(client.get("/metrics", headers=bearer("wrong")), 401, "METRICS_TOKEN_REQUIRED")
    ok = client.get("/metrics", headers=bearer("scrape-token-123"))
    assert ok.status_code == 200 and ok.mimetype == "text/plain"
    assert "oriel_http_requests_total" in ok.get_data(as_text=True)


@pytest.mark.timeout(120)
def test_four_gunicorn_workers_add_up(tmp_path: Path, migrated_sqlite_template: Path) -> None:
    """Requests spread over 4 workers: the scraped total equals the requests actually sent."""
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "stale_counter_1.db").write_bytes(b"")  # a stale file from an earlier run is removed
    env = base_env(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "METRICS_TOKEN": "t0k"})
    shutil.copy(migrated_sqlite_template, tmp_path / "bench.db")  # the real migrations, run once per session
    sent = 300
    # Sync workers take one connection at a time, so concurrent clients really spread over them; a
    # gthread worker accepts greedily and, on a loaded machine, one of them could take every request.
    with gunicorn(env, workers=4, threads=1, worker_class="sync", ready_path="/healthz", ready_timeout=120) as server:
        url = server.url("/api/errors/system-health")

        def hit(_: int) -> int:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status

        # Ready means one worker answered; on a loaded machine the others may still be importing the app, and
        # the first takes every request. Send rounds until a second worker has counted some (bounded), then add up.
        statuses: list[int] = []
        deadline = time.monotonic() + 60
        while True:
            with ThreadPoolExecutor(8) as pool:
                statuses += pool.map(hit, range(sent))
            workers = {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
            if len(workers) >= 2 or time.monotonic() > deadline:
                break
        sent = len(statuses)
        assert statuses == [200] * sent
        request = urllib.request.Request(server.url("/metrics"), headers={"Authorization": "Bearer t0k"})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    pids = {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
    assert len(pids) >= 2, pids  # the load really was spread over several workers
    total = sample(text, "oriel_http_requests_total", endpoint="api.system_health", status="200")
    assert total == sent, total
