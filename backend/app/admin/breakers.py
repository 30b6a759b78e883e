"""Admin views of the circuit breakers and of fault injection, registered on the monitoring blueprint."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_jwt_extended import current_user

from ...log.events import log_security_event
from ..api.schemas import BreakerListOut
from ..auth.decorators import admin_required
from ..edge.openapi import documented
from ..edge.validation import parse_json
from ..resilience.breaker import CircuitBreaker
from ..resilience.faults import EXTENSION as FAULTS
from ..resilience.faults import FaultInjectionDisabledError, FaultInjector, make_rule
from .error_monitoring import admin_actor, bp, breaker_registry, find_breaker
from .schemas import BreakerActionOut, FaultListOut, FaultRuleRequest


@bp.get("/circuit-breakers")
@documented("Every circuit breaker with its snapshot", tag="monitoring", responses={200: BreakerListOut}, auth="admin")
@admin_required
def list_breakers() -> dict[str, Any]:
    """Every breaker's state, window counts and tuning."""
    registry = breaker_registry()
    return {"storage": registry.storage, "breakers": registry.snapshot()}


def _action(action: str, breakers: list[CircuitBreaker]) -> dict[str, Any]:
    # The breaker layer writes each admin action to security.log with the actor: not logged again here.
    # A store that cannot share the action raises ADMIN_ACTION_NOT_APPLIED (503) and changes nothing.
    for breaker in breakers:
        getattr(breaker, action)(admin_actor())
    return {
        "status": "success",
        "action": action,
        "breakers": {b.name: b.snapshot() for b in breakers},
        "propagation": breaker_registry().propagation(),
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
    return _action("reset", [find_breaker(service)])


@bp.post("/circuit-breakers/reset-all")
@documented("Reset every breaker", tag="monitoring", responses={200: BreakerActionOut}, auth="admin")
@admin_required
def reset_all_breakers() -> dict[str, Any]:
    """Close every breaker."""
    return _action("reset", list(breaker_registry().all().values()))


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
    return _action("force_open", [find_breaker(service)])


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
    return _action("disable", [find_breaker(service)])


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
    return _action("reset", [find_breaker(service)])


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
    find_breaker(body.service)  # only known services: 404 otherwise
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
        f"Fault injection on {body.service}: {body.mode} by {admin_actor()}",
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
        "faults_cleared", f"Fault injection cleared by {admin_actor()}", user_id=current_user.id, removed=removed
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
    find_breaker(service)
    removed = injector.clear(service)
    log_security_event(
        "fault_cleared",
        f"Fault injection on {service} cleared by {admin_actor()}",
        user_id=current_user.id,
        service=service,
        removed=removed,
    )
    return _faults(injector)
