"""The dashboard's server side: the page (HTML, strict CSP, JSON errors) and its two admin reads, the
error/request time series and renders across users (the browser tests are in test_dashboard_browser)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import update

from backend.app.admin.dashboard import timeseries
from backend.app.extensions import db
from backend.app.models import ErrorMinute, Render
from backend.app.monitoring import flush_error_stats
from backend.app.services import credits
from tests.harness.app import ADMIN_EMAIL, bearer, login
from tests.harness.contract import assert_error
from tests.harness.peers.audio import AudioFactory

STATIC = Path(__file__).parents[2] / "backend" / "app" / "static" / "admin"
TIMESERIES = "/admin/api/dashboard/timeseries"
RENDERS = "/admin/api/dashboard/renders"


def test_dashboard_page_is_html_with_a_strict_csp_and_its_errors_stay_json(app: Flask) -> None:
    client = app.test_client()
    for path in ("/admin", "/admin/"):
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == "text/html"
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        html = response.get_data(as_text=True)
        assert "<script>" not in html and "access_token" not in html  # no inline script, no token
    assert Path(__file__).parents[2].joinpath("backend/app/static/admin/dashboard.js").exists()
    assert client.get("/static/admin/dashboard.js").status_code == 200
    response = client.post("/admin")
    assert response.status_code == 405 and response.mimetype == "application/json"
    assert response.get_json()["error"]["code"]
    response = client.get("/admin/nothing-here")
    assert response.status_code == 404 and response.get_json()["error"]["request_id"]


def test_page_modules_load_only_from_self() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert 'src="/static/admin/dashboard.js"' in html and "style=" not in html and "onclick" not in html
    script = (STATIC / "dashboard.js").read_text(encoding="utf-8")
    assert 'from "/static/js/oriel-client.js"' in script  # the shared client: keys, envelopes, retries
    assert "localStorage" not in script and "innerHTML" not in script


def test_dashboard_reads_need_an_admin(app: Flask) -> None:
    client = app.test_client()
    for path in (TIMESERIES, RENDERS):
        assert_error(client.get(path), 401)
        user = bearer(login(client)["access_token"])
        assert_error(client.get(path, headers=user), 403, "ADMIN_REQUIRED")


def test_timeseries_counts_requests_and_errors_per_minute_and_per_half_hour(app: Flask) -> None:
    client = app.test_client()
    admin = bearer(login(client, ADMIN_EMAIL)["access_token"])
    for _ in range(4):
        client.get("/api/me")  # 401: errors as well as requests
    flush_error_stats(app)
    hour = client.get(TIMESERIES, headers=admin).get_json()
    assert hour["window"] == "1h" and hour["bucket_minutes"] == 1 and len(hour["points"]) == 60
    assert sum(p["errors"] for p in hour["points"]) >= 4
    assert sum(p["requests"] for p in hour["points"]) >= sum(p["errors"] for p in hour["points"])
    day = client.get(f"{TIMESERIES}?window=24h", headers=admin).get_json()
    assert day["bucket_minutes"] == 30 and 48 <= len(day["points"]) <= 49
    assert sum(p["errors"] for p in day["points"]) == sum(p["errors"] for p in hour["points"])
    error = assert_error(client.get(f"{TIMESERIES}?window=7d", headers=admin), 422, "VALIDATION_ERROR")
    assert "window" in error["details"]["fields"]


def test_timeseries_buckets_the_rollup_and_drops_older_minutes(app: Flask) -> None:
    now = datetime(2026, 5, 4, 12, 40, 30, tzinfo=UTC)
    with app.app_context():
        for minutes_ago, errors, requests in ((0, 1, 10), (1, 2, 20), (59, 3, 30), (60, 100, 100), (700, 5, 50)):
            at = now.replace(second=0) - timedelta(minutes=minutes_ago)
            db.session.add(ErrorMinute(minute=at, errors=errors, server_errors=errors // 2, requests=requests))
        db.session.commit()
        hour = timeseries("1h", now)
        day = timeseries("24h", now)
    points = hour["points"]
    assert points[-1] == {
        "at": "2026-05-04T12:40:00.000000Z",
        "errors": 1,
        "server_errors": 0,
        "client_errors": 1,
        "requests": 10,
        "error_ratio": 0.1,
        "server_error_ratio": 0.0,
    }
    assert points[-2]["errors"] == 2 and points[-2]["server_errors"] == 1 and points[-2]["client_errors"] == 1
    assert points[0]["errors"] == 3  # 60 minutes ago is outside the hour
    assert sum(p["requests"] for p in points) == 60
    assert day["points"][-1]["at"] == "2026-05-04T12:30:00.000000Z" and day["points"][-1]["errors"] == 3
    assert sum(p["errors"] for p in day["points"]) == 111
    assert all(p["error_ratio"] is None for p in day["points"] if p["requests"] == 0)


def _render_for(app: Flask, audio_files: AudioFactory, email: str) -> int:
    client = app.test_client()
    token = login(client, email)["access_token"]
    wav = audio_files.make("wav", seconds=0.5).read_bytes()
    upload = client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(wav), "tone.wav")},
        headers=bearer(token),
        content_type="multipart/form-data",
    )
    assert upload.status_code == 201, upload.get_json()
    with app.app_context():
        credits.grant(int(client.get("/api/me", headers=bearer(token)).get_json()["user"]["id"]), 2, "test", email)
    response = client.post(
        "/api/renders",
        json={"upload_id": upload.get_json()["upload"]["id"], "preset": "waveform"},
        headers=bearer(token),
    )
    assert response.status_code == 202, response.get_json()
    return int(response.get_json()["render"]["id"])


def test_admin_lists_renders_of_every_user_running_first(app: Flask, audio_files: AudioFactory) -> None:
    first = _render_for(app, audio_files, "one@example.com")
    second = _render_for(app, audio_files, "two@example.com")
    with app.app_context():
        # What a worker's claim and first progress report write (no worker runs in this test).
        db.session.execute(update(Render).where(Render.id == first).values(status="running", progress=40))
        db.session.commit()
    client = app.test_client()
    admin = bearer(login(client, ADMIN_EMAIL)["access_token"])
    renders: list[dict[str, Any]] = client.get(f"{RENDERS}?status=active", headers=admin).get_json()["renders"]
    assert [(r["id"], r["status"], r["progress"]) for r in renders] == [(first, "running", 40), (second, "queued", 0)]
    assert len({r["user_id"] for r in renders}) == 2
    assert client.get(f"{RENDERS}?status=running", headers=admin).get_json()["renders"][0]["id"] == first
    assert client.get(f"{RENDERS}?status=failed", headers=admin).get_json() == {"renders": []}
    assert_error(client.get(f"{RENDERS}?status=paused", headers=admin), 422, "VALIDATION_ERROR")
    assert_error(client.get(f"{RENDERS}?limit=0", headers=admin), 422, "VALIDATION_ERROR")
    # #16: a limit that is not a number is refused by name, never read as the default of 50
    for bad in ("abc", "1.5", "201"):
        body = assert_error(client.get(f"{RENDERS}?limit={bad}", headers=admin), 422, "VALIDATION_ERROR")
        assert "limit" in body["details"]["fields"], body
