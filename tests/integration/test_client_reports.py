"""Client error reports live in their own category (#14 point 6).

Anyone may post `/api/errors/report`: a report claiming `DATABASE_UNAVAILABLE, 503` must never show as
a server error, never feed the server's rates, per-code counts, alerts or SLOs, and its `context` is
redacted like every server event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.models import ErrorCodeHour, ErrorCodeMinute, ErrorEvent, ErrorMinute
from backend.app.monitoring import flush_error_stats
from tests.harness.app import ADMIN_EMAIL, bearer, login

REPORT = "/api/errors/report"
FORGED = {"message": "database down", "code": "DATABASE_UNAVAILABLE", "status": 503, "error_type": "Error"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def report_app(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> Flask:
    """The app on SQLite and on PostgreSQL (tables emptied: the PostgreSQL database is shared)."""
    app = make_app() if request.param == "sqlite" else request.getfixturevalue("pg_app")
    with app.app_context(), db.engine.begin() as conn:
        for table in ("error_group_hours", "error_code_hours", "error_code_minutes", "error_minutes", "error_events"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
        conn.exec_driver_sql("DELETE FROM error_groups")
    return app


def _admin(app: Flask) -> dict[str, str]:
    return bearer(login(app.test_client(), ADMIN_EMAIL)["access_token"])


def test_point6_forged_server_codes_never_reach_server_stats_rates_or_code_alerts(report_app: Flask) -> None:
    client = report_app.test_client()
    headers = _admin(report_app)
    rule = {
        "name": "db-down",
        "kind": "code_count",
        "params": {"code": "DATABASE_UNAVAILABLE", "threshold": 5, "window_seconds": 300},
        "channels": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
    }
    assert client.post("/admin/api/monitoring/alerts/configure", headers=headers, json=rule).status_code == 200
    rate_rule = {**rule, "name": "rate", "kind": "error_rate", "params": {"threshold": 0.01, "min_requests": 1}}
    assert client.post("/admin/api/monitoring/alerts/configure", headers=headers, json=rate_rule).status_code == 200
    for _ in range(5):
        assert client.post(REPORT, json=FORGED).status_code == 202
    # The SLO counts responses: the five reports were answered 202, none is a server failure. Read from this
    # app's own counter before anything flushes it (other tests' apps may flush into the shared database).
    counts = report_app.extensions["slo_counter"]._counts  # (minute, group, outcome) -> responses
    assert sum(n for (_minute, group, outcome), n in counts.items() if group == "api" and outcome == "good") == 5
    assert sum(n for (_minute, _group, outcome), n in counts.items() if outcome != "good") == 0, counts
    flush_error_stats(report_app)
    stats = client.get("/admin/api/monitoring/errors/stats", headers=headers).get_json()
    assert "DATABASE_UNAVAILABLE" not in stats["by_code"]
    assert stats["totals"]["errors"] == 0 and stats["rates"]["5m"]["errors"] == 0
    assert all(group["source"] != "client" for group in stats["top_groups"])
    clients = stats["client_reports"]
    assert clients["reports"] == 5 and clients["last_24h"] == 5 and clients["groups"] == 1
    assert clients["by_code"] == {"DATABASE_UNAVAILABLE": 5}
    assert clients["top_groups"][0]["source"] == "client" and clients["top_groups"][0]["count_24h"] == 5
    summary = client.get("/api/errors/summary", headers=headers).get_json()["data"]
    assert summary["total_errors"] == 0 and summary["recent_errors"] == []
    result = client.post("/admin/api/monitoring/alerts/evaluate", headers=headers).get_json()
    assert result["events"].get("db-down") != "firing" and result["events"].get("rate") != "firing"
    with report_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ErrorEvent).where(ErrorEvent.source == "client")) == 5
        for table in (ErrorMinute.errors, ErrorCodeMinute.count, ErrorCodeHour.count):
            assert (db.session.scalar(select(func.coalesce(func.sum(table), 0))) or 0) == 0, table


def test_point6_a_real_server_error_still_counts_beside_client_reports(report_app: Flask) -> None:
    client = report_app.test_client()
    headers = _admin(report_app)
    client.post(REPORT, json=FORGED)
    client.get("/no/such/page")
    flush_error_stats(report_app)
    stats = client.get("/admin/api/monitoring/errors/stats", headers=headers).get_json()
    assert stats["by_code"] == {"NOT_FOUND": {"total": 1, "last_24h": 1}}
    assert stats["client_reports"]["reports"] == 1


def test_point6_report_context_is_redacted_like_server_events(report_app: Flask) -> None:
    client = report_app.test_client()
    context: dict[str, Any] = {  # values are scalars (the schema); the keys name what they hold
        "password": "hunter2-plain",
        "api_key": "k-123456",
        "session_token": "t-9",
        "note": "Authorization: Bearer abc.def.ghi",
        "attempt": 2,
    }
    response = client.post(REPORT, json={"message": "boom", "context": context})
    assert response.status_code == 202
    flush_error_stats(report_app)
    with report_app.app_context():
        stored = db.session.scalar(
            select(ErrorEvent.context).where(ErrorEvent.event_id == response.get_json()["event_id"])
        )
    assert stored is not None
    for secret in ("hunter2-plain", "k-123456", "abc.def.ghi", "t-9"):
        assert secret not in stored, secret
    assert '"attempt": 2' in stored and "[REDACTED]" in stored
