"""One `performance.log` line per request, and a warning for slow ones.

The line carries the duration, status and endpoint (method, path, request ID come from the log
context); error responses also carry the query string and the request headers, redacted, because
that is what a reader needs to reproduce a failure. `REQUEST_LOGGING_ENABLED=False` keeps only the
slow-request warning (the benchmark's "logging off" baseline); `SLOW_REQUEST_MS` sets the threshold.
It is a receiver of `signals.request_finished`, called from the app's one
`after_request` hook with the request, the response and the duration.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

from flask import Flask, Request, Response, g

from ...log.events import log_performance_metric
from ...log.records import FlatFields
from ..signals import request_finished

# Headers worth having next to a failed request; everything else is noise in the log.
_ERROR_HEADERS = ("Authorization", "Cookie", "User-Agent", "Content-Type", "Content-Length", "Referer", "Origin")
# Their WSGI environ keys, so an error line reads seven dict entries instead of going through
# werkzeug's header lookups (fourteen of them, each upper-casing the name).
_ERROR_HEADER_KEYS = tuple(
    (name, key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}")
    for name, key in ((name, name.upper().replace("-", "_")) for name in _ERROR_HEADERS)
)


def _log_request(cfg: Mapping[str, Any], req: Request, response: Response, seconds: float | None) -> None:
    if seconds is None:
        return
    duration_ms = round(seconds * 1000.0, 3)
    slow = duration_ms >= cfg["SLOW_REQUEST_MS"]
    enabled = cfg["REQUEST_LOGGING_ENABLED"]
    if not (enabled or slow):
        return
    status = response.status_code
    fields: dict[str, object] = {"status": status, "endpoint": req.endpoint}
    environ = req.environ
    query = environ.get("QUERY_STRING")
    if query:
        fields["query"] = query  # redacted by the log handler like every field
    if status >= 400:
        fields["error_code"] = g.get("error_code")
        # Handed over to the log writer (which redacts it), so built fresh here and never changed.
        fields["headers"] = FlatFields({name: environ[key] for name, key in _ERROR_HEADER_KEYS if key in environ})
    if enabled:
        log_performance_metric("request", duration_ms, **fields)
    if slow:
        log_performance_metric(
            "slow_request", duration_ms, level=logging.WARNING, threshold_ms=cfg["SLOW_REQUEST_MS"], **fields
        )


def init_request_metrics(app: Flask) -> None:
    """Log every request's duration to `performance.log` (after the response is built)."""
    app.config.setdefault("REQUEST_LOGGING_ENABLED", True)
    app.config.setdefault("SLOW_REQUEST_MS", 1000)
    # The app's own config dict: settings changed later are still read on each request.
    request_finished.connect(app, partial(_log_request, app.config))
