"""Request IDs, W3C trace context and the per-request log context.

An incoming `X-Request-ID` is reused only when it is safe to log and echo; otherwise a fresh one is
generated and the rejected value is reported to `security.log`. The values live in `flask.g` for the
request and in a contextvar for the log formatter, so log lines carry them from any thread-local
call path without passing them around.
"""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from typing import Any

from flask import Flask, g, has_request_context, request

from ..logging_config import bind_log_context, clear_log_context, log_security_event
from .utils.ids import uuid7_hex

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TRACEPARENT_PATTERN = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

request_started: ContextVar[float | None] = ContextVar("request_started", default=None)


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
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming is not None and REQUEST_ID_PATTERN.fullmatch(incoming):  # `$` would accept a trailing \n
        rid = incoming
    else:
        rid = new_request_id()
        if incoming is not None:
            log_security_event(
                "request_id_rejected",
                "Incoming X-Request-ID rejected; a new one was generated",
                request_id=rid,
                rejected_value=incoming[:200],
            )
    g.request_id = rid
    return rid


def _start_request() -> None:
    request_started.set(time.perf_counter())
    rid = get_request_id()
    g.trace_id = parse_traceparent(request.headers.get("traceparent"))
    bind_log_context(
        request_id=rid,
        trace_id=g.trace_id,
        method=request.method,
        path=request.path,
        endpoint=request.endpoint,
        remote_addr=request.remote_addr,
    )


def _tag_response(response: Any) -> Any:
    response.headers[REQUEST_ID_HEADER] = get_request_id()
    return response


def _end_request(_exc: BaseException | None) -> None:
    clear_log_context()


def init_request_context(app: Flask) -> None:
    """Assign IDs before any other hook runs and echo them on every response."""
    app.before_request_funcs.setdefault(None, []).insert(0, _start_request)
    app.after_request(_tag_response)
    app.teardown_request(_end_request)
