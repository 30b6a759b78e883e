"""The `render` job kind follows the retry policy by class, with an injected clock and jitter (no sleeping).

- transient (the bucket refuses connections while the audio is read): retried with exponential backoff,
  the render back to `queued` in between, nothing refunded; succeeds once the bucket is back;
- permanent (FFmpeg rejects the stored audio): one retry, then dead; the render failed, refunded once,
  one email; the dead letter holds the real FFmpeg error of both attempts, and both reached the error
  statistics through monitoring.record_error;
- throttled: an open storage breaker (CIRCUIT_OPEN) makes the next attempt wait its Retry-After, and a
  bucket answering 429 with Retry-After makes it wait that (the storage error carries it), not the backoff.
A real worker (in this process, burst mode) runs each attempt; between attempts the clock is moved to
the job's next attempt time, so the delays are read from the job record, not measured.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.models import CreditEntry, Upload
from backend.app.models.error_event import ErrorEvent
from backend.app.models.job import Job
from backend.app.monitoring import flush_error_stats
from backend.app.resilience.state import get_breaker
from backend.app.services import get_storage
from backend.app.timeutil import as_utc
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.gcs_emulator import GCSEmulator
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.render_jobs import peer_settings
from tests.harness.renders import DEDUP_HEADER, Clock, User, attempt

BASE_DELAY = 5.0  # the render kind's base delay: backoff ceilings are 5, 10, 20... seconds


def job_for(app: Flask, render_id: int) -> Job:
    """The render's job record (detached, read fresh)."""
    with app.app_context():
        job = db.session.scalar(select(Job).where(Job.idempotency_key == f"render-{render_id}"))
        assert job is not None
        db.session.expunge(job)
    return job


def wait_of(job: Job, clock: Clock) -> float:
    """Seconds from the failed attempt (the clock's time) to the job's next attempt."""
    due = as_utc(job.next_attempt_at)
    assert due is not None
    return round((due - clock.now).total_seconds(), 3)


def refunds(app: Flask) -> int:
    """Refund rows in the credit ledger."""
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(CreditEntry).where(CreditEntry.kind == "refund")))


@pytest.fixture
def bucket_app(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    make_fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
) -> tuple[Flask, FaultProxy]:
    """An app whose bucket is reached through a fault proxy; breakers that never open during the test."""
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    settings = peer_settings(tmp_path, gcs_emulator, gcs_bucket, sendgrid_peer)
    settings.update(GCS_ENDPOINT=proxy.url, GCS_TIMEOUT=1.0, CIRCUIT_BREAKERS={"storage": {"min_calls": 1000}})
    return make_app(**settings), proxy


def start_render(app: Flask, audio_files: AudioFactory, fmt: str = "wav") -> tuple[User, int, int]:
    """A user, their upload and a queued render of it."""
    user = User(app.test_client(), "retry@example.com")
    upload_id = user.upload(audio_files.make(fmt, seconds=1).read_bytes(), f"a.{fmt}")
    response = user.start(upload_id)
    assert response.status_code == 202, response.get_json()
    return user, upload_id, response.get_json()["render"]["id"]


@pytest.mark.slow
def test_a_transient_storage_failure_is_retried_with_backoff_then_succeeds(
    bucket_app: tuple[Flask, FaultProxy], audio_files: AudioFactory, sendgrid_peer: SendGridPeer
) -> None:
    app, proxy = bucket_app
    clock = Clock()
    user, _, render_id = start_render(app, audio_files)
    proxy.down()  # the audio cannot be read from the bucket
    waits = []
    for _ in range(2):
        assert attempt(app, clock) == 1
        job = job_for(app, render_id)
        assert job.status == "retrying", job.errors
        assert job.errors[-1]["kind"] == "transient"
        waits.append(wait_of(job, clock))
        render = user.get(render_id)
        assert (render["status"], render["credit_refunded"]) == ("queued", False)  # kept for the next attempt
        clock.now = as_utc(job.next_attempt_at)  # type: ignore[assignment]
    assert waits == [BASE_DELAY, 2 * BASE_DELAY]  # full-jitter ceilings: base * 2**(n-1)

    proxy.passthrough()
    assert attempt(app, clock) == 1
    job = job_for(app, render_id)
    assert (job.status, job.attempts) == ("succeeded", 3)
    assert [e["attempt"] for e in job.errors] == [1, 2]
    assert all(e["message"] and e["code"] for e in job.errors)  # the real errors, kept with the success
    assert user.get(render_id)["status"] == "succeeded"
    assert refunds(app) == 0
    assert sendgrid_peer.count(header=(DEDUP_HEADER, f"render-finished:{render_id}")) == 1


@pytest.mark.slow
def test_an_ffmpeg_input_error_gets_one_retry_then_a_dead_letter_with_the_real_error(
    bucket_app: tuple[Flask, FaultProxy], audio_files: AudioFactory, sendgrid_peer: SendGridPeer
) -> None:
    app, _ = bucket_app
    clock = Clock()
    user, upload_id, render_id = start_render(app, audio_files, "flac")
    with app.app_context():  # the stored copy rots after it was checked
        key = db.session.get(Upload, upload_id).storage_key  # type: ignore[union-attr]
        get_storage().save(key, audio_files.corrupt("flac").read_bytes(), "audio/flac")

    assert attempt(app, clock) == 1
    job = job_for(app, render_id)
    assert job.status == "retrying" and wait_of(job, clock) == BASE_DELAY  # the one retry of a permanent error
    assert user.get(render_id)["status"] == "queued" and refunds(app) == 0
    clock.now = as_utc(job.next_attempt_at)  # type: ignore[assignment]

    assert attempt(app, clock) == 1
    job = job_for(app, render_id)
    assert (job.status, job.attempts) == ("dead", 2)
    assert [(e["attempt"], e["code"], e["kind"]) for e in job.errors] == [
        (1, "FFMPEG_ERROR", "permanent"),
        (2, "FFMPEG_ERROR", "permanent"),
    ]
    assert all(e["message"] == "FFmpeg failed to render the video." for e in job.errors)
    assert job.last_error_code == "FFMPEG_ERROR" and job.failure_analysis
    assert [c["state"] for c in job.compensations] == ["done"]

    render = user.get(render_id)
    assert (render["status"], render["credit_refunded"]) == ("failed", True)
    assert render["error"]["code"] == "FFMPEG_ERROR" and render["error"]["details"]["exit_code"] > 0
    assert refunds(app) == 1
    assert sendgrid_peer.count(header=(DEDUP_HEADER, f"render-failed:{render_id}")) == 1

    clock.now += timedelta(hours=1)
    assert attempt(app, clock) == 0  # dead stays dead: nothing runs again by itself

    flush_error_stats(app)  # each failed attempt went to the error statistics, with its real message
    with app.app_context():
        events = db.session.execute(
            select(ErrorEvent.source, ErrorEvent.code, ErrorEvent.message).where(ErrorEvent.endpoint == "job:render")
        ).all()
    assert [tuple(e) for e in events] == [("job", "FFMPEG_ERROR", "FFmpeg failed to render the video.")] * 2


@pytest.mark.slow
def test_a_throttled_bucket_makes_the_next_attempt_wait_its_retry_after(
    bucket_app: tuple[Flask, FaultProxy], audio_files: AudioFactory
) -> None:
    app, proxy = bucket_app
    clock = Clock()
    user, _, render_id = start_render(app, audio_files)
    proxy.status(429, retry_after=37, path="/download/")  # reads of the audio are throttled
    assert attempt(app, clock) == 1
    job = job_for(app, render_id)
    assert job.status == "retrying", job.errors
    last: dict[str, Any] = job.errors[-1]
    assert (last["code"], last.get("retry_after")) == ("STORAGE_UNAVAILABLE", 37.0), last
    assert wait_of(job, clock) == 37.0  # the bucket's Retry-After, longer than the 5 s backoff ceiling
    proxy.passthrough()
    clock.now = as_utc(job.next_attempt_at)  # type: ignore[assignment]
    assert attempt(app, clock) == 1
    assert job_for(app, render_id).status == "succeeded"
    assert user.get(render_id)["status"] == "succeeded"


@pytest.mark.slow
def test_an_open_storage_breaker_is_throttled_and_the_job_waits_until_trial_calls(
    bucket_app: tuple[Flask, FaultProxy], audio_files: AudioFactory
) -> None:
    app, _ = bucket_app
    clock = Clock()
    user, _, render_id = start_render(app, audio_files)
    with app.app_context():
        get_breaker("storage").force_open(actor="test")
    assert attempt(app, clock) == 1
    job = job_for(app, render_id)
    last: dict[str, Any] = job.errors[-1]
    assert (job.status, last["code"], last["kind"]) == ("retrying", "CIRCUIT_OPEN", "throttled"), last
    assert last["retry_after"] >= 1 and wait_of(job, clock) == last["retry_after"]  # Retry-After, not backoff
    with app.app_context():
        get_breaker("storage").reset(actor="test")
    clock.now = as_utc(job.next_attempt_at)  # type: ignore[assignment]
    assert attempt(app, clock) == 1
    assert job_for(app, render_id).status == "succeeded"
    assert user.get(render_id)["status"] == "succeeded"
