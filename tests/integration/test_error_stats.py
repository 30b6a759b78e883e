"""Error statistics through the real app: the signal path, the endpoints, regression, retention.

Most tests run on SQLite and on PostgreSQL (`stats_app` is parametrised over both).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.models import ErrorEvent, ErrorGroup, ErrorMinute
from backend.app.monitoring import flush_error_stats, get_recorder, record_error
from backend.app.monitoring.errors.fingerprint import fingerprint
from backend.app.monitoring.errors.retention import prune_error_events
from backend.app.monitoring.errors.store import ErrorEventData, write_batch
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.contract import assert_error, assert_no_leak

STATS = "/admin/api/monitoring/errors/stats"
RECENT = "/admin/api/monitoring/logs/recent-errors"
SUMMARY = "/api/errors/summary"
REPORT = "/api/errors/report"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stats_app(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> Flask:
    """The app on SQLite, then on PostgreSQL, with a route that fails like a real bug would."""
    app = make_app() if request.param == "sqlite" else request.getfixturevalue("pg_app")
    with app.app_context(), db.engine.begin() as conn:
        # The session's PostgreSQL database is shared: start from empty statistics whatever ran before.
        tables = ("error_group_hours", "error_code_hours", "error_code_minutes", "error_minutes", "error_events")
        for table in (*tables, "error_groups"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    _add_failing_route(app)
    return app


def _add_failing_route(app: Flask) -> None:
    def order_total(order_id: int) -> int:
        raise ZeroDivisionError(f"division by zero for order {order_id}")

    @app.get("/test/orders/<int:order_id>")
    def show_order(order_id: int) -> Any:
        return {"total": order_total(order_id)}


def admin_headers(client: FlaskClient) -> dict[str, str]:
    return bearer(login(client, ADMIN_EMAIL)["access_token"])


def stats(client: FlaskClient, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(STATS, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_errors_from_real_requests_land_in_stats_after_flush(stats_app: Flask) -> None:
    client = stats_app.test_client()
    headers = admin_headers(client)
    for i in range(3):
        assert client.get(f"/test/orders/{i}").status_code == 500
        assert client.get(f"/no/such/page/{i}").status_code == 404
    client.post("/api/auth/register", json={"email": "bad"})  # 422
    flush_error_stats(stats_app)
    body = stats(client, headers)
    assert body["by_code"]["INTERNAL_ERROR"] == {"total": 3, "last_24h": 3}
    assert body["by_code"]["NOT_FOUND"]["total"] == 3
    assert body["by_code"]["VALIDATION_ERROR"]["total"] == 1
    assert body["totals"]["errors"] == 7 and body["totals"]["unresolved"] == body["totals"]["groups"]
    assert body["by_category"]["PROCESSING"] == 3 and body["by_severity"]["HIGH"] >= 3
    # 5 minutes, not 1: the requests above may straddle a minute boundary.
    assert body["rates"]["5m"]["errors"] == 7
    # Requests are counted too (the login and register calls above succeeded).
    assert body["rates"]["5m"]["requests"] >= 9 and 0 < body["rates"]["5m"]["error_ratio"] <= 1
    top = {g["code"]: g for g in body["top_groups"]}
    crash = top["INTERNAL_ERROR"]
    assert crash["count"] == 3 and crash["count_24h"] == 3 and crash["exc_type"] == "ZeroDivisionError"
    assert crash["title"] == "ZeroDivisionError: division by zero for order <n>"
    assert crash["endpoint"] == "show_order" and crash["status"] == "unresolved"


def test_the_same_crash_with_different_ids_is_one_group_over_http(stats_app: Flask) -> None:
    client = stats_app.test_client()
    for order_id in (1, 22, 333, 4444):
        client.get(f"/test/orders/{order_id}")
    flush_error_stats(stats_app)
    with stats_app.app_context():
        groups = db.session.scalars(select(ErrorGroup).where(ErrorGroup.code == "INTERNAL_ERROR")).all()
        assert [g.count for g in groups] == [4]


def test_admin_endpoints_need_a_token_and_an_admin(stats_app: Flask) -> None:
    client = stats_app.test_client()
    user = bearer(login(client, "someone@example.com")["access_token"])
    for method, url in (("get", STATS), ("get", RECENT), ("get", SUMMARY), ("post", "/api/errors/acknowledge/1")):
        kwargs: dict[str, Any] = {"json": {}} if method == "post" else {}
        assert_error(getattr(client, method)(url, **kwargs), 401, "TOKEN_MISSING")
        assert_error(getattr(client, method)(url, headers=user, **kwargs), 403, "ADMIN_REQUIRED")


def test_resolved_group_that_happens_again_is_regressed(stats_app: Flask) -> None:
    client = stats_app.test_client()
    headers = admin_headers(client)
    client.get("/test/orders/1")
    flush_error_stats(stats_app)
    group = stats(client, headers)["top_groups"][0]
    resolved = client.post(f"/api/errors/acknowledge/{group['id']}", headers=headers, json={"status": "resolved"})
    assert resolved.status_code == 200 and resolved.get_json()["group"]["status"] == "resolved"
    client.get("/test/orders/2")
    flush_error_stats(stats_app)
    again = next(g for g in stats(client, headers)["top_groups"] if g["id"] == group["id"])
    assert again["status"] == "unresolved" and again["regressed"] is True and again["count"] == 2
    totals = stats(client, headers)["totals"]
    assert totals["regressed"] == 1
    # Acknowledging clears the regression flag; an acknowledged group stays acknowledged when it recurs.
    ack = client.post(f"/api/errors/acknowledge/{group['id']}", headers=headers, json={})
    assert ack.get_json()["group"]["status"] == "acknowledged" and ack.get_json()["group"]["regressed"] is False
    client.get("/test/orders/3")
    flush_error_stats(stats_app)
    latest = next(g for g in stats(client, headers)["top_groups"] if g["id"] == group["id"])
    assert latest["status"] == "acknowledged" and latest["regressed"] is False
    events = [e for e in read_log(stats_app, "security.log") if e.get("event_type") == "error_group_status_changed"]
    assert [e["status"] for e in events] == ["resolved", "acknowledged"]


def test_an_event_from_before_the_resolution_is_not_a_regression(stats_app: Flask) -> None:
    client = stats_app.test_client()
    headers = admin_headers(client)
    client.get("/test/orders/1")
    flush_error_stats(stats_app)
    group_id = stats(client, headers)["top_groups"][0]["id"]
    client.get("/test/orders/2")  # recorded now, written after the resolution below
    client.post(f"/api/errors/acknowledge/{group_id}", headers=headers, json={"status": "resolved"})
    flush_error_stats(stats_app)
    group = next(g for g in stats(client, headers)["top_groups"] if g["id"] == group_id)
    assert group["status"] == "resolved" and group["regressed"] is False and group["count"] == 2


def test_acknowledge_finds_groups_by_event_id_and_404s_unknown_ids(stats_app: Flask) -> None:
    client = stats_app.test_client()
    headers = admin_headers(client)
    client.get("/test/orders/1")
    flush_error_stats(stats_app)
    event = client.get(RECENT, headers=headers).get_json()["events"][0]
    by_event = client.post(f"/api/errors/acknowledge/{event['event_id']}", headers=headers, json={})
    assert by_event.status_code == 200 and by_event.get_json()["group"]["id"] == event["group_id"]
    assert_error(client.post("/api/errors/acknowledge/999999", headers=headers, json={}), 404, "NOT_FOUND")
    assert_error(client.post("/api/errors/acknowledge/zzz", headers=headers, json={}), 404, "NOT_FOUND")
    bad = client.post(f"/api/errors/acknowledge/{event['group_id']}", headers=headers, json={"status": "gone"})
    assert_error(bad, 422, "VALIDATION_ERROR")


def test_recent_errors_filters_and_paginates_from_the_store(stats_app: Flask) -> None:
    client = stats_app.test_client()
    headers = admin_headers(client)
    ids = []
    for i in range(5):
        ids.append(client.get(f"/test/orders/{i}").headers["X-Request-ID"])
        client.get(f"/missing/{i}")
    flush_error_stats(stats_app)
    by_request = client.get(RECENT, query_string={"request_id": ids[2]}, headers=headers).get_json()["events"]
    assert len(by_request) == 1 and by_request[0]["request_id"] == ids[2] and by_request[0]["path"] == "/test/orders/2"
    seen: list[str] = []
    cursor = None
    while True:
        query = {"code": "INTERNAL_ERROR", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(RECENT, query_string=query, headers=headers).get_json()
        seen += [e["event_id"] for e in page["events"]]
        assert all(e["code"] == "INTERNAL_ERROR" for e in page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5
    group_id = by_request[0]["group_id"]
    assert len(client.get(RECENT, query_string={"group": group_id}, headers=headers).get_json()["events"]) == 5
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert client.get(RECENT, query_string={"since": future}, headers=headers).get_json()["events"] == []
    assert len(client.get(RECENT, query_string={"until": future}, headers=headers).get_json()["events"]) == 10
    bad = client.get(RECENT, query_string={"limit": 0, "since": "yesterday"}, headers=headers)
    assert set(assert_error(bad, 422, "VALIDATION_ERROR")["details"]["fields"]) == {"limit", "since"}
    assert_error(client.get(RECENT, query_string={"cursor": "garbage!"}, headers=headers), 422, "VALIDATION_ERROR")


def test_summary_has_seed_004_fields(stats_app: Flask) -> None:
    client = stats_app.test_client()
    headers = admin_headers(client)
    client.get("/test/orders/1")
    client.get("/nowhere")
    flush_error_stats(stats_app)
    body = client.get(SUMMARY, headers=headers).get_json()
    assert body["status"] == "success" and body["timestamp"].endswith("Z")
    data = body["data"]
    assert data["total_errors"] == 2
    assert data["error_counts"] == {"processing_high": 1, "api_medium": 1}
    assert {e["category"] for e in data["recent_errors"]} == {"processing", "api"}
    assert all(len(e["error_id"]) == 32 for e in data["recent_errors"])


def _write_events(app: Flask, moments: list[datetime], code: str = "JOB_FAILED") -> None:
    events = [
        ErrorEventData(
            event_id=uuid.uuid4().hex,
            occurred_at=moment,
            fingerprint=fingerprint(source="job", exc_type="E", code=code, endpoint=None, frames=[], message="m"),
            source="job",
            code=code,
            status_code=None,
            category="PROCESSING",
            severity="LOW",
            title="E: m",
            message="m",
        )
        for moment in moments
    ]
    with app.app_context():
        write_batch(db.engine, events, {})


def test_rates_per_window_come_from_the_minute_rollups(stats_app: Flask) -> None:
    if datetime.now(UTC).second > 45:  # the endpoint's "current minute" must be the one written below
        time.sleep(61 - datetime.now(UTC).second)
    now = datetime.now(UTC)
    _write_events(stats_app, [now, now - timedelta(minutes=3), now - timedelta(minutes=30), now - timedelta(hours=5)])
    _write_events(stats_app, [now - timedelta(days=3)], code="OLD")
    client = stats_app.test_client()
    body = stats(client, admin_headers(client))
    assert {k: v["errors"] for k, v in body["rates"].items()} == {"1m": 1, "5m": 2, "1h": 3, "24h": 4}
    assert body["rates"]["5m"]["errors_per_minute"] == 0.4
    assert body["by_code"]["OLD"] == {"total": 1, "last_24h": 0}
    assert [g["code"] for g in body["top_groups"]] == ["JOB_FAILED"]  # top groups are the last 24 hours'


def test_counts_survive_pruning_raw_events(stats_app: Flask) -> None:
    now = datetime.now(UTC)
    _write_events(stats_app, [now - timedelta(days=20), now - timedelta(days=1), now])
    with stats_app.app_context():
        result = prune_error_events(db.engine, retention_days=14, max_rows=1)
        assert (result.events_by_age, result.events_by_count) == (1, 1)
        assert db.session.scalar(select(func.count()).select_from(ErrorEvent)) == 1
    client = stats_app.test_client()
    # No endpoint counts raw events: totals still include the pruned ones.
    assert stats(client, admin_headers(client))["totals"]["errors"] == 3


def test_prune_command_applies_the_configured_retention(make_app: Callable[..., Flask]) -> None:
    app = make_app(ERROR_EVENT_RETENTION_DAYS=7)
    _write_events(app, [datetime.now(UTC) - timedelta(days=8), datetime.now(UTC)])
    result = app.test_cli_runner().invoke(args=["monitoring", "prune-errors"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["events_by_age"] == 1


def test_record_error_for_jobs_outside_requests(stats_app: Flask) -> None:
    with stats_app.app_context():
        try:
            raise TimeoutError("render 5512 timed out after 30 s")
        except TimeoutError as exc:
            event_id = record_error(exc, source="job", code="RENDERING_TIMEOUT", context={"job_id": "j-1"})
    assert event_id is not None and len(event_id) == 32
    flush_error_stats(stats_app)
    with stats_app.app_context():
        event = db.session.scalar(select(ErrorEvent).where(ErrorEvent.event_id == event_id))
        assert event is not None and event.source == "job" and event.category == "PROCESSING"
        assert json.loads(event.context or "{}") == {"job_id": "j-1"}
        assert db.session.scalar(select(func.sum(ErrorMinute.errors))) == 1


def test_stats_can_be_switched_off(make_app: Callable[..., Flask]) -> None:
    app = make_app(ERROR_STATS_ENABLED=False)
    client = app.test_client()
    client.get("/nowhere")
    assert get_recorder(app) is None and record_error(RuntimeError("x"), app=app) is None
    assert_error(client.post(REPORT, json={"message": "x"}), 503, "SERVICE_NOT_CONFIGURED")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ErrorMinute)) == 0


# --- POST /api/errors/report -------------------------------------------------------------------


def test_client_report_is_accepted_sanitised_and_stored_as_client(stats_app: Flask) -> None:
    client = stats_app.test_client()
    report = {
        "message": "<script>alert('pwned')</script>Player crashed on track 8812\r\nFAKE LOG LINE",
        "error_type": "TypeError<b>",
        "stack": "TypeError: x\n    at renderPlayer (https://app/app.js:10:5)",
        "url": "https://app.example.com/player/8812?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghij",
        "context": {"component": "<img src=x onerror=alert(1)>player", "attempt": 2},
    }
    response = client.post(REPORT, json=report)
    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"status", "event_id"} and body["status"] == "accepted"
    assert_no_leak(response.get_data(as_text=True))
    flush_error_stats(stats_app)
    with stats_app.app_context():
        event = db.session.scalar(select(ErrorEvent).where(ErrorEvent.event_id == body["event_id"]))
        assert event is not None and event.source == "client" and event.user_id is None
        stored = f"{event.message} {event.exc_type} {event.path} {event.context}"
        for bad in ("<script", "alert", "onerror", "\n", "\r", "eyJhbGci", "token="):
            assert bad not in stored, bad
        assert event.path == "/player/8812" and "Player crashed on track 8812" in event.message
        group = db.session.get(ErrorGroup, event.group_id)
        assert group is not None and group.frames == "renderPlayer" and group.source == "client"


def test_client_report_with_a_token_attaches_the_user_and_a_bad_token_does_not_block_it(stats_app: Flask) -> None:
    client = stats_app.test_client()
    tokens = login(client, "reporter@example.com")
    with_user = client.post(REPORT, json={"message": "boom"}, headers=bearer(tokens["access_token"]))
    anonymous = client.post(REPORT, json={"message": "boom"}, headers=bearer("not.a.token"))
    assert with_user.status_code == anonymous.status_code == 202
    flush_error_stats(stats_app)
    with stats_app.app_context():
        users = dict(db.session.execute(select(ErrorEvent.event_id, ErrorEvent.user_id)).all())
    assert users[with_user.get_json()["event_id"]] is not None
    assert users[anonymous.get_json()["event_id"]] is None


def test_client_report_rejects_oversized_malformed_and_invalid_bodies(app: Flask) -> None:
    client = app.test_client()
    big = {"message": "x" * 3000, "stack": "y" * 7000, "context": {f"k{i}": "z" * 450 for i in range(15)}}
    assert len(json.dumps(big)) > 16 * 1024
    assert_error(client.post(REPORT, json=big), 413, "PAYLOAD_TOO_LARGE")
    malformed = client.post(REPORT, data=b'{"message": "x",', content_type="application/json")
    assert_error(malformed, 400, "MALFORMED_JSON")
    assert_error(client.post(REPORT, data="message=x"), 415, "UNSUPPORTED_MEDIA_TYPE")
    fields = assert_error(client.post(REPORT, json={"message": "", "admin": True}), 422, "VALIDATION_ERROR")
    assert {"message", "admin"} <= set(fields["details"]["fields"])


def test_client_report_of_exactly_16_kb_is_accepted(app: Flask) -> None:
    context = {f"k{i}": "c" * 500 for i in range(10)}
    base = len(json.dumps({"message": "m" * 4000, "stack": "", "context": context}).encode())
    body = json.dumps({"message": "m" * 4000, "stack": "s" * (16 * 1024 - base), "context": context}).encode()
    assert len(body) == 16 * 1024
    response = app.test_client().post(REPORT, data=body, content_type="application/json")
    assert response.status_code == 202, response.get_json()
    too_big = body.replace(b'"stack": "', b'"stack": "s', 1)
    assert_error(app.test_client().post(REPORT, data=too_big, content_type="application/json"), 413)


def test_client_report_chunked_body_over_the_limit_is_413(app: Flask) -> None:
    body = b'{"message": "' + b"x" * 40_000 + b'"}'
    response = app.test_client().post(
        REPORT,
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


def test_client_report_is_rate_limited_per_ip_with_retry_after(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_ERROR_REPORT="3 per minute")
    client = app.test_client()
    statuses = [client.post(REPORT, json={"message": f"e{i}"}).status_code for i in range(3)]
    assert statuses == [202, 202, 202]
    error = assert_error(client.post(REPORT, json={"message": "again"}), 429, "RATE_LIMITED")
    assert 1 <= error["retry_after"] <= 60
    other_ip = client.post(REPORT, json={"message": "x"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other_ip.status_code == 202


@pytest.mark.parametrize("count", [1, 3, 511, 700])
def test_a_batch_of_any_size_stores_every_event_once_with_a_time_ordered_id(stats_app: Flask, count: int) -> None:
    # Raw events are inserted in power-of-two chunks (512, 256 ... 1) and ids are assigned per batch.
    now = datetime.now(UTC)
    moments = [now - timedelta(milliseconds=count - i) for i in range(count)]
    events = [
        ErrorEventData(
            event_id=None,
            occurred_at=moment,
            fingerprint=fingerprint(source="job", exc_type="E", code="BATCH", endpoint=None, frames=[], message="m"),
            source="job",
            code="BATCH",
            status_code=None,
            category="PROCESSING",
            severity="LOW",
            title="E: m",
            message=f"event {i}",
        )
        for i, moment in enumerate(moments)
    ]
    with stats_app.app_context():
        write_batch(db.engine, events, {})
        rows = db.session.execute(select(ErrorEvent.event_id, ErrorEvent.message).order_by(ErrorEvent.id)).all()
        group_count = db.session.scalar(select(ErrorGroup.count).where(ErrorGroup.code == "BATCH"))
    assert sorted(m for _, m in rows) == sorted(f"event {i}" for i in range(count))
    ids = [event_id for event_id, _ in rows]
    assert len(set(ids)) == count and all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)  # v7 ids sort by time: a batch appends at the end of the index
    assert group_count == count
