"""#15 point 3: a failed render traces back to the request id its user was shown.

A real worker renders, for real, an upload whose stored copy FFmpeg cannot read; the job records its
two attempts. Everything that happened then carries the id of the `POST /api/renders` that started it:
the job record, the job's log lines in app.log, errors.log and performance.log, the error events (with
the user and the job id), the user's notifications, and the admin's one look-up
`GET /admin/api/monitoring/requests/<request_id>`, and the dashboard's search box (headless Chromium, the
set-up of test_dashboard_browser).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from backend.app.extensions import db
from backend.app.jobs import enqueue
from backend.app.models import Upload
from backend.app.models.error_event import ErrorEvent
from backend.app.models.job import Job
from backend.app.monitoring import flush_error_stats
from backend.app.services import get_storage
from backend.app.timeutil import as_utc
from backend.logging_config import flush_logs
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.browser import DESKTOP, PASSWORD, WAIT_MS, LiveServer, Page
from tests.harness.contract import assert_error
from tests.harness.peers.audio import AudioFactory
from tests.harness.renders import Clock, User, attempt, render_app

TRACE = "/admin/api/monitoring/requests"


def failed_render(app: Flask, audio_files: AudioFactory, email: str = "traced@example.com") -> dict[str, Any]:
    """A render FFmpeg fails on, run by a real worker for both of its attempts; what the user was shown."""
    user = User(app.test_client(), email)
    upload_id = user.upload(audio_files.make("flac", seconds=1).read_bytes(), "a.flac")
    started = user.start(upload_id)
    assert started.status_code == 202, started.get_json()
    render_id = started.get_json()["render"]["id"]
    with app.app_context():  # the stored copy rots after it was checked: FFmpeg cannot decode it
        key = db.session.get(Upload, upload_id).storage_key  # type: ignore[union-attr]
        get_storage().save(key, audio_files.corrupt("flac").read_bytes(), "audio/flac")
    clock = Clock()
    assert attempt(app, clock) == 1
    with app.app_context():
        job = db.session.scalar(select(Job).where(Job.idempotency_key == f"render-{render_id}"))
        assert job is not None and job.status == "retrying"
        clock.now = as_utc(job.next_attempt_at)  # type: ignore[assignment]
        db.session.commit()
    assert attempt(app, clock) == 1
    flush_error_stats(app)
    flush_logs()
    render = user.get(render_id)
    assert render["status"] == "failed" and render["error"]["code"] == "FFMPEG_ERROR"
    return {"user": user, "render": render, "request_id": started.headers["X-Request-ID"]}


@pytest.fixture
def admin(app: Flask) -> dict[str, str]:
    return bearer(login(app.test_client(), ADMIN_EMAIL)["access_token"])


@pytest.mark.slow
def test_point3_a_failed_render_is_traced_by_the_request_id_its_user_was_shown(
    make_app: Callable[..., Flask], audio_files: AudioFactory
) -> None:
    app = render_app(make_app)
    shown = failed_render(app, audio_files)
    rid, user, render = shown["request_id"], shown["user"], shown["render"]
    assert render["error"]["request_id"] == rid  # the one id the user sees

    with app.app_context():
        job = db.session.scalar(select(Job).where(Job.idempotency_key == f"render-{render['id']}"))
        assert job is not None
        job_id = job.id
        assert (job.request_id, job.user_id, job.status, job.attempts) == (rid, user.id, "dead", 2)
        events = db.session.execute(
            select(ErrorEvent.request_id, ErrorEvent.user_id, ErrorEvent.context).where(
                ErrorEvent.endpoint == "job:render"
            )
        ).all()
    # Each attempt's error event: the originating request's id (never the job id), the user, the job in context.
    assert len(events) == 2
    assert all(e.request_id == rid and e.user_id == user.id and f'"job_id": {job_id}' in e.context for e in events)

    # The job's log lines carry the request id, the user and their own job id.
    job_lines = [line for line in read_log(app, "app.log") if line.get("job_id") == job_id]
    assert job_lines and all(line["request_id"] == rid and line["user_id"] == user.id for line in job_lines)
    assert any("FFMPEG_ERROR" in line["message"] for line in job_lines)
    errors = [line for line in read_log(app, "errors.log") if line.get("job_id") == job_id]
    assert errors and all(line["request_id"] == rid for line in errors), errors  # was `request_id: null`
    durations = [line for line in read_log(app, "performance.log") if line.get("metric") == "job_duration"]
    assert [(d["request_id"], d["job_id"], d["user_id"]) for d in durations] == [(rid, job_id, user.id)] * 2

    # The user's notifications list the failed render, once, with the id to quote.
    notes = user.client.get("/api/errors/notifications", headers=user.headers).get_json()["notifications"]
    assert [(n["kind"], n["code"], n["request_id"], n["render_id"]) for n in notes] == [
        ("render", "FFMPEG_ERROR", rid, render["id"])
    ]
    assert "Start it again" in notes[0]["action"]
    other = User(app.test_client(), "someone-else@example.com")
    assert other.client.get("/api/errors/notifications", headers=other.headers).get_json() == {"notifications": []}

    # One admin call finds the request, its job, their errors and groups, and every log line with the id.
    admin = bearer(login(app.test_client(), ADMIN_EMAIL)["access_token"])
    response = app.test_client().get(f"{TRACE}/{rid}", headers=admin)
    assert response.status_code == 200, response.get_json()
    trace = response.get_json()
    assert trace["request"]["method"] == "POST" and trace["request"]["path"] == "/api/renders"
    assert trace["request"]["status"] == 202 and trace["request"]["source"] == "performance.log"
    (traced_job,) = trace["jobs"]
    assert (traced_job["id"], traced_job["kind"], traced_job["status"], traced_job["attempts"]) == (
        job_id,
        "render",
        "dead",
        2,
    )
    assert traced_job["last_error"]["code"] == "FFMPEG_ERROR" and traced_job["user_id"] == user.id
    assert [(e["code"], e["context"]["job_id"], e["user_id"]) for e in trace["error_events"]] == [
        ("FFMPEG_ERROR", job_id, user.id)
    ] * 2
    assert [g["code"] for g in trace["error_groups"]] == ["FFMPEG_ERROR"]
    assert {e["group_id"] for e in trace["error_events"]} == {trace["error_groups"][0]["id"]}
    logs = trace["logs"]
    assert not logs["truncated"] and logs["matched"] == len(logs["lines"])
    assert {line["file"] for line in logs["lines"]} >= {"app.log", "errors.log", "performance.log"}
    assert all(line["request_id"] == rid for line in logs["lines"])
    assert any(line.get("job_id") == job_id for line in logs["lines"])
    stamps = [line["timestamp"] for line in logs["lines"]]
    assert stamps == sorted(stamps)  # earliest first: the request, then its job


def test_point3_an_unknown_or_malformed_request_id_is_refused_in_the_envelope(
    app: Flask, admin: dict[str, str]
) -> None:
    client = app.test_client()
    error = assert_error(client.get(f"{TRACE}/{'0' * 32}", headers=admin), 404, "REQUEST_NOT_FOUND")
    assert error["details"] == {"request_id": "0" * 32}
    assert_error(client.get(f"{TRACE}/not%20an%20id!", headers=admin), 400, "INVALID_REQUEST_ID")
    assert_error(client.get(f"{TRACE}/{'a' * 129}", headers=admin), 400, "INVALID_REQUEST_ID")
    user = bearer(login(client)["access_token"])
    assert_error(client.get(f"{TRACE}/{'0' * 32}", headers=user), 403)


def test_point3_the_log_read_is_bounded_and_says_when_it_was_cut(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(REQUEST_TRACE_MAX_LINES=3, REQUEST_TRACE_SCAN_BYTES=4096)
    admin = bearer(login(app.test_client(), ADMIN_EMAIL)["access_token"])
    client = app.test_client()
    rid = "trace-bounds-1"
    for _ in range(5):  # five performance.log lines (and no error) under one id
        assert client.get("/healthz", headers={"X-Request-ID": rid}).status_code == 200
    with app.app_context():  # and a job it started, found in the database whatever the logs hold
        job_id = enqueue("maintenance.noop", {}, request_id=rid).id
    flush_logs()
    trace = client.get(f"{TRACE}/{rid}", headers=admin).get_json()
    assert [j["id"] for j in trace["jobs"]] == [job_id]
    logs = trace["logs"]
    assert (len(logs["lines"]), logs["matched"], logs["truncated"]) == (3, 5, True)

    # Lines older than the bytes read are not found, and the answer says the read was cut.
    for _ in range(40):
        client.get("/healthz", headers={"X-Request-ID": "someone-else"})
    flush_logs()
    performance = Path(app.config["LOG_DIR"]) / "performance.log"
    assert performance.stat().st_size > 4096
    logs = client.get(f"{TRACE}/{rid}", headers=admin).get_json()["logs"]
    read = next(f for f in logs["files"] if f["name"] == "performance.log")
    assert read["cut"] and read["scanned_bytes"] <= 4096 and logs["truncated"]
    assert logs["matched"] < 5


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_point3_the_dashboard_search_traces_a_failed_render_by_its_request_id(
    make_app: Callable[..., Flask], audio_files: AudioFactory, browser: Any
) -> None:
    app = render_app(make_app)
    assert login(app.test_client(), ADMIN_EMAIL, PASSWORD)["access_token"]  # the admin account exists
    shown = failed_render(app, audio_files)
    rid = shown["request_id"]
    with app.app_context():
        job_id = db.session.scalar(select(Job.id).where(Job.request_id == rid))

    with LiveServer(app) as server:
        desk = Page(browser, server.url, DESKTOP)
        desk.sign_in()
        page = desk.page
        assert page.locator("#trace-panel").is_hidden()  # nothing searched yet
        page.fill("#recent-request-id", rid)
        page.click("#recent-search button[type=submit]")
        page.wait_for_selector(f"#trace-jobs tr[data-job='{job_id}'][data-status='dead']", timeout=WAIT_MS)
        assert page.inner_text("#trace-id") == rid
        assert "POST /api/renders" in page.inner_text("#trace-request") and "202" in page.inner_text("#trace-request")
        job_row = page.inner_text(f"#trace-jobs tr[data-job='{job_id}']")
        assert "render" in job_row and "2/" in job_row and "FFMPEG_ERROR" in job_row
        assert "FFMPEG_ERROR" in page.inner_text("#trace-groups")
        assert page.locator("#trace-logs tr[data-log='errors.log']").count() >= 1
        assert page.locator("#trace-logs tr[data-log='performance.log']").count() >= 1
        # The recent-errors table finds the job's two error events by the same id.
        page.wait_for_function(
            "(rid) => [...document.querySelectorAll('#recent tbody tr')].filter("
            "(tr) => tr.innerText.includes(rid) && tr.innerText.includes('FFMPEG_ERROR')).length === 2",
            arg=rid,
            timeout=WAIT_MS,
        )
        desk.shot("1280-request-trace")
        page.click("#recent-clear")
        page.wait_for_selector("#trace-panel", state="hidden", timeout=WAIT_MS)
        assert desk.console_errors == [], desk.console_errors
        desk.context.close()
