"""Renders end to end through real workers: upload → `POST /api/renders` → `flask jobs worker` (a separate process,
real FFmpeg) → video in the bucket (gcp-storage-emulator) → email (SendGrid peer, exactly once) → job history.

Run on the embedded default (SQLite, local wake-ups) and on Redis + PostgreSQL. The worker is the real CLI
command, configured only through the environment, the way an operator runs it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.models import CreditEntry
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.gcs_emulator import GCSEmulator
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.render_jobs import finished, flask_worker, job_of, peer_settings, worker_env
from tests.harness.renders import DEDUP_HEADER, User, balance

pytestmark = pytest.mark.slow


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
