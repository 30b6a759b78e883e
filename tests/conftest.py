"""Shared fixtures: apps built from the factory with a test config, real databases (helpers: tests/harness/)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_migrate import upgrade

from backend.app import create_app
from backend.app.extensions import db
from backend.app.jobs import REGISTRY
from backend.app.jobs.registry import JobKind
from backend.logging_config import flush_logs
from config import TestingConfig
from tests.harness.app import base_settings, flush_pending, require_service

# The local peers (Stripe, Cloud Storage, SendGrid, webhooks, audio, fault proxy): see tests/harness/peers/README.md.
# The fixtures `browser` (headless Chromium) and `pg_redis_app` (PostgreSQL + Redis apps for worker processes).
pytest_plugins = ["tests.harness.peers.fixtures", "tests.harness.browser", "tests.harness.render_jobs"]


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


@pytest.fixture
def kinds() -> Iterator[Callable[[JobKind], JobKind]]:
    """Register job kinds for one test; removed afterwards."""
    added: list[str] = []

    def add(kind: JobKind) -> JobKind:
        REGISTRY.register(kind, replace=True)
        added.append(kind.name)
        return kind

    yield add
    for name in added:
        REGISTRY.unregister(name)
