"""The admin monitoring API of seed 001 (`/admin/api/monitoring/...`); admin JWT on every route."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import text

from ...logging_config import sink_status
from ..auth.decorators import admin_required
from ..error_handlers import utc_timestamp
from ..errors import ValidationError
from ..extensions import db
from ..monitoring import get_recorder
from ..monitoring.queries import RecentErrorsQuery, StatsQuery, parse_query
from ..monitoring.stats import decode_cursor, error_stats, recent_events
from ..openapi import documented
from ..schemas import ErrorStatsOut, HealthCheckOut, RecentErrorsOut

bp = Blueprint("monitoring", __name__, url_prefix="/admin/api/monitoring")


@bp.get("/health/check")
@documented("Basic health: database and log sinks", tag="monitoring", responses={200: HealthCheckOut}, auth="admin")
@admin_required
def health_check() -> dict[str, Any]:
    """Basic health: the database answers and the log sinks are writable."""
    db.session.execute(text("SELECT 1"))
    logs = sink_status()["state"]
    status = "ok" if logs == "ok" else "degraded"
    return {"status": status, "timestamp": utc_timestamp(), "checks": {"database": "ok", "logs": logs}}


@bp.get("/errors/stats")
@documented(
    "Error statistics: totals, per code, category and severity, rates, top groups",
    tag="monitoring",
    responses={200: ErrorStatsOut},
    auth="admin",
    errors=(422,),
    query=(("top", "integer", "How many top groups of the last 24 hours (1-50, default 10)"),),
)
@admin_required
def errors_stats() -> dict[str, Any]:
    """Error statistics read from the groups and rollups (cheap however long the history)."""
    query = parse_query(StatsQuery)
    stats = error_stats(db.session, top=query.top)
    recorder = get_recorder()
    stats["writer"] = recorder.status() if recorder is not None else None
    return stats


@bp.get("/logs/recent-errors")
@documented(
    "Recent error events from the store, newest first, filtered and paginated",
    tag="monitoring",
    responses={200: RecentErrorsOut},
    auth="admin",
    errors=(422,),
    query=(
        ("request_id", "string", "Only events of this request ID"),
        ("code", "string", "Only events with this error code"),
        ("group", "integer", "Only events of this error group"),
        ("since", "string", "ISO 8601 time: events at or after it"),
        ("until", "string", "ISO 8601 time: events before it"),
        ("limit", "integer", "Page size (1-200, default 50)"),
        ("cursor", "string", "`next_cursor` of the previous page"),
    ),
)
@admin_required
def recent_errors() -> dict[str, Any]:
    """A page of recorded error events (raw events are kept for ERROR_EVENT_RETENTION_DAYS)."""
    query = parse_query(RecentErrorsQuery)
    try:
        cursor = decode_cursor(query.cursor) if query.cursor else None
    except ValueError as exc:
        raise ValidationError("The cursor is not valid.", field="cursor") from exc
    events, next_cursor = recent_events(
        db.session,
        limit=query.limit,
        request_id=query.request_id,
        code=query.code,
        group_id=query.group,
        since=query.since,
        until=query.until,
        cursor=cursor,
    )
    return {"events": events, "next_cursor": next_cursor}
