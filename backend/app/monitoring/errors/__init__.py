"""Error statistics: every error becomes a grouped, counted event in the database.

`init_error_stats(app)` subscribes to `error_occurred` (every error response and unhandled
exception), counts requests per minute (a request observer, `request_context`) and registers the
`flask monitoring ...` commands. `record_error(...)` records errors that are not HTTP responses
(job failures). Everything is buffered per process and written off the request path in batches.

events (an error becomes an event), fingerprint (its group), severity (seed 004 category and severity),
recorder (the per-process buffer and writer), store (the batch write), stats (the read side), retention
(the prune job), client_reports (errors the browser reports).

Layer: monitoring; may import log, base, errors, resilience, services, jobs (tests/unit/test_layers.py).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, has_app_context

from ...errors import APIError
from ...signals import error_occurred, job_failed, request_finished
from .events import capture_error, from_error, new_event_id
from .recorder import RAW_PER_MINUTE, RETRY_SECONDS, ErrorRecorder, flush_all, register_recorder

logger = logging.getLogger(__name__)

EXTENSION = "error_stats"

__all__ = ["flush_all", "flush_error_stats", "get_recorder", "init_error_stats", "record_error"]


def get_recorder(app: Flask | None = None) -> ErrorRecorder | None:
    """The app's recorder, or None when error statistics are off."""
    target = app if app is not None else (current_app if has_app_context() else None)
    if target is None:
        return None
    return target.extensions.get(EXTENSION)  # type: ignore[union-attr]


def flush_error_stats(app: Flask | None = None) -> int:
    """Write the app's pending events now; the number written (tests, shutdown hooks)."""
    recorder = get_recorder(app)
    return recorder.flush() if recorder is not None else 0


def record_error(
    error: BaseException,
    source: str = "job",
    *,
    code: str | None = None,
    status_code: int | None = None,
    endpoint: str | None = None,
    context: dict[str, Any] | None = None,
    app: Flask | None = None,
) -> str | None:
    """Record an error that is not an HTTP response (a job failure...); the event id, or None.

    Never raises: a monitoring failure is logged, and the caller's own error handling goes on.
    """
    recorder = get_recorder(app)
    if recorder is None:
        return None
    try:
        event = from_error(
            error,
            source=source,
            code=code,
            status_code=status_code,
            endpoint=endpoint,
            context=context,
            event_id=new_event_id(),  # the caller gets it back now
        )
    except Exception:  # monitoring never raises into its caller; the failure is logged
        logger.exception("Could not build an error event for %s", type(error).__name__)
        return None
    recorder.submit(event)
    return event.event_id


def _on_error_occurred(sender: Flask, error: APIError, exception: BaseException | None = None, **_: Any) -> None:
    recorder = sender.extensions.get(EXTENSION)
    if recorder is None:
        return
    recorder.submit(capture_error(error, source="http", exception=exception))


def _on_job_failed(sender: Flask, error: BaseException, claim: Any, outcome: Any, **_: Any) -> None:
    record_error(
        error,
        "job",
        endpoint=f"job:{claim.kind}",
        context={"job_id": claim.id, "job_kind": claim.kind, "attempt": claim.attempt, "outcome": outcome.status},
        app=sender,
    )


def init_error_stats(app: Flask) -> None:
    """Record the app's errors and count its requests, when ERROR_STATS_ENABLED (default on)."""
    if not app.config.get("ERROR_STATS_ENABLED", True):
        return
    recorder = ErrorRecorder(
        app,
        batch_size=int(app.config.get("ERROR_STATS_BATCH_SIZE", 1000)),
        interval=int(app.config.get("ERROR_STATS_FLUSH_MS", 1000)) / 1000,
        capacity=int(app.config.get("ERROR_STATS_BUFFER_SIZE", 10_000)),
        retry_seconds=float(app.config.get("ERROR_STATS_RETRY_SECONDS", RETRY_SECONDS)),
        raw_per_minute=int(app.config.get("ERROR_EVENT_SAMPLE_PER_MINUTE", RAW_PER_MINUTE)),
    )
    app.extensions[EXTENSION] = recorder
    register_recorder(recorder)
    # error_handlers already shields the response from listener failures (and logs them).
    error_occurred.connect(_on_error_occurred, sender=app, weak=True)
    job_failed.connect(_on_job_failed, sender=app, weak=True)
    request_finished.connect(app, lambda _req, _response, _seconds: recorder.count_request())
