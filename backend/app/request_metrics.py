"""One `performance.log` line per request, and a warning for slow ones.

The line carries the duration, status and endpoint (method, path, request ID come from the log
context); error responses also carry the query string and the request headers, redacted, because
that is what a reader needs to reproduce a failure. `REQUEST_LOGGING_ENABLED=False` keeps only the
slow-request warning (the benchmark's "logging off" baseline); `SLOW_REQUEST_MS` sets the threshold.
The same hook calls the request observers other modules add (`add_request_observer`: the error
statistics count requests there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Flask, Response, current_app, g, request

from ..logging_config import FlatFields, log_performance_metric
from .request_context import request_started

# Headers worth having next to a failed request; everything else is noise in the log.
_ERROR_HEADERS = ("Authorization", "Cookie", "User-Agent", "Content-Type", "Content-Length", "Referer", "Origin")
# Their WSGI environ keys, so an error line reads seven dict entries instead of going through
# werkzeug's header lookups (fourteen of them, each upper-casing the name).
_ERROR_HEADER_KEYS = tuple(
    (name, key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}")
    for name, key in ((name, name.upper().replace("-", "_")) for name in _ERROR_HEADERS)
)


OBSERVERS = "request_observers"


def add_request_observer(app: Flask, observer: Callable[[], None]) -> None:
    """Call `observer()` once after every request, from this module's one `after_request` hook.

    Cheaper than a hook of its own: Flask inspects every hook function on every request.
    """
    app.extensions.setdefault(OBSERVERS, []).append(observer)


def _record_request(response: Response) -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined] - one proxy lookup, not three
    for observe in app.extensions.get(OBSERVERS, ()):
        observe()
    started = request_started.get()
    if started is None:
        return response
    duration_ms = round((time.perf_counter() - started) * 1000.0, 3)
    cfg = app.config
    slow = duration_ms >= cfg["SLOW_REQUEST_MS"]
    if not (cfg["REQUEST_LOGGING_ENABLED"] or slow):
        return response
    status = response.status_code
    req = request._get_current_object()  # type: ignore[attr-defined] - one proxy lookup, not three
    fields: dict[str, object] = {"status": status, "endpoint": req.endpoint}
    environ = req.environ
    query = environ.get("QUERY_STRING")
    if query:
        fields["query"] = query  # redacted by the log handler like every field
    if status >= 400:
        fields["error_code"] = g.get("error_code")
        # Handed over to the log writer (which redacts it), so built fresh here and never changed.
        fields["headers"] = FlatFields({name: environ[key] for name, key in _ERROR_HEADER_KEYS if key in environ})
    if cfg["REQUEST_LOGGING_ENABLED"]:
        log_performance_metric("request", duration_ms, **fields)
    if slow:
        log_performance_metric(
            "slow_request", duration_ms, level=logging.WARNING, threshold_ms=cfg["SLOW_REQUEST_MS"], **fields
        )
    return response


def init_request_metrics(app: Flask) -> None:
    """Log every request's duration to `performance.log` (after the response is built)."""
    app.config.setdefault("REQUEST_LOGGING_ENABLED", True)
    app.config.setdefault("SLOW_REQUEST_MS", 1000)
    app.after_request(_record_request)
