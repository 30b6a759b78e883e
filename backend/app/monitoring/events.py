"""Build error events from API errors, exceptions and browser reports (cheap; no I/O)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import has_request_context, request
from werkzeug.exceptions import HTTPException

from ...logging_config import current_log_context
from ...redaction import neutralise, redact, redact_value
from ..errors import APIError
from ..request_context import get_request_id
from .classify import Category, categorise, categorise_client, severity_for
from .fingerprint import exception_frames, fingerprint, normalise_message
from .store import ErrorEventData

MESSAGE_LIMIT = 1000


def clean_text(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Secrets masked and control characters escaped, cut to `limit` characters."""
    return neutralise(redact(text))[:limit]


def _request_fields() -> dict[str, Any]:
    if not has_request_context():
        return {"endpoint": None, "method": None, "path": None}
    rule = request.url_rule
    return {
        "endpoint": request.endpoint or (rule.rule if rule is not None else None),
        "method": request.method,
        "path": clean_text(request.path, 500),
    }


def _context_ids() -> tuple[str | None, int | None]:
    context = current_log_context()
    # In a request the ID exists even before the log context is bound (an error in an early hook).
    request_id = get_request_id() if has_request_context() else context.get("request_id") or context.get("job_id")
    user_id = context.get("user_id")
    return (str(request_id) if request_id else None), (int(user_id) if isinstance(user_id, int) else None)


def from_error(
    error: BaseException,
    *,
    source: str,
    exception: BaseException | None = None,
    code: str | None = None,
    status_code: int | None = None,
    endpoint: str | None = None,
    context: dict[str, Any] | None = None,
) -> ErrorEventData:
    """An event for an APIError (with its original exception) or any other exception."""
    original = exception if exception is not None else error
    if isinstance(error, APIError):
        code = code or error.code
        status_code = status_code if status_code is not None else error.status_code
    code = code or "INTERNAL_ERROR"
    # Group on what went wrong (the original exception), not on the generic 500 text the client saw.
    # Werkzeug's HTTP errors carry boilerplate; our envelope message for them is the useful text.
    if isinstance(original, APIError):
        raw_message = original.message
    elif isinstance(original, HTTPException) and isinstance(error, APIError):
        raw_message = error.message
    else:
        raw_message = str(original)
    message = clean_text(raw_message or type(original).__name__)
    exc_type = type(original).__name__
    fields = _request_fields()
    if endpoint is not None:
        fields["endpoint"] = endpoint
    frames = exception_frames(original)
    category = categorise(code, status_code, None if isinstance(original, APIError) else original)
    request_id, user_id = _context_ids()
    return ErrorEventData(
        event_id=uuid.uuid4().hex,
        occurred_at=datetime.now(UTC),
        fingerprint=fingerprint(
            source=source,
            exc_type=exc_type,
            code=code,
            endpoint=fields["endpoint"],
            frames=frames,
            message=raw_message,
        ),
        source=source,
        code=code,
        status_code=status_code,
        category=category.value,
        severity=severity_for(category, status_code).value,
        title=f"{exc_type}: {normalise_message(message)}"[:300],
        message=message,
        exc_type=exc_type,
        request_id=request_id,
        user_id=user_id,
        frames="\n".join(frames) or None,
        context=json.dumps(redact_value("context", context), default=str)[:4000] if context else None,
        **fields,
    )


def from_client_report(
    *,
    message: str,
    error_type: str | None,
    code: str | None,
    status_code: int | None,
    frames: list[str],
    url_path: str | None,
    request_id: str | None,
    user_id: int | None,
    context: dict[str, Any],
) -> ErrorEventData:
    """An event for an error a browser reported (already sanitised by the caller)."""
    category: Category = categorise_client(error_type, message, status_code)
    code = code or "CLIENT_ERROR"
    return ErrorEventData(
        event_id=uuid.uuid4().hex,
        occurred_at=datetime.now(UTC),
        fingerprint=fingerprint(
            source="client",
            exc_type=error_type,
            code=code,
            endpoint=url_path,
            frames=frames,
            message=message,
        ),
        source="client",
        code=code,
        status_code=status_code,
        category=category.value,
        severity=severity_for(category, status_code, server_side=False).value,
        title=f"{error_type or 'Error'}: {normalise_message(message)}"[:300],
        message=message,
        exc_type=error_type,
        endpoint=url_path,
        method=None,
        path=url_path,
        request_id=request_id,
        user_id=user_id,
        frames="\n".join(frames) or None,
        context=json.dumps(context, default=str)[:4000] if context else None,
    )
