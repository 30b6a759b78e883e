"""`GET /admin/api/monitoring/requests/<request_id>`: trace the id a user quotes to everything it touched.

One call answers "what happened to this request?": the request (its performance.log line, or its error
events), the jobs it started with their status, attempts and last error, their error events and groups,
and the log lines that carry the id (see `monitoring.trace` for the bounded log read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, current_app

from ..auth.decorators import admin_required
from ..edge.openapi import documented
from ..errors import BadRequestError, NotFoundError
from ..extensions import db
from ..monitoring.trace import DEFAULT_MAX_LINES, DEFAULT_SCAN_BYTES, trace_request
from ..request_id import REQUEST_ID_PATTERN
from .schemas import RequestTraceOut

bp = Blueprint("request_trace", __name__, url_prefix="/admin/api/monitoring/requests")


class InvalidRequestIdError(BadRequestError):
    """The request ID is not one this service issues or accepts (1-128 of A-Z a-z 0-9 . _ : -)."""

    code = "INVALID_REQUEST_ID"


class RequestNotFoundError(NotFoundError):
    """Nothing recorded carries this request ID: no job, error event or log line that was read."""

    code = "REQUEST_NOT_FOUND"


@bp.get("/<request_id>")
@documented(
    "Trace a request ID: the request, the jobs it started, their error events and groups, its log lines",
    tag="monitoring",
    responses={200: RequestTraceOut},
    auth="admin",
    errors=(400, 404),
)
@admin_required
def trace(request_id: str) -> dict[str, Any]:
    """Everything that carries `request_id`; 404 REQUEST_NOT_FOUND when nothing does."""
    if REQUEST_ID_PATTERN.fullmatch(request_id) is None:
        raise InvalidRequestIdError(details={"pattern": REQUEST_ID_PATTERN.pattern})
    cfg = current_app.config
    found = trace_request(
        db.session,
        request_id,
        log_dir=Path(cfg["LOG_DIR"]),
        max_lines=int(cfg.get("REQUEST_TRACE_MAX_LINES", DEFAULT_MAX_LINES)),
        max_bytes=int(cfg.get("REQUEST_TRACE_SCAN_BYTES", DEFAULT_SCAN_BYTES)),
    )
    if found is None:
        raise RequestNotFoundError(details={"request_id": request_id})
    return found
