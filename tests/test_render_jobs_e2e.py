"""Renders end to end through real workers: upload → `POST /api/renders` → `flask jobs worker` (a separate process,
real FFmpeg) → video in the bucket (gcp-storage-emulator) → email (SendGrid peer, exactly once) → job history.

Run on the embedded default (SQLite, local wake-ups) and on Redis + PostgreSQL. The worker is the real CLI
command, configured only through the environment, the way an operator runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.models import CreditEntry
from backend.app.models.job import Job, JobStep
from backend.app.monitoring import flush_error_stats
from tests.peers.audio import AudioFactory
from tests.peers.gcs_emulator import GCSEmulator, fake_service_account_info
from tests.peers.sendgrid_peer import SendGridPeer
from tests.test_renders import DEDUP_HEADER, User, balance

ROOT = Path(__file__).resolve().parents[1]
FLASK = str(Path(sys.executable).with_name("flask"))
FAST_JOBS = {"JOBS_LEASE_SECONDS": 2.0, "JOBS_HEARTBEAT_SECONDS": 0.5, "JOBS_POLL_SECONDS": 0.1}

pytestmark = pytest.mark.slow


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


def credit_entries(app: Flask, kind: str) -> int:
    """How many ledger rows of `kind` (consume, refund) exist."""
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(CreditEntry).where(CreditEntry.kind == kind)))


def render_end_to_end(
    app: Flask,
    settings: dict[str, Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    audio_files: AudioFactory,
) -> dict[str, Any]:
    """Upload, request a render, run a real worker process, and check every outcome; the job record."""
    user = User(app.test_client(), "e2e@example.com")
    upload_id = user.upload(audio_files.make("mp3", seconds=1.5).read_bytes(), "song.mp3")
    response = user.start(upload_id)
    assert response.status_code == 202, response.get_json()
    render_id = response.get_json()["render"]["id"]
    assert balance(app, user.id) == 0  # spent with the render, in the same transaction as its job
    queued = job_of(app, render_id)
    assert (queued["status"], queued["attempts"], queued["queue"]) == ("queued", 0, "renders")
    assert [c["name"] for c in queued["compensations"]] == ["settle_failed"]

    output = finished(flask_worker(worker_env(app, settings), "--burst", "-q", "renders"), 120)
    assert "worker stopped after 1 jobs" in output, output[-2000:]

    render = user.get(render_id)
    assert render["status"] == "succeeded", render
    assert render["progress"] == 100
    assert render["video"]["location"] == "bucket" and render["video"]["degraded"] is False
    names = [b.name for b in gcs_emulator.client().list_blobs(gcs_bucket, prefix="renders/", timeout=5, retry=None)]
    assert names == [f"renders/{render_id}.mp4"]
    blob = gcs_emulator.client().bucket(gcs_bucket).blob(names[0])
    assert len(blob.download_as_bytes(timeout=5, retry=None)) == render["video"]["size"]

    sent = sendgrid_peer.find(header=(DEDUP_HEADER, f"render-finished:{render_id}"))
    assert len(sent) == 1 and "e2e@example.com" in str(sent[0].body["personalizations"])
    assert sendgrid_peer.count(header=(DEDUP_HEADER, f"render-failed:{render_id}")) == 0
    assert credit_entries(app, "consume") == 1 and credit_entries(app, "refund") == 0

    job = job_of(app, render_id)
    assert (job["status"], job["attempts"], job["errors"]) == ("succeeded", 1, []), job
    assert job["steps"] == ["store_video"] and job["result"] == {"render_id": render_id}
    assert job["progress"] == 100.0
    assert job["compensations"][0]["state"] == "pending"  # never applied: the job succeeded
    return job


def test_a_render_runs_end_to_end_through_a_cli_worker_on_the_embedded_default(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    audio_files: AudioFactory,
    tmp_path: Path,
) -> None:
    settings = peer_settings(tmp_path, gcs_emulator, gcs_bucket, sendgrid_peer)
    app = make_app(**settings)
    render_end_to_end(app, settings, gcs_emulator, gcs_bucket, sendgrid_peer, audio_files)


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


@pytest.mark.postgres
def test_a_render_runs_end_to_end_through_a_cli_worker_on_redis_and_postgres(
    pg_redis_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    audio_files: AudioFactory,
    tmp_path: Path,
) -> None:
    settings = peer_settings(tmp_path, gcs_emulator, gcs_bucket, sendgrid_peer)
    app = pg_redis_app(**settings)
    render_end_to_end(app, settings, gcs_emulator, gcs_bucket, sendgrid_peer, audio_files)


def test_progress_is_visible_while_a_worker_process_renders(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    audio_files: AudioFactory,
    tmp_path: Path,
) -> None:
    settings = peer_settings(tmp_path, gcs_emulator, gcs_bucket, sendgrid_peer)
    app = make_app(**settings)
    user = User(app.test_client(), "progress@example.com")
    upload_id = user.upload(audio_files.make("wav", seconds=12).read_bytes(), "long.wav")
    render_id = user.start(upload_id, preset="cqt", resolution="640x360", fps=30).get_json()["render"]["id"]
    worker = flask_worker(worker_env(app, settings), "-q", "renders")
    observed: list[tuple[str, int]] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            render = user.get(render_id)
            observed.append((render["status"], render["progress"]))
            if render["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)  # graceful: nothing is running any more
        finished(worker, 30)
    assert observed[-1] == ("succeeded", 100), observed[-5:]
    running = [p for status, p in observed if status == "running"]
    assert any(0 < p < 100 for p in running), observed
    assert running == sorted(running), "progress never goes backwards"
    assert sendgrid_peer.count(header=(DEDUP_HEADER, f"render-finished:{render_id}")) == 1
