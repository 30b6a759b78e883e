"""The admin dashboard: the page at /admin and the two reads it needs that the monitoring API lacks.

The page itself is static HTML, CSS and ES modules under static/admin/ (no build step); it logs in
through /api/auth/login and reads everything else from the admin monitoring API with the token it
keeps in memory. Its own errors are the usual JSON envelopes (only the page is HTML).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from flask import Blueprint, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import case, select

from ..auth.decorators import admin_required
from ..edge.openapi import documented
from ..edge.validation import parse_query
from ..errors import ValidationError
from ..extensions import db
from ..models import ErrorMinute, Render
from ..models.media import QUEUED, RENDER_STATUSES, RUNNING
from ..monitoring.errors.store import floor_minute
from ..timeutil import as_utc, iso_micro, utcnow

bp = Blueprint("dashboard", __name__)

PAGE = Path(__file__).resolve().parents[1] / "static" / "admin" / "index.html"
#: Self only, no inline script or style: the page's code is the ES modules beside it.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Chart windows: (total minutes, minutes per point).
WINDOWS = {"1h": (60, 1), "24h": (1440, 30)}


class SeriesPoint(BaseModel):
    """Errors and requests in one bucket starting at `at`."""

    at: str
    errors: int
    server_errors: int
    client_errors: int
    requests: int
    error_ratio: float | None
    server_error_ratio: float | None


class TimeseriesOut(BaseModel):
    """Error and request counts over a window, oldest bucket first."""

    window: str
    bucket_minutes: int
    points: list[SeriesPoint]


class AdminRender(BaseModel):
    """A render as the admin sees it (any user's)."""

    id: int
    user_id: int
    status: str
    progress: int
    preset: str
    resolution: str
    attempts: int
    error_code: str | None
    request_id: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class AdminRendersOut(BaseModel):
    """Renders across every user."""

    renders: list[AdminRender]


@bp.get("/admin")
@documented(
    "The admin dashboard page (HTML; its data comes from the admin API with the admin's token)",
    tag="monitoring",
    response_content="text/html",
)
def page() -> Response:
    """Serve the dashboard shell: no data and no token in it, so it needs no authentication."""
    response = Response(PAGE.read_bytes(), mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


class TimeseriesQuery(BaseModel):
    """Query of the chart: the window, 1h (per minute) or 24h (per 30 minutes)."""

    model_config = ConfigDict(extra="forbid")

    window: Literal["1h", "24h"] = "1h"


class RendersPanelQuery(BaseModel):
    """Query of the renders panel: an optional status (or `active`) and at most `limit` rows."""

    model_config = ConfigDict(extra="forbid")  # a misspelt parameter is reported, not ignored

    status: str | None = None
    limit: int = Field(default=50, ge=1, le=200)


def timeseries(window: str, now: datetime | None = None) -> dict[str, Any]:
    """Errors and requests per bucket over the window, from the per-minute rollup (at most 1,440 rows)."""
    total, step = WINDOWS[window]
    current = floor_minute(now or utcnow())
    first = current - timedelta(minutes=total - step)
    first = first.replace(minute=first.minute - first.minute % step)
    buckets = [first + timedelta(minutes=step * i) for i in range((current - first) // timedelta(minutes=step) + 1)]
    sums = {at: [0, 0, 0] for at in buckets}
    rows = db.session.execute(
        select(ErrorMinute.minute, ErrorMinute.errors, ErrorMinute.server_errors, ErrorMinute.requests).where(
            ErrorMinute.minute >= first
        )
    )
    for minute, errors, server, requests in rows:
        minute = as_utc(minute)
        offset = (minute - first) // timedelta(minutes=step)
        if 0 <= offset < len(buckets):
            bucket = sums[buckets[offset]]
            bucket[0] += int(errors or 0)
            bucket[1] += int(server or 0)
            bucket[2] += int(requests or 0)
    points = [
        {
            "at": iso_micro(at),
            "errors": e,
            "server_errors": s,
            "client_errors": e - s,
            "requests": r,
            "error_ratio": round(e / r, 4) if r else None,
            "server_error_ratio": round(s / r, 4) if r else None,
        }
        for at, (e, s, r) in sums.items()
    ]
    return {"window": window, "bucket_minutes": step, "points": points}


@bp.get("/admin/api/dashboard/timeseries")
@documented(
    "Errors and requests per bucket over the last hour (per minute) or day (per 30 minutes)",
    tag="monitoring",
    responses={200: TimeseriesOut},
    auth="admin",
    errors=(422,),
    query=(("window", "string", "1h (default) or 24h"),),
)
@admin_required
def timeseries_view() -> dict[str, Any]:
    """The chart's data."""
    return timeseries(parse_query(TimeseriesQuery).window)


def admin_render(render: Render) -> dict[str, Any]:
    """The admin view of a render."""
    return {
        "id": render.id,
        "user_id": render.user_id,
        "status": render.status,
        "progress": render.progress,
        "preset": render.preset,
        "resolution": render.resolution,
        "attempts": render.attempts,
        "error_code": render.error_code,
        "request_id": render.request_id,
        "created_at": iso_micro(render.created_at),
        "started_at": iso_micro(render.started_at),
        "finished_at": iso_micro(render.finished_at),
    }


def list_renders(status: str | None, limit: int) -> list[dict[str, Any]]:
    """Renders of every user: running first, then queued, then the rest, newest first within each."""
    query = select(Render)
    if status == "active":
        query = query.where(Render.status.in_((RUNNING, QUEUED)))
    elif status is not None:
        query = query.where(Render.status == status)
    order = case((Render.status == RUNNING, 0), (Render.status == QUEUED, 1), else_=2)
    rows = db.session.scalars(query.order_by(order, Render.id.desc()).limit(limit))
    return [admin_render(r) for r in rows]


@bp.get("/admin/api/dashboard/renders")
@documented(
    "Renders across every user with their progress (running first)",
    tag="monitoring",
    responses={200: AdminRendersOut},
    auth="admin",
    errors=(422,),
    query=(
        ("status", "string", "active (queued or running), queued, running, succeeded or failed"),
        ("limit", "integer", "At most this many (1-200, default 50)"),
    ),
)
@admin_required
def renders_view() -> dict[str, Any]:
    """The renders panel's data."""
    query = parse_query(RendersPanelQuery)  # `?limit=abc` is a 422, never a silent default of 50
    status = query.status or None
    if status is not None and status != "active" and status not in RENDER_STATUSES:
        raise ValidationError(f"status must be active or one of {', '.join(RENDER_STATUSES)}", field="status")
    return {"renders": list_renders(status, query.limit)}
