"""The admin monitoring API of seed 001 (`/admin/api/monitoring/...`); admin JWT on every route.

This module holds the blueprint, the health and error-statistics views and the helpers its siblings share;
`breakers.py` (circuit breakers, fault injection) and `alert_rules.py` (alert rules, SLO budgets) register
their views on the same `bp`, so every endpoint keeps its `monitoring.<view>` name.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app
from flask_jwt_extended import current_user
from sqlalchemy import text

from ...log.setup import sink_status
from ..auth.decorators import admin_required
from ..edge.openapi import documented
from ..edge.validation import parse_query
from ..errors import NotFoundError, ValidationError
from ..extensions import db
from ..monitoring import get_recorder
from ..monitoring.errors.stats import decode_cursor, error_stats, recent_events
from ..monitoring.health import service_health
from ..resilience.breaker import BreakerRegistry, CircuitBreaker
from ..timeutil import iso_seconds
from .queries import RecentErrorsQuery, StatsQuery
from .schemas import ErrorStatsOut, HealthCheckOut, RecentErrorsOut, ServicesHealthOut

bp = Blueprint("monitoring", __name__, url_prefix="/admin/api/monitoring")


@bp.get("/health/check")
@documented("Basic health: database and log sinks", tag="monitoring", responses={200: HealthCheckOut}, auth="admin")
@admin_required
def health_check() -> dict[str, Any]:
    """Basic health: the database answers and the log sinks are writable."""
    db.session.execute(text("SELECT 1"))
    logs = sink_status()["state"]
    status = "ok" if logs == "ok" else "degraded"
    return {"status": status, "timestamp": iso_seconds(), "checks": {"database": "ok", "logs": logs}}


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


@bp.get("/health/services")
@documented(
    "Every dependency: configured, live probe (parallel, short deadline), breaker, last success and failure, "
    "queue depth, worker heartbeats, dead letters, fallback backlogs, log sinks",
    tag="monitoring",
    responses={200: ServicesHealthOut},
    auth="admin",
)
@admin_required
def health_services() -> dict[str, Any]:
    """The incident view of every dependency; a hung probe reports "timeout" within the deadline."""
    return service_health(current_app._get_current_object())  # type: ignore[attr-defined]


def breaker_registry() -> BreakerRegistry:
    """The app's circuit breakers."""
    return current_app.extensions["breakers"]  # type: ignore[no-any-return]


def find_breaker(service: str) -> CircuitBreaker:
    """The breaker of this service; 404 when there is none (the URL never creates one)."""
    registry = breaker_registry()
    breaker = registry.all().get(service)
    if breaker is None:
        # Never create a breaker from a URL: an unknown name is a 404, not a new entry.
        raise NotFoundError("No circuit breaker has this name.", details={"service": service[:64]})
    return breaker


def admin_actor() -> str:
    """The admin acting, as security.log names them."""
    return f"admin user {current_user.id}"


# The sibling views attach themselves to bp, in the seed's order: breakers and faults, then alert rules and SLOs.
from . import breakers  # noqa: E402,F401,I001
from . import alert_rules  # noqa: E402,F401
