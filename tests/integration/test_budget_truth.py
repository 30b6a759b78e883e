"""Numbers an admin can trust in an incident (#15 points 4 and 6).

- Error rates split the caller's mistakes (4xx) from the server's faults (5xx, job failures).
- Error budgets count server faults; a 503 SERVICE_NOT_CONFIGURED is reported, never burned as an outage.
- A budget past zero reads as exhausted, with how many budgets were spent.
- Background jobs have budgets of their own, per kind, counted once when a job ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from backend.app.errors import ValidationError
from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models import SloMinute
from backend.app.monitoring import flush_error_stats
from backend.app.resilience.retry import RetryPolicy
from tests.harness.app import ADMIN_EMAIL, bearer, login

TABLES = ("error_group_hours", "error_code_hours", "error_code_minutes", "error_minutes", "error_events", "slo_minutes")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_app(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> Flask:
    """The app on SQLite and on PostgreSQL (the counting tables emptied: the PostgreSQL database is shared)."""
    app = make_app() if request.param == "sqlite" else request.getfixturevalue("pg_app")
    with app.app_context(), db.engine.begin() as conn:
        for table in TABLES:
            conn.exec_driver_sql(f"DELETE FROM {table}")
        conn.exec_driver_sql("DELETE FROM error_groups")
    return app


def _admin(app: Flask) -> dict[str, str]:
    return bearer(login(app.test_client(), ADMIN_EMAIL)["access_token"])


def _budgets(app: Flask, headers: dict[str, str]) -> dict[str, dict]:
    response = app.test_client().get("/admin/api/monitoring/slo", headers=headers)
    assert response.status_code == 200, response.get_json()
    return {b["group"]: b for b in response.get_json()["budgets"]}


def test_point4_client_errors_and_server_errors_are_counted_apart(any_app: Flask) -> None:
    """An ordinary mix of 404s, 422s and a bad token is 4xx; only the one crash is a server error."""

    @any_app.get("/__test/crash")
    def crash() -> None:
        raise RuntimeError("a bug")

    client = any_app.test_client()
    headers = _admin(any_app)
    for _ in range(6):
        assert client.get("/no/such/page").status_code == 404
    for _ in range(2):
        assert client.post("/api/auth/login", json={"email": "not-an-address"}).status_code in (400, 422)
    assert client.get("/api/me", headers={"Authorization": "Bearer not.a.token"}).status_code == 401
    assert client.get("/__test/crash").status_code == 500
    for _ in range(5):
        assert client.get("/healthz").status_code == 200
    flush_error_stats(any_app)

    stats = client.get("/admin/api/monitoring/errors/stats", headers=headers).get_json()
    rate = stats["rates"]["5m"]
    assert (rate["client_errors"], rate["server_errors"], rate["errors"]) == (9, 1, 10)
    requests = rate["requests"]
    assert requests >= 15  # the admin's own sign-in is a request too
    assert rate["server_error_ratio"] == round(1 / requests, 4)
    assert rate["client_error_ratio"] == round(9 / requests, 4)
    # The chart's points carry the same split.
    points = client.get("/admin/api/dashboard/timeseries", headers=headers).get_json()["points"]
    assert sum(p["server_errors"] for p in points) == 1 and sum(p["client_errors"] for p in points) == 9

    # The SLO counts the crash as bad and none of the 4xx.
    budgets = _budgets(any_app, headers)
    assert sum(b["errors"] for b in budgets.values()) == 1
    assert budgets["other"]["errors"] == 1  # the test route has no blueprint


def test_point4_a_service_that_is_not_configured_is_reported_not_burned(any_app: Flask) -> None:
    """Checkout without Stripe: 503 SERVICE_NOT_CONFIGURED, counted apart; the payments budget stays whole."""
    client = any_app.test_client()
    headers = _admin(any_app)
    user = bearer(login(client, "buyer@example.com")["access_token"])
    response = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=user)
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "SERVICE_NOT_CONFIGURED"
    assert client.get("/api/payments/credits", headers=user).status_code == 200

    payments = _budgets(any_app, headers)["payments"]
    assert payments["not_configured"] == 1
    assert payments["errors"] == 0 and payments["requests"] == 1  # the credits read; the refusal is not traffic
    assert payments["budget_remaining"] == 1.0 and payments["budget_consumed"] == 0.0
    assert payments["exhausted"] is False and payments["kind"] == "requests"


def test_point4_a_budget_past_zero_reads_as_exhausted_with_the_factor(make_app: Callable[..., Flask]) -> None:
    """One bad answer in seven against 99.9%: 142.9 budgets spent (the dashboard once said "-14186%")."""
    app = make_app(SLOS={"*": {"objective": 0.999, "window_days": 30}})
    headers = _admin(app)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    with app.app_context():
        db.session.add(SloMinute(minute=minute, endpoint_group="spent", total=7, bad=1, not_configured=0))
        db.session.add(SloMinute(minute=minute, endpoint_group="half", total=10_000, bad=5, not_configured=0))
        db.session.commit()
    budgets = _budgets(app, headers)
    spent, half = budgets["spent"], budgets["half"]
    assert spent["exhausted"] is True and spent["budget_consumed"] == round(1 / 7 / 0.001, 6)
    assert spent["budget_remaining"] == round(1 - 1 / 7 / 0.001, 6)
    assert half["exhausted"] is False and half["budget_consumed"] == 0.5 and half["budget_remaining"] == 0.5


FAILING, PASSING, FLAKY = "test.budget_fails", "test.budget_passes", "test.budget_flaky"


@pytest.fixture
def job_kinds() -> Iterator[None]:
    """Three kinds: one refused for good, one that succeeds, one that fails once and then succeeds."""
    attempts: dict[int, int] = {}

    def fails(ctx: JobContext) -> None:
        raise ValidationError("Audio file has no samples", field="file")

    def flaky(ctx: JobContext) -> None:
        attempts[ctx.job_id] = attempts.get(ctx.job_id, 0) + 1
        if attempts[ctx.job_id] == 1:
            raise ConnectionError("peer reset the connection")

    no_retry = RetryPolicy(permanent_retries=0)
    REGISTRY.register(JobKind(FAILING, fails, policy=no_retry), replace=True)
    REGISTRY.register(JobKind(PASSING, lambda ctx: None), replace=True)
    REGISTRY.register(JobKind(FLAKY, flaky), replace=True)
    yield
    for name in (FAILING, PASSING, FLAKY):
        REGISTRY.unregister(name)


def test_point6_jobs_have_budgets_of_their_own_counted_when_they_end(
    make_app: Callable[..., Flask], job_kinds: None
) -> None:
    """Each job counts once, in its kind's budget: a retried attempt is not an end, a refusal is bad."""
    app = make_app(RETRY_SLEEP_ENABLED=False)
    headers = _admin(app)
    with app.app_context():
        enqueue(FAILING, {})
        enqueue(PASSING, {})
        enqueue(PASSING, {})
        enqueue(FLAKY, {}, max_attempts=3)
    options = WorkerOptions(install_signals=False, schedule=False, poll_seconds=0.02, drain=True, max_seconds=30.0)
    # Full jitter drawn at its floor: the flaky job's retry is due at once, so one drain runs both attempts.
    Worker(app, options, rng=lambda lo, hi: lo).run()

    budgets = _budgets(app, headers)
    failing, passing, flaky = (budgets[f"jobs:{name}"] for name in (FAILING, PASSING, FLAKY))
    assert all(b["kind"] == "jobs" for b in (failing, passing, flaky))
    assert (failing["requests"], failing["errors"], failing["exhausted"]) == (1, 1, True)
    assert (passing["requests"], passing["errors"], passing["budget_remaining"]) == (2, 0, 1.0)
    assert (flaky["requests"], flaky["errors"]) == (1, 0)  # failed once, then succeeded: one good job
    # Jobs never mix into the request budgets.
    assert all(b["kind"] == "requests" for g, b in budgets.items() if not g.startswith("jobs:"))
