"""Admin views of the alert rules (configure, list, test, rotate, evaluate) and of the SLO error budgets."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_jwt_extended import current_user

from ...log.events import log_security_event
from ..auth.decorators import admin_required
from ..edge.openapi import documented
from ..edge.validation import parse_json
from ..errors import NotFoundError
from ..extensions import db
from ..monitoring.alerts import DELIVER_KIND, budgets, evaluate_rules
from ..monitoring.alerts.delivery import send_test
from ..monitoring.alerts.rules import check_rule, delete_rule, delivery_dict, rotate_secret, rule_dict, save_rule
from ..monitoring.alerts.schemas import AlertRuleRequest
from ..timeutil import utcnow
from .error_monitoring import admin_actor, bp, find_breaker
from .schemas import (
    AlertDeletedOut,
    AlertEvaluationOut,
    AlertRuleOut,
    AlertRulesOut,
    AlertSecretOut,
    AlertTestOut,
    SloBudgetsOut,
)


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
        find_breaker(str(body.params["service"]))  # only known services
    rule, created = save_rule(body)
    log_security_event(
        "alert_rule_configured",
        f"Alert rule {rule.name} {'created' if created else 'changed'} by {admin_actor()}",
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
        "alert_rule_deleted", f"Alert rule {name} deleted by {admin_actor()}", user_id=current_user.id, rule=name
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
        f"Alert rule {rule.name} test-sent by {admin_actor()}",
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
        f"Alert rule {rule.name} signing secret rotated by {admin_actor()}",
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
