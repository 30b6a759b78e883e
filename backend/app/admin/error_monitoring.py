"""The admin monitoring API of seed 001 (`/admin/api/monitoring/...`); admin JWT on every route."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import text

from ...logging_config import sink_status
from ..auth.decorators import admin_required
from ..error_handlers import utc_timestamp
from ..extensions import db
from ..openapi import documented
from ..schemas import HealthCheckOut

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
