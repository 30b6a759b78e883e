"""Seed 004's status endpoints: breakers (admin), system health, degradation, rate limits, notifications.

Also the load balancer's probes: `/healthz` (liveness: the process answers) and `/readyz`
(readiness: the database answers within a short deadline). Public answers name features and
levels only: never hosts, errors, config or stack traces.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, request
from flask_jwt_extended import current_user
from flask_limiter.util import get_remote_address
from limits.errors import StorageError as LimitsStorageError
from sqlalchemy import or_, select

from ..auth.admins import is_admin
from ..auth.decorators import admin_required, login_required
from ..edge.openapi import documented
from ..edge.rate_limits import get_limiter, never_rate_limited
from ..edge.validation import parse_query
from ..error_catalog import lookup
from ..errors import ExternalServiceError
from ..extensions import db
from ..models import ErrorEvent
from ..models.media import FAILED as RENDER_FAILED
from ..models.media import Render
from ..monitoring.degradation import degradation, public_health, system_notifications
from ..monitoring.errors.severity import categorise, severity_for
from ..monitoring.health import EXTENSION as HEALTH_EXTENSION
from ..monitoring.probes import ProbeResult
from ..renders.runner import JOB_KIND as RENDER_JOB_KIND
from ..timeutil import epoch_iso, iso_micro
from . import bp
from .schemas import (
    BreakerListOut,
    DegradationOut,
    LivenessOut,
    NotificationsOut,
    NotificationsQuery,
    RateLimitStatusOut,
    ReadinessOut,
    SystemHealthOut,
)

logger = logging.getLogger(__name__)

READY_DEADLINE = 1.0

#: Code prefixes of errors that hit a user's own work, and the action to take; first match wins.
USER_ACTIONS: tuple[tuple[str, str], ...] = (
    ("RENDERING_TIMEOUT", "The render took too long. Try a shorter clip or a lower resolution."),
    ("RENDERING_RESOURCES", "The render servers are busy. Your render will be retried; try again later if not."),
    ("RENDERING_", "The render failed. Start it again; if it fails twice, contact support with the request ID."),
    ("FFMPEG_", "The render failed. Start it again; if it fails twice, contact support with the request ID."),
    ("PAYMENT_DECLINED", "Your payment was declined. Use another card or contact your bank."),
    ("CARD_", "Your card was not accepted. Check the details or use another card."),
    ("PAYMENT", "The payment did not go through. Nothing was charged; try again."),
    ("STRIPE_", "The payment did not go through. Nothing was charged; try again."),
    ("FILE_", "The file was not accepted. Check its format and size and upload it again."),
    ("UNSUPPORTED_AUDIO", "The audio format is not supported. Upload MP3, WAV, FLAC or OGG."),
    ("STORAGE_", "Your file could not be stored. Upload it again in a few minutes."),
    ("EMAIL_", "An email to you was delayed. It will be sent when email delivery recovers."),
    ("CIRCUIT_OPEN", "A service was temporarily unavailable. Retry in a few minutes."),
    ("EXTERNAL_SERVICE", "A service was temporarily unavailable. Retry in a few minutes."),
)


class NotReadyError(ExternalServiceError):
    """The service is not ready to serve requests yet (readiness probe)."""

    code = "SERVICE_NOT_READY"


def action_for(code: str) -> str | None:
    """The action a user should take after an error with `code` (None: not a user-facing failure)."""
    for prefix, action in USER_ACTIONS:
        if code.startswith(prefix):
            return action
    return None


@bp.get("/healthz")
@never_rate_limited  # a load balancer polls it from one address all day
@documented("Liveness: the process answers (for load balancers)", tag="health", responses={200: LivenessOut})
def healthz() -> dict[str, Any]:
    """The process is up; checks nothing else on purpose (a restart would not fix a dependency)."""
    return {"status": "alive"}


def _database_ready() -> bool:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    prober = app.extensions[HEALTH_EXTENSION]["prober"]

    def probe() -> ProbeResult:
        with app.app_context(), db.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return ProbeResult("ok")

    deadline = float(app.config.get("READINESS_DEADLINE", READY_DEADLINE))
    return prober.run({"readiness:database": probe}, deadline)["readiness:database"].status == "ok"


@bp.get("/readyz")
@never_rate_limited
@documented(
    "Readiness: the database answers within a short deadline (for load balancers)",
    tag="health",
    responses={200: ReadinessOut},
    errors=(503,),
)
def readyz() -> dict[str, Any]:
    """200 when the database answers within READINESS_DEADLINE seconds (default 1), else a 503 envelope."""
    if not _database_ready():
        raise NotReadyError("The service is not ready.")
    return {"status": "ready"}


@bp.get("/api/errors/circuit-breakers")
@documented("Every circuit breaker with its snapshot", tag="errors", responses={200: BreakerListOut}, auth="admin")
@admin_required
def error_api_breakers() -> dict[str, Any]:
    """Seed 004's breaker list (the same data as the admin monitoring API)."""
    registry = current_app.extensions["breakers"]
    return {"storage": registry.storage, "breakers": registry.snapshot()}


@bp.get("/api/errors/system-health")
@documented(
    "Public health: a level (ok, degraded, down) and the degraded features",
    tag="errors",
    responses={200: SystemHealthOut},
)
def system_health() -> dict[str, Any]:
    """The level and degraded features, from the breakers; nothing internal."""
    return public_health(current_app._get_current_object())  # type: ignore[attr-defined]


@bp.get("/api/errors/degradation-mode")
@documented(
    "Open breakers: affected features, whether a fallback serves, what users should expect",
    tag="errors",
    responses={200: DegradationOut},
)
def degradation_mode() -> dict[str, Any]:
    """What is degraded right now and what users should expect."""
    return degradation(current_app._get_current_object())  # type: ignore[attr-defined]


@bp.get("/api/errors/rate-limit-status")
@documented(
    "The caller's own rate limits (by client address) and what is left, read without consuming",
    tag="errors",
    responses={200: RateLimitStatusOut},
)
def rate_limit_status() -> dict[str, Any]:
    """For every rate-limited endpoint and this one's default limit: the limit, remaining and reset time."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    limiter = get_limiter(app)
    if not app.config.get("RATELIMIT_ENABLED", True):
        return {"enabled": False, "limits": []}
    endpoints = sorted(e for e, view in app.view_functions.items() if getattr(view, "_rate_limit_key", None))
    wanted = [(e, "POST") for e in endpoints] + [(request.endpoint or "", request.method)]
    limits: list[dict[str, Any]] = []
    for endpoint, method in wanted:
        blueprint = endpoint.rsplit(".", 1)[0] if "." in endpoint else None
        defaults, decorated = limiter.limit_manager.resolve_limits(app, endpoint, blueprint)
        for lim in decorated or defaults:
            if lim.key_func is not get_remote_address:
                continue  # keyed by an account, not by the caller's address: not the caller's to read
            entry: dict[str, Any] = {"endpoint": endpoint, "limit": str(lim.limit), "remaining": None, "reset_at": None}
            try:
                # The same identifiers Flask-Limiter hits with: [key prefix,] client key, scope.
                args = [lim.key_func(), lim.scope_for(endpoint, method)]
                prefix = app.config.get("RATELIMIT_KEY_PREFIX", "oriel")  # what init_rate_limits gave the limiter
                if prefix:
                    args.insert(0, prefix)
                reset, remaining = limiter.limiter.get_window_stats(lim.limit, *args)
            except (LimitsStorageError, ConnectionError, TimeoutError) as exc:
                # The limit store is down: say "unknown" rather than guess what is left.
                logger.warning("Rate-limit storage unavailable for status: %s", type(exc).__name__)
            else:
                entry["remaining"] = remaining
                entry["reset_at"] = epoch_iso(reset)
            limits.append(entry)
    return {"enabled": True, "limits": limits}


RENDER_JOBS = f"job:{RENDER_JOB_KIND}"  # the endpoint the worker records a render attempt's error under
RENDER_ACTION = "The render failed. Start it again; if it fails twice, contact support with the request ID."


def _failed_renders(user_id: int, severity: str | None, limit: int) -> list[dict[str, Any]]:
    """The caller's failed renders, newest first: read from the renders themselves, one entry each."""
    stmt = (
        select(Render)
        .where(Render.user_id == user_id, Render.status == RENDER_FAILED)
        .order_by(Render.id.desc())
        .limit(limit)
    )
    out: list[dict[str, Any]] = []
    for render in db.session.execute(stmt).scalars():
        code = render.error_code or "INTERNAL_ERROR"
        level = severity_for(categorise(code, render.error_status, None), render.error_status).value
        if severity is not None and level != severity:
            continue
        entry = lookup(code)
        out.append(
            {
                "id": f"render-{render.id}",
                "kind": "render",
                "severity": level,
                "code": code,
                # The render's own message is the user's to read (GET /api/renders/<id> shows it too).
                "title": render.error_message or (entry.meaning if entry is not None else "The render failed."),
                "action": action_for(code) or RENDER_ACTION,
                "occurred_at": iso_micro(render.finished_at or render.created_at),
                "request_id": render.request_id,
                "render_id": render.id,
            }
        )
    return out


def _user_notifications(user_id: int, severity: str | None, limit: int) -> list[dict[str, Any]]:
    # A render's attempts are listed by the render itself (one entry, with how it ended): an attempt that
    # failed may have been retried and succeeded.
    stmt = (
        select(ErrorEvent)
        .where(ErrorEvent.user_id == user_id, or_(ErrorEvent.endpoint.is_(None), ErrorEvent.endpoint != RENDER_JOBS))
        .order_by(ErrorEvent.occurred_at.desc())
    )
    if severity:
        stmt = stmt.where(ErrorEvent.severity == severity)
    out: list[dict[str, Any]] = []
    # Read a bounded page more than asked: validation noise is skipped, not shown as a notification.
    for event in db.session.execute(stmt.limit(limit * 5)).scalars():
        action = action_for(event.code)
        if action is None:
            continue
        entry = lookup(event.code)
        out.append(
            {
                "id": event.event_id,
                "kind": "error",
                "severity": event.severity,
                "code": event.code,
                # The catalog's meaning, never the stored message: a job's message may be internal.
                "title": entry.meaning if entry is not None else "An operation failed.",
                "action": action,
                "occurred_at": iso_micro(event.occurred_at),
                "request_id": event.request_id,
            }
        )
        if len(out) >= limit:
            break
    return out


def _system_notifications(severity: str | None) -> list[dict[str, Any]]:
    items = system_notifications(current_app._get_current_object())  # type: ignore[attr-defined]
    return [item for item in items if severity is None or item["severity"] == severity]


@bp.get("/api/errors/notifications")
@documented(
    "Errors that hit the caller (failed renders, payments...) with the action to take; admins also get system alerts",
    tag="errors",
    responses={200: NotificationsOut},
    auth="user",
    errors=(422,),
    query=(
        ("severity", "string", "LOW, MEDIUM, HIGH or CRITICAL"),
        ("limit", "integer", "At most this many (1-100, default 20)"),
    ),
)
@login_required
def notifications() -> dict[str, Any]:
    """The caller's failed renders and own failed requests, newest first; an admin also sees breakers and alerts."""
    query = parse_query(NotificationsQuery)
    severity, limit = query.severity, query.limit
    mine = _failed_renders(int(current_user.id), severity, limit) + _user_notifications(
        int(current_user.id), severity, limit
    )
    items = sorted(mine, key=lambda item: item["occurred_at"] or "", reverse=True)
    if is_admin(current_user):
        items = _system_notifications(severity) + items
    return {"notifications": items[:limit]}
