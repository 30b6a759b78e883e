"""Render jobs run by `flask jobs worker` processes against the peers: their settings, environment and records.

Loaded by `pytest_plugins` in tests/conftest.py for the `pg_redis_app` fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from backend.app.extensions import db
from backend.app.models.job import Job, JobStep
from backend.app.monitoring import flush_error_stats
from tests.harness.peers.gcs_emulator import GCSEmulator, fake_service_account_info
from tests.harness.peers.sendgrid_peer import SendGridPeer

ROOT = Path(__file__).resolve().parents[2]
FLASK = str(Path(sys.executable).with_name("flask"))


FAST_JOBS = {"JOBS_LEASE_SECONDS": 2.0, "JOBS_HEARTBEAT_SECONDS": 0.5, "JOBS_POLL_SECONDS": 0.1}


def peer_settings(
    tmp_path: Path, gcs_emulator: GCSEmulator, gcs_bucket: str, sendgrid_peer: SendGridPeer
) -> dict[str, Any]:
    """Settings that point an app (and its workers) at the bucket emulator and the SendGrid peer."""
    signer = tmp_path / "signer.json"
    signer.write_text(json.dumps(fake_service_account_info()), encoding="utf-8")
    return {
        "STORAGE_BACKEND": "gcs",
        "GCS_BUCKET": gcs_bucket,
        "GCS_ENDPOINT": gcs_emulator.url,
        "GCS_TIMEOUT": 5.0,
        "GCS_SIGNING_CREDENTIALS_FILE": str(signer),
        "SENDGRID_API_KEY": sendgrid_peer.api_key,
        "SENDGRID_API_HOST": sendgrid_peer.url,
        "SENDGRID_TIMEOUT": 2.0,
        "RENDER_MIN_FREE_DISK_MB": 0,
        "RENDER_MIN_FREE_MEMORY_MB": 0,
        "RENDER_PROGRESS_INTERVAL_SECONDS": 0,
        "RENDER_WORK_DIR": str(tmp_path),
        "RETRY_SLEEP_ENABLED": False,
        **FAST_JOBS,
    }


def worker_env(app: Flask, settings: dict[str, Any]) -> dict[str, str]:
    """The environment of a `flask jobs worker` process sharing `app`'s database, Redis, logs and peers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "FLASK_"))}
    env.update(
        FLASK_APP="wsgi",
        FLASK_ENV="testing",
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        LOG_DIR=app.config["LOG_DIR"],
        SECRET_KEY=app.config["SECRET_KEY"],
        JWT_SECRET_KEY=app.config["JWT_SECRET_KEY"],
        LOCAL_STORAGE_DIR=app.config["LOCAL_STORAGE_DIR"],  # the files the web app stored
    )
    if app.config.get("REDIS_URL"):
        env["REDIS_URL"] = app.config["REDIS_URL"]
    for name, value in settings.items():
        if name != "RETRY_SLEEP_ENABLED":  # not an environment setting; the worker retries with real sleeps
            env[name] = str(value)
    return env


def flask_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """Start `flask jobs worker ARGS` in its own process."""
    return subprocess.Popen(
        [FLASK, "jobs", "worker", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def finished(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Wait for a worker to exit 0; its output."""
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def job_of(app: Flask, render_id: int) -> dict[str, Any]:
    """The render's job record and its step ledger."""
    with app.app_context():
        job = db.session.scalar(select(Job).where(Job.kind == "render", Job.idempotency_key == f"render-{render_id}"))
        assert job is not None, "POST /api/renders recorded no job"
        steps = db.session.scalars(select(JobStep.name).where(JobStep.job_id == job.id).order_by(JobStep.name)).all()
        record = {
            "id": job.id,
            "status": job.status,
            "attempts": job.attempts,
            "queue": job.queue,
            "errors": list(job.errors or []),
            "steps": list(steps),
            "result": job.result,
            "compensations": list(job.compensations or []),
            "progress": job.progress,
        }
        db.session.commit()
    return record


@pytest.fixture
def pg_redis_app(
    make_app: Callable[..., Flask], _postgres_migrated: str, redis_url: str
) -> Iterator[Callable[..., Flask]]:
    """Factory of apps on the session's PostgreSQL and on Redis; every table is emptied afterwards."""
    made: list[Flask] = []

    def factory(**settings: Any) -> Flask:
        app = make_app(SQLALCHEMY_DATABASE_URI=_postgres_migrated, REDIS_URL=redis_url, **settings)
        made.append(app)
        return app

    yield factory
    for app in made:
        flush_error_stats(app)
        with app.app_context():
            db.session.remove()
            tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
            with db.engine.begin() as conn:
                conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
