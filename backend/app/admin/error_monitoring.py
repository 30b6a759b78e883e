"""The admin monitoring API of seed 001 (`/admin/api/monitoring/...`); admin JWT on every route."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app
from flask_jwt_extended import current_user
from sqlalchemy import text

from ...logging_config import log_security_event, sink_status
from ..alerts import DELIVER_KIND, budgets, evaluate_rules
from ..alerts.delivery import send_test
from ..alerts.schemas import AlertRuleRequest
from ..alerts.views import check_rule, delete_rule, delivery_dict, rotate_secret, rule_dict, save_rule
from ..api.schemas import BreakerListOut
from ..auth.decorators import admin_required
from ..errors import NotFoundError, ValidationError
from ..extensions import db
from ..monitoring import get_recorder
from ..monitoring.health import service_health
from ..monitoring.queries import RecentErrorsQuery, StatsQuery
from ..monitoring.stats import decode_cursor, error_stats, recent_events
from ..openapi import documented
from ..resilience.breaker import BreakerRegistry, CircuitBreaker
from ..resilience.faults import EXTENSION as FAULTS
from ..resilience.faults import FaultInjectionDisabledError, FaultInjector, make_rule
from ..timeutil import iso_seconds, utcnow
from ..validation import parse_json, parse_query
from .schemas import (
    AlertDeletedOut,
    AlertEvaluationOut,
    AlertRuleOut,
    AlertRulesOut,
    AlertSecretOut,
    AlertTestOut,
    BreakerActionOut,
    ErrorStatsOut,
    FaultListOut,
    FaultRuleRequest,
    HealthCheckOut,
    RecentErrorsOut,
    ServicesHealthOut,
    SloBudgetsOut,
)

bp = Blueprint("monitoring", __name__, url_prefix="/admin/api/monitoring")


@bp.get("/health/check")
@documented("Basic health: database and log sinks", tag="monitoring", responses={200: HealthCheckOut}, auth="admin")
@admin_required
def health_check() -> dict[str, Any]:
    """Basic health: the database answers and the log sinks are writable."""
    db.session.execute(text("SELECT 1"))
    logs = sink_status()["state"]
    status = "ok" if logs == "ok" else "degraded"
    return {"status": status, "timestamp": iso_seconds(), "checks": {"database": "ok", "logs": logs}}


@bp.get("/errors/stats")
@documented(
    "Error statistics: totals, per code, category and severity, rates, top groups",
    tag="monitoring",
    responses={200: ErrorStatsOut},
    auth="admin",
    errors=(422,),
    query=(("top", "integer", "How many top groups of the last 24 hours (1-50, default 10)"),),
)
@admin_required
def errors_stats() -> dict[str, Any]:
    """Error statistics read from the groups and rollups (cheap however long the history)."""
    query = parse_query(StatsQuery)
    stats = error_stats(db.session, top=query.top)
    recorder = get_recorder()
    stats["writer"] = recorder.status() if recorder is not None else None
    return stats


@bp.get("/logs/recent-errors")
@documented(
    "Recent error events from the store, newest first, filtered and paginated",
    tag="monitoring",
    responses={200: RecentErrorsOut},
    auth="admin",
    errors=(422,),
    query=(
        ("request_id", "string", "Only events of this request ID"),
        ("code", "string", "Only events with this error code"),
        ("group", "integer", "Only events of this error group"),
        ("since", "string", "ISO 8601 time: events at or after it"),
        ("until", "string", "ISO 8601 time: events before it"),
        ("limit", "integer", "Page size (1-200, default 50)"),
        ("cursor", "string", "`next_cursor` of the previous page"),
    ),
)
@admin_required
def recent_errors() -> dict[str, Any]:
    """A page of recorded error events (raw events are kept for ERROR_EVENT_RETENTION_DAYS)."""
    query = parse_query(RecentErrorsQuery)
    try:
        cursor = decode_cursor(query.cursor) if query.cursor else None
    except ValueError as exc:
        raise ValidationError("The cursor is not valid.", field="cursor") from exc
    events, next_cursor = recent_events(
        db.session,
        limit=query.limit,
        request_id=query.request_id,
        code=query.code,
        group_id=query.group,
        since=query.since,
        until=query.until,
        cursor=cursor,
    )
    return {"events": events, "next_cursor": next_cursor}


@bp.get("/health/services")
@documented(
    "Every dependency: configured, live probe (parallel, short deadline), breaker, last success and failure, "
    "queue depth, worker heartbeats, dead letters, fallback backlogs, log sinks",
    tag="monitoring",
    responses={200: ServicesHealthOut},
    auth="admin",
)
@admin_required
def health_services() -> dict[str, Any]:
    """The incident view of every dependency; a hung probe reports "timeout" within the deadline."""
    return service_health(current_app._get_current_object())  # type: ignore[attr-defined]


def _breakers() -> BreakerRegistry:
    return current_app.extensions["breakers"]  # type: ignore[no-any-return]


def _breaker(service: str) -> CircuitBreaker:
    registry = _breakers()
    breaker = registry.all().get(service)
    if breaker is None:
        # Never create a breaker from a URL: an unknown name is a 404, not a new entry.
        raise NotFoundError("No circuit breaker has this name.", details={"service": service[:64]})
    return breaker


def _actor() -> str:
    return f"admin user {current_user.id}"


@bp.get("/circuit-breakers")
@documented("Every circuit breaker with its snapshot", tag="monitoring", responses={200: BreakerListOut}, auth="admin")
@admin_required
def list_breakers() -> dict[str, Any]:
    """Every breaker's state, window counts and tuning."""
    registry = _breakers()
    return {"storage": registry.storage, "breakers": registry.snapshot()}


def _action(action: str, breakers: list[CircuitBreaker]) -> dict[str, Any]:
    # The breaker layer writes each admin action to security.log with the actor: not logged again here.
    # A store that cannot share the action raises ADMIN_ACTION_NOT_APPLIED (503) and changes nothing.
    for breaker in breakers:
        getattr(breaker, action)(_actor())
    return {
        "status": "success",
        "action": action,
        "breakers": {b.name: b.snapshot() for b in breakers},
        "propagation": _breakers().propagation(),
    }


@bp.post("/circuit-breakers/reset/<service>")
@documented(
    "Reset one breaker (closed, fresh window)",
    tag="monitoring",
    responses={200: BreakerActionOut},
    auth="admin",
    errors=(404,),
)
@admin_required
def reset_breaker(service: str) -> dict[str, Any]:
    """Close one breaker with a fresh window, in every process."""
    return _action("reset", [_breaker(service)])


@bp.post("/circuit-breakers/reset-all")
@documented("Reset every breaker", tag="monitoring", responses={200: BreakerActionOut}, auth="admin")
@admin_required
def reset_all_breakers() -> dict[str, Any]:
    """Close every breaker."""
    return _action("reset", list(_breakers().all().values()))


@bp.post("/circuit-breakers/<service>/force-open")
@documented(
    "Force a breaker open: every call is rejected until reset",
    tag="monitoring",
    responses={200: BreakerActionOut},
    auth="admin",
    errors=(404,),
)
@admin_required
def force_open_breaker(service: str) -> dict[str, Any]:
    """Reject every call to the service until an admin resets the breaker."""
    return _action("force_open", [_breaker(service)])


@bp.post("/circuit-breakers/<service>/disable")
@documented(
    "Disable a breaker: every call goes through, nothing is counted, until enabled",
    tag="monitoring",
    responses={200: BreakerActionOut},
    auth="admin",
    errors=(404,),
)
@admin_required
def disable_breaker(service: str) -> dict[str, Any]:
    """Let every call through uncounted until the breaker is enabled again."""
    return _action("disable", [_breaker(service)])


@bp.post("/circuit-breakers/<service>/enable")
@documented(
    "Enable a disabled (or forced) breaker again: closed with a fresh window",
    tag="monitoring",
    responses={200: BreakerActionOut},
    auth="admin",
    errors=(404,),
)
@admin_required
def enable_breaker(service: str) -> dict[str, Any]:
    """Return the breaker to normal operation (a reset)."""
    return _action("reset", [_breaker(service)])


def _injector() -> FaultInjector:
    injector: FaultInjector = current_app.extensions[FAULTS]
    if not injector.enabled:
        raise FaultInjectionDisabledError("Fault injection is disabled on this server.")
    return injector


def _faults(injector: FaultInjector) -> dict[str, Any]:
    return {
        "enabled": injector.enabled,
        "scope": injector.scope,
        "propagation": {"shared_through": injector.shared_through, "within_seconds": injector.refresh_seconds},
        "rules": injector.rules(),
        "injected": dict(injector.injected),
    }


@bp.get("/faults")
@documented(
    "Live fault-injection rules (shared by every process through Redis or the database)",
    tag="monitoring",
    responses={200: FaultListOut},
    auth="admin",
    errors=(403,),
)
@admin_required
def list_faults() -> dict[str, Any]:
    """The rules (refused unless FAULT_INJECTION_ENABLED, and always in production)."""
    return _faults(_injector())


@bp.post("/faults")
@documented(
    "Inject a fault: make a service fail, slow down or answer a status, at a rate, for a bounded time",
    tag="monitoring",
    request=FaultRuleRequest,
    responses={201: FaultListOut},
    auth="admin",
    errors=(403, 404, 422),
)
@admin_required
def add_fault() -> tuple[dict[str, Any], int]:
    """Add or replace the service's rule; it goes through breakers, retries and fallbacks like a real fault."""
    injector = _injector()
    body = parse_json(FaultRuleRequest)
    _breaker(body.service)  # only known services: 404 otherwise
    rule = make_rule(
        body.service,
        body.mode,
        rate=body.rate,
        delay_seconds=body.delay_seconds,
        status=body.status,
        operation=body.operation,
        duration_seconds=body.duration_seconds,
    )
    injector.add(rule)
    log_security_event(
        "fault_injected",
        f"Fault injection on {body.service}: {body.mode} by {_actor()}",
        user_id=current_user.id,
        service=body.service,
        mode=body.mode,
        rate=body.rate,
        status=body.status,
        delay_seconds=body.delay_seconds,
        duration_seconds=body.duration_seconds,
    )
    return _faults(injector), 201


@bp.delete("/faults")
@documented("Remove every fault rule", tag="monitoring", responses={200: FaultListOut}, auth="admin", errors=(403,))
@admin_required
def clear_faults() -> dict[str, Any]:
    """Stop every injected fault, in every process that shares the rules."""
    injector = _injector()
    removed = injector.clear()
    log_security_event(
        "faults_cleared", f"Fault injection cleared by {_actor()}", user_id=current_user.id, removed=removed
    )
    return _faults(injector)


@bp.delete("/faults/<service>")
@documented(
    "Remove one service's fault rule",
    tag="monitoring",
    responses={200: FaultListOut},
    auth="admin",
    errors=(403, 404),
)
@admin_required
def clear_fault(service: str) -> dict[str, Any]:
    """Stop the service's injected fault, in every process that shares the rules."""
    injector = _injector()
    _breaker(service)
    removed = injector.clear(service)
    log_security_event(
        "fault_cleared",
        f"Fault injection on {service} cleared by {_actor()}",
        user_id=current_user.id,
        service=service,
        removed=removed,
    )
    return _faults(injector)


@bp.post("/alerts/configure")
@documented(
    "Create or replace (by name) an alert rule with its channels; a new rule's signing secret is shown once",
    tag="monitoring",
    request=AlertRuleRequest,
    responses={200: AlertRuleOut},
    auth="admin",
    errors=(404, 422),
)
@admin_required
def configure_alert() -> dict[str, Any]:
    """Store the rule (its state is kept when an existing rule is replaced); the change goes to security.log."""
    body = parse_json(AlertRuleRequest)
    check_rule(current_app._get_current_object(), body)  # type: ignore[attr-defined]
    if body.kind == "breaker_open":
        _breaker(str(body.params["service"]))  # only known services
    rule, created = save_rule(body)
    log_security_event(
        "alert_rule_configured",
        f"Alert rule {rule.name} {'created' if created else 'changed'} by {_actor()}",
        user_id=current_user.id,
        rule=rule.name,
        kind=rule.kind,
        enabled=rule.enabled,
        channels=[c["type"] for c in rule.channels],
    )
    shown = rule_dict(rule)
    if created:
        shown["signing_secret"] = rule.signing_secret  # once: receivers verify X-Oriel-Signature with it
    return shown


@bp.get("/alerts/configure")
@documented(
    "Every alert rule with its state, and recent deliveries with their outcome",
    tag="monitoring",
    responses={200: AlertRulesOut},
    auth="admin",
)
@admin_required
def list_alerts() -> dict[str, Any]:
    """The rules as configured, their state, and the 50 most recent deliveries."""
    from ..models import AlertDelivery, AlertRule

    rules = db.session.execute(db.select(AlertRule).order_by(AlertRule.id)).scalars()
    deliveries = db.session.execute(db.select(AlertDelivery).order_by(AlertDelivery.id.desc()).limit(50)).scalars()
    return {"rules": [rule_dict(r) for r in rules], "deliveries": [delivery_dict(d) for d in deliveries]}


def _rule(rule_id: int) -> Any:
    from ..models import AlertRule

    rule = db.session.get(AlertRule, rule_id)
    if rule is None:
        raise NotFoundError("No alert rule has this id.", details={"rule_id": rule_id})
    return rule


@bp.delete("/alerts/<int:rule_id>")
@documented(
    "Delete an alert rule and its deliveries",
    tag="monitoring",
    responses={200: AlertDeletedOut},
    auth="admin",
    errors=(404,),
)
@admin_required
def delete_alert(rule_id: int) -> dict[str, Any]:
    """Delete the rule (pending deliveries never go out); the change goes to security.log."""
    rule = _rule(rule_id)
    name = rule.name
    removed = delete_rule(rule)
    log_security_event(
        "alert_rule_deleted", f"Alert rule {name} deleted by {_actor()}", user_id=current_user.id, rule=name
    )
    return {"deleted": name, "deliveries_removed": removed}


@bp.post("/alerts/<int:rule_id>/test")
@documented(
    "Send a test alert through every channel of a rule now; the outcome per channel",
    tag="monitoring",
    responses={200: AlertTestOut},
    auth="admin",
    errors=(404,),
)
@admin_required
def test_alert(rule_id: int) -> dict[str, Any]:
    """A test message on every channel at once, each through its own breaker (nothing is stored)."""

    rule = _rule(rule_id)
    outcomes = send_test(current_app._get_current_object(), rule, utcnow())  # type: ignore[attr-defined]
    log_security_event(
        "alert_rule_tested",
        f"Alert rule {rule.name} test-sent by {_actor()}",
        user_id=current_user.id,
        rule=rule.name,
        outcomes=[o["outcome"] for o in outcomes],
    )
    return {"rule": rule.name, "channels": outcomes}


@bp.post("/alerts/<int:rule_id>/rotate-secret")
@documented(
    "Give a rule a new webhook signing secret (shown this once; the old one stops verifying)",
    tag="monitoring",
    responses={200: AlertSecretOut},
    auth="admin",
    errors=(404,),
)
@admin_required
def rotate_alert_secret(rule_id: int) -> dict[str, Any]:
    """Rotate the signing secret; the change (never the secret) goes to security.log."""
    rule = _rule(rule_id)
    secret = rotate_secret(rule)
    log_security_event(
        "alert_secret_rotated",
        f"Alert rule {rule.name} signing secret rotated by {_actor()}",
        user_id=current_user.id,
        rule=rule.name,
    )
    return {"rule": rule.name, "signing_secret": secret}


@bp.post("/alerts/evaluate")
@documented(
    "Evaluate every alert rule now; deliveries are handed to the job worker (see the rules listing)",
    tag="monitoring",
    responses={200: AlertEvaluationOut},
    auth="admin",
)
@admin_required
def evaluate_alerts_now() -> dict[str, Any]:
    """Evaluate now and return at once: the worker sends, and the listing shows each delivery's outcome."""
    from ..jobs import enqueue
    from ..models import AlertDelivery
    from ..models.alert import PENDING

    result = evaluate_rules(current_app._get_current_object())  # type: ignore[attr-defined]
    pending = db.session.execute(
        db.select(db.func.count()).select_from(AlertDelivery).where(AlertDelivery.status == PENDING)
    ).scalar_one()
    job = enqueue(DELIVER_KIND, {}) if pending else None
    return {**result, "deliveries": {"pending": int(pending)}, "delivery_job": job.id if job is not None else None}


@bp.get("/slo")
@documented(
    "Each endpoint group's SLO, error budget left and burn rates",
    tag="monitoring",
    responses={200: SloBudgetsOut},
    auth="admin",
)
@admin_required
def slo_budgets() -> dict[str, Any]:
    """Budgets over each group's SLO window, with the multiwindow burn-rate pairs."""
    counter = current_app.extensions.get("slo_counter")
    if counter is not None:
        counter.flush()
    return {"budgets": budgets(current_app._get_current_object())}  # type: ignore[attr-defined]
