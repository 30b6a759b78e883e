"""#13 point 7: the `database` breaker is real.

A real PostgreSQL (the session's own database) is reached through `TcpFaultProxy`, which is made to go
down (connections refused) or to hang (connections accepted, never answered: each connect waits for
the 3 s connect timeout). Failed connects open the breaker after its minimum calls; later requests
fail fast with 503 DATABASE_UNAVAILABLE and `Retry-After` without touching the database; health shows
the breaker open while its probe sees the real database; after the proxy passes again, the half-open
trial connect closes the breaker; a job worker rides out the outage and runs its job afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from backend.app.db_errors import DatabaseCircuitOpenError, is_unreachable, translate_db_error
from backend.app.extensions import db
from backend.app.jobs import enqueue
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models import ErrorEvent
from backend.app.models.job import SUCCEEDED, Job
from backend.app.monitoring import flush_error_stats
from backend.app.monitoring.health import service_health
from backend.app.resilience.classifier import ErrorKind, classify
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log, register
from tests.harness.contract import assert_error
from tests.harness.peers.tcp_fault_proxy import TcpFaultProxy

CONNECT_TIMEOUT = 3.0  # the app's default PostgreSQL connect timeout (DATABASE_CONNECT_TIMEOUT)
FAST = 0.5  # "fails fast": far below one connect timeout
MIN_CALLS = 3
RECOVERY = 1.5  # the test breakers' recovery_timeout (the default for the database is 10 s)
BREAKERS = {"database": {"min_calls": MIN_CALLS, "recovery_timeout": RECOVERY}}


@dataclass
class ProxiedDatabase:
    """The session's PostgreSQL behind a fault proxy, and a factory for apps that reach it only through it."""

    proxy: TcpFaultProxy
    url: str
    make: Callable[..., Flask]


@pytest.fixture
def proxied_db(make_app: Callable[..., Flask], pg_app: Flask, _postgres_migrated: str) -> Iterator[ProxiedDatabase]:
    """A fault proxy in front of PostgreSQL; `pg_app` (direct) empties the tables after the test."""
    parts = urlsplit(_postgres_migrated)
    proxy = TcpFaultProxy(parts.port or 5432, target_host=parts.hostname or "127.0.0.1")
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    url = urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}"))
    built: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = make_app(SQLALCHEMY_DATABASE_URI=url, CIRCUIT_BREAKERS=BREAKERS, **overrides)
        built.append(app)
        return app

    try:
        yield ProxiedDatabase(proxy, url, make)
    finally:
        proxy.up()
        for app in built:
            flush_error_stats(app)  # while the database is reachable: nothing of this test lands later
        proxy.close()


def _breaker(app: Flask) -> dict[str, Any]:
    return app.extensions["breakers"].get("database").snapshot()


def _me(client: FlaskClient, headers: dict[str, str]) -> Any:
    """An ordinary authenticated request: the token's user is loaded from the database."""
    return client.get("/api/me", headers=headers)


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def _assert_fails_fast(app: Flask, proxy: TcpFaultProxy, headers: dict[str, str], *, requests: int = 5) -> int:
    """Every request is a fast 503 DATABASE_UNAVAILABLE with Retry-After, and none reaches the proxy."""
    seen = (proxy.refused, proxy.held)
    client = app.test_client()
    retry_after = 0
    for _ in range(requests):
        response, elapsed = _timed(lambda: _me(client, headers))
        error = assert_error(response, 503, "DATABASE_UNAVAILABLE")
        assert elapsed < FAST, f"took {elapsed:.2f} s: waited for the database instead of failing fast"
        assert error["recoverable"] is True and error["details"] == {"service": "database", "state": "open"}
        assert 1 <= error["retry_after"] <= RECOVERY + 1
        assert response.headers["Retry-After"] == str(error["retry_after"])
        retry_after = error["retry_after"]
    assert (proxy.refused, proxy.held) == seen, "an open breaker must not even try to connect"
    return retry_after


def _recover(app: Flask, retry_after: int, headers: dict[str, str]) -> None:
    """After Retry-After, the next request is the trial connect: it succeeds and closes the breaker."""
    time.sleep(retry_after + 0.1)
    client = app.test_client()
    assert _me(client, headers).status_code == 200
    snapshot = _breaker(app)
    assert snapshot["state"] == "closed", snapshot
    assert login(client, "after@example.com")["access_token"]  # and everything works again


@pytest.mark.postgres
def test_point7_a_database_that_goes_down_opens_the_breaker_and_requests_fail_fast(
    proxied_db: ProxiedDatabase,
) -> None:
    app = proxied_db.make()
    client = app.test_client()
    admin = bearer(login(client, ADMIN_EMAIL)["access_token"])
    user = bearer(login(client)["access_token"])
    assert _breaker(app)["state"] == "closed"

    proxied_db.proxy.down()
    for _ in range(MIN_CALLS):  # each request's connect is refused: recorded in the breaker
        assert_error(_me(client, user), 503, "DATABASE_UNAVAILABLE")
    snapshot = _breaker(app)
    # Open once the window holds MIN_CALLS calls (the first, healthy connect among them) at >= 50 % failures.
    assert snapshot["state"] == "open" and snapshot["calls_in_window"] >= MIN_CALLS, snapshot
    opened = [line for line in read_log(app, "app.log") if line.get("breaker") == "database"]
    assert opened and opened[-1]["new_state"] == "open"

    retry_after = _assert_fails_fast(app, proxied_db.proxy, user)

    # Health: the breaker is open, and the probe (around the breaker) sees the real database.
    health = service_health(app)["services"]["database"]
    assert health["breaker"]["state"] == "open" and health["probe"]["status"] == "error", health
    assert health["last_failure"] is not None
    public = app.test_client().get("/api/errors/system-health").get_json()
    assert public["status"] == "down" and "everything" in public["degraded_features"]
    scrape = app.test_client().get("/metrics")  # what a monitoring system sees: the breaker open (2)
    assert scrape.status_code == 200 and 'oriel_circuit_breaker_state{service="database"} 2.0' in scrape.text
    ready, elapsed = _timed(lambda: app.test_client().get("/readyz"))
    assert_error(ready, 503, "SERVICE_NOT_READY")
    assert elapsed < FAST
    # The admin endpoint cannot prove who calls it without the database: it fails closed, and fast.
    response, elapsed = _timed(lambda: client.get("/admin/api/monitoring/health/services", headers=admin))
    assert_error(response, 503, "DATABASE_UNAVAILABLE")
    assert elapsed < FAST

    proxied_db.proxy.up()
    health = service_health(app)["services"]["database"]
    assert health["probe"]["status"] == "ok", health  # the database is back...
    assert health["breaker"]["state"] == "open"  # ...and the breaker waits for its trial
    _recover(app, retry_after, user)
    health = client.get("/admin/api/monitoring/health/services", headers=admin).get_json()["services"]["database"]
    assert health["breaker"]["state"] == "closed" and health["probe"]["status"] == "ok"

    # Every 503 of the outage reached the error statistics once the database was back (nothing lost).
    flush_error_stats(app)
    with app.app_context():
        stmt = select(func.count()).select_from(ErrorEvent).where(ErrorEvent.code == "DATABASE_UNAVAILABLE")
        assert db.session.execute(stmt).scalar_one() >= MIN_CALLS + 5 + 1


@pytest.mark.postgres
def test_point7_a_hung_database_costs_one_connect_timeout_only_until_the_breaker_opens(
    proxied_db: ProxiedDatabase,
) -> None:
    app = proxied_db.make(HEALTH_PROBE_DEADLINE=1.0)
    user = bearer(login(app.test_client())["access_token"])

    proxied_db.proxy.hang()
    results: list[tuple[int, float]] = []

    def request() -> None:
        response, elapsed = _timed(lambda: _me(app.test_client(), user))
        results.append((response.status_code, elapsed))

    threads = [threading.Thread(target=request) for _ in range(MIN_CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CONNECT_TIMEOUT * 4)
    # Before the breaker knows, each request waits for its connect to time out (they wait together).
    assert [status for status, _ in results] == [503] * MIN_CALLS
    assert all(elapsed >= CONNECT_TIMEOUT * 0.8 for _, elapsed in results), results
    assert proxied_db.proxy.held >= MIN_CALLS
    assert _breaker(app)["state"] == "open"

    retry_after = _assert_fails_fast(app, proxied_db.proxy, user)
    ready, elapsed = _timed(lambda: app.test_client().get("/readyz"))
    assert_error(ready, 503, "SERVICE_NOT_READY")
    assert elapsed < FAST
    health = service_health(app)["services"]["database"]
    assert health["breaker"]["state"] == "open"
    assert health["probe"]["status"] == "timeout"  # the probe really tried the database, and it hangs

    proxied_db.proxy.up()
    _recover(app, retry_after, user)


@pytest.mark.postgres
def test_point7_a_failed_trial_opens_the_breaker_again(proxied_db: ProxiedDatabase) -> None:
    app = proxied_db.make(ERROR_STATS_ENABLED=False)  # its writer thread must not take the trial slot
    client = app.test_client()
    user = bearer(login(client)["access_token"])
    proxied_db.proxy.down()
    for _ in range(MIN_CALLS):
        assert_error(_me(client, user), 503, "DATABASE_UNAVAILABLE")
    retry_after = _assert_fails_fast(app, proxied_db.proxy, user, requests=1)
    time.sleep(retry_after + 0.1)
    refused = proxied_db.proxy.refused
    assert_error(_me(client, user), 503, "DATABASE_UNAVAILABLE")  # the trial: tried, and refused
    assert proxied_db.proxy.refused == refused + 1
    assert _breaker(app)["state"] == "open"
    _assert_fails_fast(app, proxied_db.proxy, user)  # and no other request tries until the next trial


@pytest.mark.postgres
def test_point7_a_job_worker_survives_the_outage_and_runs_its_job_afterwards(
    proxied_db: ProxiedDatabase, pg_app: Flask
) -> None:
    app = proxied_db.make()
    options = WorkerOptions(install_signals=False, schedule=False, poll_seconds=0.05, heartbeat_seconds=0.1)
    worker = Worker(app, options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # the worker is registered and polling
        proxied_db.proxy.down()
        with pg_app.app_context():  # another process, direct to the database, enqueues during the outage
            job_id = enqueue("maintenance.noop", {"n": 7}).id
        deadline = time.monotonic() + 10
        while _breaker(app)["state"] != "open" and time.monotonic() < deadline:
            time.sleep(0.05)  # the worker's own claims open the breaker
        assert _breaker(app)["state"] == "open"
        time.sleep(0.5)
        assert thread.is_alive()
        with pg_app.app_context():
            assert db.session.get(Job, job_id).status != SUCCEEDED

        proxied_db.proxy.up()
        deadline = time.monotonic() + RECOVERY + 10
        status = None
        while time.monotonic() < deadline:
            with pg_app.app_context():
                status = db.session.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
            if status == SUCCEEDED:
                break
            time.sleep(0.1)
        assert status == SUCCEEDED
        assert thread.is_alive() and _breaker(app)["state"] == "closed"
    finally:
        worker.stop()
        thread.join(15)
    assert not thread.is_alive()
    warnings = [line["message"] for line in read_log(app, "app.log") if line["level"] == "WARNING"]
    assert any("could not claim a job" in message for message in warnings)


@pytest.mark.postgres
def test_point7_a_refused_login_is_a_configuration_fault_not_an_outage(
    make_app: Callable[..., Flask], _postgres_migrated: str
) -> None:
    url = _postgres_migrated.rsplit("/", 1)[0] + "/oriel_no_such_database"
    app = make_app(SQLALCHEMY_DATABASE_URI=url, CIRCUIT_BREAKERS=BREAKERS, ERROR_STATS_ENABLED=False)
    client = app.test_client()
    for _ in range(MIN_CALLS + 2):
        error = assert_error(register(client), 503, "SERVICE_MISCONFIGURED")
        assert error["recoverable"] is False and "retry_after" not in error
        assert "oriel_no_such_database" not in str(error)
    snapshot = _breaker(app)
    assert snapshot["state"] == "closed" and snapshot["calls_in_window"] == MIN_CALLS + 2, snapshot


def test_point7_sqlite_is_not_guarded(app: Flask) -> None:
    assert app.extensions["database_guards"] == []
    client = app.test_client()
    assert _me(client, bearer(login(client)["access_token"])).status_code == 200
    assert _breaker(app)["calls_in_window"] == 0
    assert service_health(app)["services"]["database"]["probe"]["status"] == "ok"


def test_point7_the_fail_fast_error_is_one_every_database_handler_understands(app: Flask) -> None:
    """The job worker, the error-statistics writer and the HTTP handler all catch SQLAlchemyError."""
    error = DatabaseCircuitOpenError(7)
    assert isinstance(error, sa_exc.SQLAlchemyError) and is_unreachable(error)
    assert classify(error).kind is ErrorKind.TRANSIENT  # jobs retry it with backoff, never dead-letter it at once
    with app.test_request_context():
        api_error = translate_db_error(error)
    assert (api_error.status_code, api_error.code, api_error.retry_after) == (503, "DATABASE_UNAVAILABLE", 7)


def test_point7_the_database_breaker_recovers_sooner_than_the_others(app: Flask) -> None:
    breakers = app.extensions["breakers"]
    assert breakers.get("database").config.recovery_timeout < breakers.get("stripe").config.recovery_timeout


def test_point7_the_connect_timeout_is_a_setting(make_app: Callable[..., Flask]) -> None:
    from config import ConfigError, load_config

    assert load_config({"FLASK_ENV": "testing", "DATABASE_CONNECT_TIMEOUT": "5"}).DATABASE_CONNECT_TIMEOUT == 5
    with pytest.raises(ConfigError, match="DATABASE_CONNECT_TIMEOUT"):
        load_config({"FLASK_ENV": "testing", "DATABASE_CONNECT_TIMEOUT": "0"})
    app = make_app(
        SQLALCHEMY_DATABASE_URI="postgresql+psycopg://nobody@127.0.0.1:1/none",
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"application_name": "oriel"}},
        DATABASE_CONNECT_TIMEOUT=2,
    )
    # Connect arguments of one's own keep the timeout (a PostgreSQL connect must never wait unbounded).
    connect_args = app.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"]
    assert connect_args == {"application_name": "oriel", "connect_timeout": 2}
    assert len(app.extensions["database_guards"]) == 1


@pytest.mark.postgres
def test_point7_an_outages_error_events_are_written_as_soon_as_the_database_answers_not_after_the_trial(
    pg_app: Flask,
) -> None:
    """The error-statistics writer goes around the breaker: a worker killed while the breaker still waits for its
    trial must not take the outage's events with it (seen in the fault-under-load run)."""
    from backend.app.monitoring import record_error
    from backend.app.resilience.database_breaker import bypassed
    from backend.app.resilience.recovery import get_breaker

    with pg_app.app_context():
        breaker = get_breaker("database")
        breaker.force_open(actor="test")  # the database answers, the breaker still refuses
        db.engine.dispose()  # no pooled connection: anything that runs must connect anew
        try:
            with pytest.raises(DatabaseCircuitOpenError):
                db.session.execute(select(func.count()).select_from(ErrorEvent)).scalar_one()
            db.session.rollback()
            record_error(RuntimeError("an outage's error"), source="job", code="OUTAGE_EVENT")
            assert flush_error_stats(pg_app) == 1
            with bypassed():
                stmt = select(func.count()).select_from(ErrorEvent).where(ErrorEvent.code == "OUTAGE_EVENT")
                assert db.session.execute(stmt).scalar_one() == 1
                db.session.rollback()
            # The connection the writer made around the breaker is pooled, but never serves a request while the
            # breaker refuses: the request still fails fast, and the breaker gets its trial.
            with pytest.raises(DatabaseCircuitOpenError):
                db.session.execute(select(func.count()).select_from(ErrorEvent)).scalar_one()
            db.session.rollback()
        finally:
            breaker.reset(actor="test")
        assert db.session.execute(select(func.count()).select_from(ErrorEvent)).scalar_one() == 1
