"""The error API of seed 004: the catalog, the summary, triage of groups and client error reports."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import current_app, request
from flask_jwt_extended import current_user, get_current_user, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from ...log.events import log_security_event
from ..auth.decorators import admin_required
from ..edge.openapi import documented
from ..edge.rate_limits import rate_limited
from ..edge.routing import MAX_INT
from ..edge.validation import parse_json
from ..error_catalog import entries
from ..errors import ExternalServiceError, NotFoundError
from ..extensions import db
from ..models import ErrorEvent, ErrorGroup
from ..monitoring import get_recorder
from ..monitoring.errors.client_reports import build_client_event
from ..monitoring.errors.stats import group_dict, summary
from ..request_id import get_request_id
from ..timeutil import iso_seconds, utcnow
from . import bp
from .schemas import (
    CatalogOut,
    ClientErrorReport,
    ErrorGroupEnvelope,
    ErrorReportAccepted,
    ErrorSummaryOut,
    GroupStatusRequest,
)

logger = logging.getLogger(__name__)

EVENT_ID = re.compile(r"^[0-9a-f]{32}$")
FINGERPRINT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REPORT_MAX_BYTES = 16 * 1024


@bp.get("/api/errors/catalog")
@documented("Every error code the API can return", tag="errors", responses={200: CatalogOut})
def catalog() -> dict[str, Any]:
    """Every error code with its status, meaning and whether a retry can succeed."""
    return {"errors": [entry.as_dict() for entry in entries()]}


@bp.get("/api/errors/summary")
@documented(
    "Error summary: total errors, counts per category and severity, the latest errors",
    tag="errors",
    responses={200: ErrorSummaryOut},
    auth="admin",
)
@admin_required
def error_summary() -> dict[str, Any]:
    """Seed 004's summary, read from the groups and the newest events."""
    return {"status": "success", "data": summary(db.session), "timestamp": iso_seconds()}


def _find_group(error_id: str) -> ErrorGroup:
    group: ErrorGroup | None = None
    if error_id.isdigit() and len(error_id) <= 10 and int(error_id) <= MAX_INT:  # error_groups.id is INTEGER
        group = db.session.get(ErrorGroup, int(error_id))
    elif EVENT_ID.match(error_id):
        group_id = db.session.scalar(select(ErrorEvent.group_id).where(ErrorEvent.event_id == error_id))
        group = db.session.get(ErrorGroup, group_id) if group_id is not None else None
    elif FINGERPRINT.match(error_id):
        group = db.session.scalar(select(ErrorGroup).where(ErrorGroup.fingerprint == error_id))
    if group is None:
        raise NotFoundError("No error group matches this id.", details={"error_id": error_id[:64]})
    return group


@bp.post("/api/errors/acknowledge/<error_id>")
@documented(
    "Set an error group's status: acknowledged (default), resolved or unresolved",
    tag="errors",
    request=GroupStatusRequest,
    responses={200: ErrorGroupEnvelope},
    auth="admin",
    errors=(404,),
)
@admin_required
def acknowledge_error(error_id: str) -> dict[str, Any]:
    """Triage a group, found by group id, event id or fingerprint; resolving arms regression detection."""
    body = parse_json(GroupStatusRequest)
    group = _find_group(error_id)
    previous = group.status
    now = utcnow()
    group.status = body.status
    group.status_changed_at = now
    group.status_changed_by = current_user.id
    group.regressed = False  # an admin has looked at it
    group.resolved_at = now if body.status == "resolved" else None
    db.session.commit()
    log_security_event(
        "error_group_status_changed",
        "Admin changed an error group's status",
        level=logging.INFO,
        user_id=current_user.id,
        group_id=group.id,
        previous_status=previous,
        status=body.status,
    )
    return {"status": "success", "group": group_dict(group)}


def _optional_user_id() -> int | None:
    try:
        verify_jwt_in_request(optional=True)
    except (JWTExtendedException, PyJWTError):
        # A stale or bad token must not lose a crash report; the report is kept, anonymously.
        return None
    user = get_current_user()
    return int(user.id) if user is not None else None


@bp.post("/api/errors/report")
@documented(
    "Report an error seen by a browser client (anyone; a valid token attaches the user)",
    tag="errors",
    request=ClientErrorReport,
    responses={202: ErrorReportAccepted},
    errors=(503,),
    headers=(("Authorization", "Optional Bearer access token: attaches the report to the user"),),
)
@rate_limited("RATELIMIT_ERROR_REPORT")
def report_error() -> tuple[dict[str, Any], int]:
    """Store a sanitised client error report with source "client" (at most 16 KB, rate-limited per IP)."""
    limit = int(current_app.config.get("ERROR_REPORT_MAX_BYTES", DEFAULT_REPORT_MAX_BYTES))
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    # A chunked body has no Content-Length: werkzeug stops reading at the maximum and hands back a
    # truncated body, so read one byte past the limit and refuse what overflows.
    request.max_content_length = limit + 1
    if len(request.get_data(cache=True)) > limit:
        raise RequestEntityTooLarge()
    body = parse_json(ClientErrorReport)
    recorder = get_recorder()
    if recorder is None:
        raise ExternalServiceError("Error reporting is turned off on this server.", code="SERVICE_NOT_CONFIGURED")
    event = build_client_event(body, request_id=get_request_id(), user_id=_optional_user_id())
    if not recorder.submit(event):
        raise ExternalServiceError("Error reporting is busy; retry later.", retry_after=5)
    return {"status": "accepted", "event_id": event.event_id}, 202
