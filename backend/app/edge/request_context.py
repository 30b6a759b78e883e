"""The per-request log context, and the one hook before and after every request.

Before every request the request ID (`request_id.py`) and the W3C trace id are chosen and bound, with the
method, path, endpoint and client address, to the log context, so log lines carry them from any
thread-local call path without passing them around.

After every request one `after_request` hook echoes the ID and calls the receivers of
`signals.request_finished` (the performance.log line, metrics, SLO counts, error statistics). One
hook calling a list is cheaper than a hook each: Flask looks up, checks and calls every hook
function on every request, and each would look up the request again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from flask import Flask, Response, g, request

from ...log.context import bind_cleaned_log_context, clear_log_context
from ...log.redaction import clean_text
from ..request_id import REQUEST_ID_HEADER, _choose_request_id, get_request_id, parse_traceparent
from ..signals import RequestObserver, request_finished

request_started: ContextVar[float | None] = ContextVar("request_started", default=None)


def _start_request() -> None:
    request_started.set(time.perf_counter())
    # One proxy look-up each, and headers read from the WSGI environ (werkzeug's header look-up
    # upper-cases the name on every call): this runs before every request.
    req = request._get_current_object()  # type: ignore[attr-defined]
    request_g = g._get_current_object()  # type: ignore[attr-defined]
    environ = req.environ
    rid = request_g.get("request_id")
    generated = False
    if rid is None:
        rid, generated = _choose_request_id(request_g, environ.get("HTTP_X_REQUEST_ID"))
    traceparent = environ.get("HTTP_TRACEPARENT")
    trace_id = request_g.trace_id = parse_traceparent(traceparent) if traceparent else None
    # Cleaned here, as bind_log_context would, except what cannot hold a secret or a control
    # character: our own hex request id and a validated hex trace id. The rest hit clean_text's cache.
    fields: dict[str, Any] = {"request_id": rid if generated else clean_text(rid)}
    if trace_id is not None:
        fields["trace_id"] = trace_id
    fields["method"] = clean_text(req.method)
    fields["path"] = clean_text(req.path)
    endpoint = req.endpoint
    if endpoint is not None:
        fields["endpoint"] = clean_text(endpoint)
    remote_addr = req.remote_addr
    if remote_addr is not None:
        fields["remote_addr"] = clean_text(remote_addr)
    bind_cleaned_log_context(fields)


def _request_finisher(observers: list[RequestObserver]) -> Callable[[Response], Response]:
    """The app's `after_request` hook: echo the request ID, then call its observers in order."""

    def _finish_request(response: Response) -> Response:
        rid = g.get("request_id")
        response.headers[REQUEST_ID_HEADER] = rid if rid is not None else get_request_id()
        started = request_started.get()
        seconds = time.perf_counter() - started if started is not None else None
        req = request._get_current_object()  # type: ignore[attr-defined] - one proxy lookup for every observer
        for observe in observers:
            observe(req, response, seconds)
        return response

    return _finish_request


def _end_request(_exc: BaseException | None) -> None:
    clear_log_context()


def init_request_context(app: Flask) -> None:
    """Assign IDs before any other hook runs, echo them and call the observers after every request."""
    app.before_request_funcs.setdefault(None, []).insert(0, _start_request)
    app.after_request(_request_finisher(request_finished.receivers(app)))
    app.teardown_request(_end_request)
