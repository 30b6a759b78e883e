"""The test app's settings and the helpers every test shares: secrets, one admin, sign-in, logs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.app.monitoring import flush_error_stats
from backend.logging_config import flush_logs

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
    flush_logs()
    path = Path(app.config["LOG_DIR"]) / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
