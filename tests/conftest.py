"""Shared fixtures: apps built from the factory with a test config, real databases, helpers."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from backend.app import create_app
from backend.app.extensions import db
from backend.app.monitoring import flush_error_stats
from backend.logging_config import flush_logs
from config import TestingConfig

# The local peers (Stripe, Cloud Storage, SendGrid, webhooks, audio, fault proxy): see tests/peers/README.md.
pytest_plugins = ["tests.peers.fixtures"]

ADMIN_EMAIL = "admin@example.com"
TEST_SECRET_KEY = "test-secret-key-0123456789abcdef"
TEST_JWT_SECRET_KEY = "test-jwt-secret-key-0123456789abcdef"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_service(name: str, reason: str) -> None:
    """Skip with a visible reason on a developer machine; fail in CI, where services must run."""
    if IN_CI:
        pytest.fail(f"{name} is required in CI: {reason}")
    pytest.skip(f"{name} not available: {reason}")


def base_settings(tmp_path: Path) -> dict[str, Any]:
    """Settings every test app shares: temporary logs, known secrets, one admin."""
    return {
        "SECRET_KEY": TEST_SECRET_KEY,
        "JWT_SECRET_KEY": TEST_JWT_SECRET_KEY,
        "LOG_DIR": str(tmp_path / "logs"),
        "ADMIN_EMAILS": frozenset({ADMIN_EMAIL}),
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'test.db'}",
        "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),  # never the checkout's instance/storage
        # Rate limits kept in the shared Redis are this test's own (its apps still share them): another test's
        # or another run's sign-ups from 127.0.0.1 must not use up this one's hourly limit.
        "RATELIMIT_KEY_PREFIX": f"oriel-test-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}",
    }


def flush_pending(app: Flask) -> None:
    """Write what the app's background writers still hold (error events, SLO counts) now.

    Left pending, the SLO flusher would write them seconds later, after the test disposed the engine: the
    write opens a fresh pool on the disposed engine (and the database breaker's override reader another),
    whose connections stay open until the app is garbage collected. On PostgreSQL a suite run that way held
    up to 87 idle connections and later tests met "too many clients".
    """
    flush_error_stats(app)
    counter = app.extensions.get("slo_counter")
    if counter is not None:
        counter.flush()


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session with the real Alembic migrations; tests copy it."""
    folder = tmp_path_factory.mktemp("template")
    app = create_app(TestingConfig, **base_settings(folder))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return folder / "test.db"


@pytest.fixture
def make_app(tmp_path: Path, migrated_sqlite_template: Path) -> Iterator[Callable[..., Flask]]:
    """Build a fresh app (on a fresh copy of the migrated database) with settings overridden."""
    built: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        settings = base_settings(tmp_path)
        settings.update(overrides)
        if settings["SQLALCHEMY_DATABASE_URI"] == base_settings(tmp_path)["SQLALCHEMY_DATABASE_URI"]:
            shutil.copy(migrated_sqlite_template, tmp_path / "test.db")
        app = create_app(TestingConfig, **settings)
        built.append(app)
        return app

    yield factory
    for app in built:
        flush_pending(app)  # nothing of this test may be written after it ends
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    flush_logs()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The default test app: SQLite, memory rate limits, logs in a temporary folder."""
    return make_app()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    import psycopg

    base = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        require_service("PostgreSQL", f"{base}: {exc}")
    name = f"oriel_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _postgres_migrated(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("pg")
    app = create_app(TestingConfig, **{**base_settings(folder), "SQLALCHEMY_DATABASE_URI": postgres_url})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return postgres_url


@pytest.fixture
def pg_app(make_app: Callable[..., Flask], _postgres_migrated: str) -> Iterator[Flask]:
    """An app on the session's PostgreSQL database; every table is emptied afterwards."""
    app = make_app(SQLALCHEMY_DATABASE_URI=_postgres_migrated)
    yield app
    flush_pending(app)  # pending events and counts land before the tables are emptied, not after
    with app.app_context():
        db.session.remove()
        tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server for tests (a private DB number is flushed before use)."""
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_service("Redis", f"{url}: {exc}")
    return url


def register(client: FlaskClient, email: str = "user@example.com", password: str = "correct-horse-battery") -> Any:
    """Register an account through the API."""
    return client.post("/api/auth/register", json={"email": email, "password": password})


def promote_admin(app: Flask, email: str) -> None:
    """Make an existing account an admin the way an operator does: `flask users create-admin EMAIL`."""
    result = app.test_cli_runner().invoke(args=["users", "create-admin", email])
    assert result.exit_code == 0, result.output


def login(
    client: FlaskClient, email: str = "user@example.com", password: str = "correct-horse-battery"
) -> dict[str, Any]:
    """Register (if needed) and log in; returns the token pair. A listed admin address is promoted by the CLI
    first (registering it proves nothing: backend/app/auth/admins.py)."""
    register(client, email, password)
    app = client.application
    if email.lower() in app.config["ADMIN_EMAILS"]:
        promote_admin(app, email)
    response = client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def read_log(app: Flask, name: str) -> list[dict[str, Any]]:
    """Every JSON line of one log file of `app` (after flushing the queue)."""
    import json

    flush_logs()
    path = Path(app.config["LOG_DIR"]) / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
