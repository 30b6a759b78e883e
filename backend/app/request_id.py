"""Request IDs and W3C trace context: the ID every response, log line and error event of a request carries.

An incoming `X-Request-ID` is reused only when it is safe to log and echo; otherwise a fresh one is
generated and the rejected value is reported to `security.log`. It lives in `flask.g` for the request.
Beside the errors layer (the error envelope quotes it), below the request pipeline that binds it to logs.
"""

from __future__ import annotations

import re
from typing import Any

from flask import g, has_request_context, request

from ..log.events import log_security_event
from .ids import uuid7_hex

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TRACEPARENT_PATTERN = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_request_id() -> str:
    """A fresh, unguessable, time-ordered request ID (UUIDv7 hex: error events index it)."""
    return uuid7_hex()


def parse_traceparent(value: str | None) -> str | None:
    """The trace id of a valid W3C `traceparent` header (version 00), else None."""
    if not value:
        return None
    match = TRACEPARENT_PATTERN.match(value.strip().lower())
    if match is None:
        return None
    trace_id, parent_id = match.group(1), match.group(2)
    if trace_id == "0" * 32 or parent_id == "0" * 16:  # all-zero ids are invalid per the spec
        return None
    return trace_id


def get_request_id() -> str:
    """The current request's ID, created on first use (also inside error handlers)."""
    if not has_request_context():
        return new_request_id()
    rid = g.get("request_id")
    if rid is None:
        rid = _assign_request_id()
    return rid


def _assign_request_id() -> str:
    return _choose_request_id(g._get_current_object(), request.environ.get("HTTP_X_REQUEST_ID"))[0]  # type: ignore[attr-defined]


def _choose_request_id(request_g: Any, incoming: str | None) -> tuple[str, bool]:
    """The request's ID, stored in `g`, and whether it was generated here (then it needs no cleaning)."""
    if incoming is not None and REQUEST_ID_PATTERN.fullmatch(incoming):  # `$` would accept a trailing \n
        request_g.request_id = incoming
        return incoming, False
    rid = new_request_id()
    if incoming is not None:
        log_security_event(
            "request_id_rejected",
            "Incoming X-Request-ID rejected; a new one was generated",
            request_id=rid,
            rejected_value=incoming[:200],
        )
    request_g.request_id = rid
    return rid, True
