"""Renders through the real app: upload → render job (an in-process worker, real FFmpeg) → video stored → download →
email (SendGrid peer),
credits consumed once and refunded once on failure, 402/404/409/422/503, and `run_render` safe to call again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.errors import RenderingResourceError
from backend.app.extensions import db
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models import CreditEntry, Render, Upload
from backend.app.renders.runner import run_render
from backend.app.services import get_storage
from tests.harness.contract import assert_error
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.renders import DEDUP_HEADER, User, balance, render_app, video_facts

FAST = {"RETRY_SLEEP_ENABLED": False}


def run_jobs(app: Flask, *, concurrency: int = 1, seconds: float = 60.0) -> int:
    """Run the queued jobs to the end in this process (a real worker in drain mode); how many ran."""
    options = WorkerOptions(
        concurrency=concurrency,
        drain=True,
        schedule=False,
        install_signals=False,
        max_seconds=seconds,
        poll_seconds=0.05,
        heartbeat_seconds=0.5,
    )
    return Worker(app, options).run()


def finish(app: Flask, user: User, render_id: int) -> dict[str, Any]:
    """Let a worker run the render's job (and its settling), then read the render back."""
    run_jobs(app)
    return user.get(render_id)


def test_upload_render_store_download_and_email_end_to_end(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, audio_files: AudioFactory, tmp_path: Path
) -> None:
    app = render_app(make_app, sendgrid_peer)
    client = app.test_client()
    user = User(client, "alice@example.com")
    upload_id = user.upload(audio_files.make("mp3", seconds=2).read_bytes(), "song.wav")

    response = user.start(upload_id)
    assert response.status_code == 202, response.get_json()
    queued = response.get_json()["render"]
    assert queued["status"] == "queued" and queued["progress"] == 0
    assert response.headers["Location"] == f"/api/renders/{queued['id']}"
    assert balance(app, user.id) == 0  # the one free credit is spent

    render = finish(app, user, queued["id"])
    assert render["status"] == "succeeded", render
    assert render["progress"] == 100
    assert render["error"] is None
    assert render["video"]["location"] == "local" and render["video"]["degraded"] is False

    with app.app_context():
        video = get_storage().read(f"renders/{queued['id']}.mp4")
    assert len(video) == render["video"]["size"]
    (tmp_path / "v.mp4").write_bytes(video)
    facts = video_facts(tmp_path / "v.mp4")
    assert (facts["video"], facts["size"], facts["audio"]) == ("h264", "320x180", "aac")

    link = client.get(f"/api/renders/{queued['id']}/download", headers=user.headers)
    assert link.status_code == 200
    assert link.get_json()["expires_in"] == 3600
    fetched = client.get(urlsplit(link.get_json()["url"]).path)
    assert fetched.status_code == 200 and fetched.data == video
    redirected = client.get(f"/api/renders/{queued['id']}/download?redirect=true", headers=user.headers)
    assert redirected.status_code == 302
    assert urlsplit(redirected.headers["Location"]).path.startswith("/api/files/")

    sent = sendgrid_peer.find(header=(DEDUP_HEADER, f"render-finished:{queued['id']}"))
    assert len(sent) == 1
    assert "alice@example.com" in str(sent[0].body["personalizations"])

    # Calling run_render again (a duplicate job) neither renders nor emails again.
    with app.app_context():
        run_render(queued["id"])
        row = db.session.get(Render, queued["id"])
        assert row is not None and row.attempts == 1 and row.status == "succeeded"
    assert sendgrid_peer.count(header=(DEDUP_HEADER, f"render-finished:{queued['id']}")) == 1
    assert balance(app, user.id) == 0


def test_no_credit_left_is_402_and_leaves_no_render_behind(
    make_app: Callable[..., Flask], audio_files: AudioFactory
) -> None:
    app = render_app(make_app)
    user = User(app.test_client(), "bob@example.com")
    upload_id = user.upload(audio_files.make("mp3").read_bytes())
    assert user.start(upload_id).status_code == 202
    body = assert_error(user.start(upload_id), 402, "INSUFFICIENT_CREDITS")
    assert body["details"]["balance"] == 0
    renders = user.client.get("/api/renders", headers=user.headers).get_json()["renders"]
    assert len(renders) == 1
    with app.app_context():
        consumed = db.session.scalar(select(func.count()).select_from(CreditEntry).where(CreditEntry.kind == "consume"))
    assert consumed == 1


def test_a_render_past_its_timeout_fails_with_the_error_refunds_once_and_emails_why(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, audio_files: AudioFactory
) -> None:
    app = render_app(make_app, sendgrid_peer, RENDER_TIMEOUT_SECONDS=0.3, RENDER_JOB_MAX_ATTEMPTS=1)
    user = User(app.test_client(), "carol@example.com")
    upload_id = user.upload(audio_files.make("wav", seconds=60).read_bytes(), "long.wav")
    response = user.start(upload_id, preset="cqt", resolution="1280x720", fps=60)
    render_id = response.get_json()["render"]["id"]

    render = finish(app, user, render_id)
    assert render["status"] == "failed"
    error = render["error"]
    assert error["code"] == "RENDERING_TIMEOUT"
    assert error["status"] == 500 and error["recoverable"] is True
    assert error["details"]["timeout_seconds"] == 0.3
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert error["doc_url"] == "/api/errors/catalog#RENDERING_TIMEOUT"
    assert error["timestamp"].endswith("Z")
    assert render["credit_refunded"] is True
    assert balance(app, user.id) == 1
    failed_key = (DEDUP_HEADER, f"render-failed:{render_id}")
    [mail] = sendgrid_peer.find(header=failed_key)
    assert "shorter clip" in str(mail.body)

    with app.app_context():  # a retried job: nothing is refunded or sent twice
        run_render(render_id)
        run_render(render_id)
        refunds = db.session.scalar(select(func.count()).select_from(CreditEntry).where(CreditEntry.kind == "refund"))
    assert refunds == 1
    assert balance(app, user.id) == 1
    assert sendgrid_peer.count(header=failed_key) == 1
    assert_error(user.client.get(f"/api/renders/{render_id}/download", headers=user.headers), 409, "CONFLICT")


def test_ffmpeg_failing_on_stored_audio_records_exit_code_and_a_sanitised_stderr_tail(
    make_app: Callable[..., Flask], audio_files: AudioFactory
) -> None:
    app = render_app(make_app)
    user = User(app.test_client(), "dave@example.com")
    upload_id = user.upload(audio_files.make("flac").read_bytes(), "a.flac")
    render_id = user.start(upload_id).get_json()["render"]["id"]
    with app.app_context():  # the stored copy rots after it was checked
        key = db.session.get(Upload, upload_id).storage_key  # type: ignore[union-attr]
        get_storage().save(key, audio_files.corrupt("flac").read_bytes(), "audio/flac")
        run_render(render_id)
    render = user.get(render_id)
    assert render["status"] == "failed"
    error = render["error"]
    assert error["code"] == "FFMPEG_ERROR" and error["status"] == 500 and error["recoverable"] is False
    assert error["details"]["exit_code"] > 0
    tail = error["details"]["stderr_tail"]
    assert "<input>" in tail and "/tmp" not in tail and "oriel-render" not in tail
    assert render["credit_refunded"] is True
    assert balance(app, user.id) == 1


def test_an_unconfigured_email_service_keeps_the_email_queued_and_the_render_still_succeeds(
    make_app: Callable[..., Flask], audio_files: AudioFactory
) -> None:
    app = render_app(make_app)
    user = User(app.test_client(), "erin@example.com")
    render_id = user.start(user.upload(audio_files.make("ogg").read_bytes(), "a.ogg")).get_json()["render"]["id"]
    assert finish(app, user, render_id)["status"] == "succeeded"
    with app.app_context():
        from backend.app.models import EmailOutbox

        row = db.session.scalar(select(EmailOutbox).where(EmailOutbox.dedup_key == f"render-finished:{render_id}"))
        assert row is not None and row.status == "queued"


def test_someone_elses_upload_or_render_is_404(make_app: Callable[..., Flask], audio_files: AudioFactory) -> None:
    app = render_app(make_app)
    client = app.test_client()
    owner = User(client, "owner@example.com")
    other = User(client, "other@example.com")
    upload_id = owner.upload(audio_files.make("mp3").read_bytes())
    assert_error(other.start(upload_id), 404, "NOT_FOUND")
    assert balance(app, other.id) == 1  # nothing was spent
    render_id = owner.start(upload_id).get_json()["render"]["id"]
    assert_error(client.get(f"/api/renders/{render_id}", headers=other.headers), 404, "NOT_FOUND")
    assert_error(client.get(f"/api/renders/{render_id}/download", headers=other.headers), 404, "NOT_FOUND")
    assert client.get("/api/renders", headers=other.headers).get_json()["renders"] == []
    assert_error(owner.start(999_999), 404, "NOT_FOUND")
    assert_error(client.get("/api/renders/999999", headers=owner.headers), 404, "NOT_FOUND")


def test_download_is_409_until_the_render_succeeded(make_app: Callable[..., Flask], audio_files: AudioFactory) -> None:
    app = render_app(make_app)
    user = User(app.test_client(), "frank@example.com")
    render_id = user.start(user.upload(audio_files.make("wav").read_bytes(), "a.wav")).get_json()["render"]["id"]
    body = assert_error(user.client.get(f"/api/renders/{render_id}/download", headers=user.headers), 409, "CONFLICT")
    assert body["details"]["status"] == "queued"
    with app.app_context():
        run_render(render_id)
    assert user.client.get(f"/api/renders/{render_id}/download", headers=user.headers).status_code == 200


@pytest.mark.parametrize(
    "choices,field",
    [
        ({"preset": "plasma", "resolution": "640x360"}, "preset"),
        ({"preset": "waveform", "resolution": "800x600"}, "resolution"),
        ({"preset": "waveform", "resolution": "640x360", "fps": 25}, "fps"),
        ({"preset": "waveform", "resolution": "640x360", "colour": "red"}, "colour"),
    ],
)
def test_invalid_render_choices_are_422_naming_the_field(
    make_app: Callable[..., Flask], audio_files: AudioFactory, choices: dict[str, Any], field: str
) -> None:
    app = render_app(make_app)
    user = User(app.test_client(), "gina@example.com")
    upload_id = user.upload(audio_files.make("mp3").read_bytes())
    body = assert_error(user.start(upload_id, **choices), 422, "VALIDATION_ERROR")
    assert field in body["details"]["fields"]
    assert balance(app, user.id) == 1


def test_no_render_capacity_is_503_with_retry_after_before_any_credit_is_spent(
    make_app: Callable[..., Flask], audio_files: AudioFactory
) -> None:
    app = render_app(make_app, RENDER_MAX_CONCURRENT=0, RENDER_RETRY_AFTER_SECONDS=12)
    user = User(app.test_client(), "hank@example.com")
    response = user.start(user.upload(audio_files.make("mp3").read_bytes()))
    body = assert_error(response, 503, "RENDERING_RESOURCES_EXHAUSTED")
    assert body["retry_after"] == 12 and response.headers["Retry-After"] == "12"
    assert body["details"] == {"resource": "concurrency"}
    assert balance(app, user.id) == 1
    assert user.client.get("/api/renders", headers=user.headers).get_json()["renders"] == []


def test_a_job_that_will_retry_gets_retryable_errors_back_and_the_render_requeued(
    make_app: Callable[..., Flask], audio_files: AudioFactory
) -> None:
    app = render_app(make_app)
    user = User(app.test_client(), "ivy@example.com")
    render_id = user.start(user.upload(audio_files.make("mp3").read_bytes())).get_json()["render"]["id"]
    app.config["RENDER_MIN_FREE_DISK_MB"] = 10**9  # the disk fills up before the job runs
    app.extensions.pop("renderer", None)
    with app.app_context(), pytest.raises(RenderingResourceError):
        run_render(render_id, final_attempt=False)
    render = user.get(render_id)
    assert render["status"] == "queued" and render["credit_refunded"] is False
    assert balance(app, user.id) == 0

    app.config["RENDER_MIN_FREE_DISK_MB"] = 0
    app.extensions.pop("renderer", None)
    with app.app_context():
        run_render(render_id, final_attempt=False)
    assert user.get(render_id)["status"] == "succeeded"


def test_the_list_is_newest_first_and_limit_is_validated(
    make_app: Callable[..., Flask], audio_files: AudioFactory
) -> None:
    app = render_app(make_app, FREE_RENDER_CREDITS=3)
    user = User(app.test_client(), "jack@example.com")
    upload_id = user.upload(audio_files.make("mp3").read_bytes())
    ids = [user.start(upload_id).get_json()["render"]["id"] for _ in range(3)]
    listed = user.client.get("/api/renders?limit=2", headers=user.headers).get_json()["renders"]
    assert [r["id"] for r in listed] == ids[::-1][:2]
    assert_error(user.client.get("/api/renders?limit=0", headers=user.headers), 422, "VALIDATION_ERROR")


@pytest.mark.postgres
def test_failure_compensation_happens_once_on_postgresql(pg_app: Flask, audio_files: AudioFactory) -> None:
    pg_app.config.update(RENDER_MIN_FREE_DISK_MB=0, RENDER_MIN_FREE_MEMORY_MB=0)
    user = User(pg_app.test_client(), "pg@example.com")
    upload_id = user.upload(audio_files.make("wav").read_bytes(), "a.wav")
    render_id = user.start(upload_id).get_json()["render"]["id"]
    with pg_app.app_context():
        key = db.session.get(Upload, upload_id).storage_key  # type: ignore[union-attr]
        get_storage().save(key, audio_files.corrupt("wav").read_bytes(), "audio/wav")
        for _ in range(3):
            run_render(render_id)
        refunds = db.session.scalar(select(func.count()).select_from(CreditEntry).where(CreditEntry.kind == "refund"))
    assert refunds == 1
    assert user.get(render_id)["error"]["code"] == "FFMPEG_ERROR"
    assert balance(pg_app, user.id) == 1


def test_progress_is_persisted_while_the_render_runs(make_app: Callable[..., Flask], audio_files: AudioFactory) -> None:
    app = render_app(make_app, RENDER_PROGRESS_INTERVAL_SECONDS=0)
    user = User(app.test_client(), "kim@example.com")
    upload_id = user.upload(audio_files.make("wav", seconds=12).read_bytes(), "a.wav")
    render_id = user.start(upload_id, preset="cqt", resolution="640x360", fps=30).get_json()["render"]["id"]
    worker = threading.Thread(target=run_jobs, args=(app,))
    worker.start()
    observed = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        render = user.get(render_id)
        observed.append((render["status"], render["progress"]))
        if render["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.02)
    worker.join(60)
    assert observed[-1] == ("succeeded", 100)
    running = [p for status, p in observed if status == "running"]
    assert any(0 < p < 100 for p in running), observed
    assert running == sorted(running), "progress never goes backwards"


def test_the_video_goes_to_the_bucket_and_downloads_by_signed_url(
    make_app: Callable[..., Flask],
    gcs_emulator: Any,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
    audio_files: AudioFactory,
) -> None:
    app = render_app(
        make_app,
        GCS_BUCKET=gcs_bucket,
        GCS_ENDPOINT=gcs_emulator.url,
        GCS_TIMEOUT=2.0,
        GCS_SIGNING_CREDENTIALS=gcs_signing_credentials,
    )
    user = User(app.test_client(), "lee@example.com")
    render_id = user.start(user.upload(audio_files.make("mp3").read_bytes())).get_json()["render"]["id"]
    with app.app_context():
        run_render(render_id)
    render = user.get(render_id)
    assert render["status"] == "succeeded"
    assert render["video"]["location"] == "bucket" and render["video"]["degraded"] is False
    blob = gcs_emulator.client().bucket(gcs_bucket).blob(f"renders/{render_id}.mp4")
    assert len(blob.download_as_bytes(timeout=5, retry=None)) == render["video"]["size"]
    url = user.client.get(f"/api/renders/{render_id}/download", headers=user.headers).get_json()["url"]
    assert url.startswith(gcs_emulator.url) and "X-Goog-Signature=" in url


def test_more_renders_than_worker_threads_wait_in_the_queue_and_all_succeed(
    make_app: Callable[..., Flask], audio_files: AudioFactory
) -> None:
    app = render_app(make_app, RENDER_MAX_CONCURRENT=2, FREE_RENDER_CREDITS=4)
    user = User(app.test_client(), "max@example.com")
    upload_id = user.upload(audio_files.make("wav", seconds=2).read_bytes(), "a.wav")
    ids = [user.start(upload_id).get_json()["render"]["id"] for _ in range(4)]
    assert run_jobs(app, concurrency=2) == 4
    assert [user.get(render_id)["status"] for render_id in ids] == ["succeeded"] * 4
    assert balance(app, user.id) == 0
