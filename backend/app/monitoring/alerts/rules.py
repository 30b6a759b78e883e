"""Alert rules as stored and shown by the admin API."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import delete, select, update

from ...errors import ValidationError
from ...extensions import db
from ...models.alert import CANCELLED, PENDING, AlertDelivery, AlertRule
from ...timeutil import iso, utcnow
from .destinations import breaker_name, check_url, new_secret
from .params import param_errors
from .schemas import AlertRuleRequest


def check_rule(app: Flask, body: AlertRuleRequest) -> None:
    """Refuse (422, per field) parameters the evaluator could not use and webhooks it may not call."""
    errors = param_errors(body.kind, body.params)
    if errors:
        raise ValidationError(
            f"The parameters for {body.kind} are not valid.", details={"fields": errors, "kind": body.kind}
        )
    allow_private = bool(app.config.get("ALERT_WEBHOOK_ALLOW_PRIVATE", True))
    for index, channel in enumerate(body.channels):
        url = getattr(channel, "url", None)
        if url:
            check_url(url, allow_private=allow_private, field=f"channels.{index}.url")


def _cancel_pending(rule_id: int) -> int:
    return db.session.execute(
        update(AlertDelivery)
        .where(AlertDelivery.rule_id == rule_id, AlertDelivery.status == PENDING)
        .values(status=CANCELLED, last_error="the rule was disabled or deleted before this was sent")
        .execution_options(synchronize_session=False)
    ).rowcount


def save_rule(body: AlertRuleRequest) -> tuple[AlertRule, bool]:
    """Create the rule, or replace the one with the same name (keeping its state); (rule, created)."""
    now = utcnow()
    rule = db.session.execute(select(AlertRule).where(AlertRule.name == body.name)).scalar_one_or_none()
    created = rule is None
    if rule is None:
        rule = AlertRule(
            name=body.name, state="ok", notified=False, version=0, created_at=now, signing_secret=new_secret()
        )
        db.session.add(rule)
    elif rule.enabled and not body.enabled:
        # Disabled: nothing more goes out, and it no longer counts as firing.
        _cancel_pending(rule.id)
        rule.state, rule.state_since, rule.notified = "ok", now, False
    rule.kind = body.kind
    rule.params = dict(body.params)
    rule.channels = [channel.model_dump(exclude_none=True) for channel in body.channels]
    rule.severity = body.severity
    rule.cooldown_seconds = body.cooldown_seconds
    rule.enabled = body.enabled
    rule.updated_at = now
    rule.version = (rule.version or 0) + 1
    db.session.commit()
    return rule, created


def delete_rule(rule: AlertRule) -> int:
    """Delete the rule and its deliveries (pending ones never go out); how many deliveries went with it."""
    removed = db.session.execute(
        delete(AlertDelivery).where(AlertDelivery.rule_id == rule.id).execution_options(synchronize_session=False)
    ).rowcount
    db.session.delete(rule)
    db.session.commit()
    return int(removed or 0)


def rotate_secret(rule: AlertRule) -> str:
    """A new signing secret for the rule (the old one stops verifying at once)."""
    rule.signing_secret = new_secret()
    rule.updated_at = utcnow()
    db.session.commit()
    return rule.signing_secret


def _channel_view(channel: dict[str, Any]) -> dict[str, Any]:
    # A PagerDuty routing key is a credential: shown masked.
    if channel.get("routing_key"):
        return {**channel, "routing_key": channel["routing_key"][:4] + "..."}
    return dict(channel)


def rule_dict(rule: AlertRule) -> dict[str, Any]:
    """The admin view of a rule."""
    return {
        "id": rule.id,
        "name": rule.name,
        "kind": rule.kind,
        "params": rule.params,
        "channels": [_channel_view(c) for c in rule.channels],
        "severity": rule.severity,
        "cooldown_seconds": rule.cooldown_seconds,
        "enabled": rule.enabled,
        "state": rule.state,
        "state_since": iso(rule.state_since),
        "last_value": rule.last_value,
        "last_evaluated_at": iso(rule.last_evaluated_at),
        "last_notified_at": iso(rule.last_notified_at),
        "last_error": rule.last_error,
    }


def delivery_dict(delivery: AlertDelivery) -> dict[str, Any]:
    """The admin view of a delivery."""
    return {
        "id": delivery.id,
        "rule_id": delivery.rule_id,
        "event": delivery.event,
        "channel_type": delivery.channel.get("type", "?"),
        "breaker": breaker_name(delivery.channel),
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_error": delivery.last_error,
        "created_at": iso(delivery.created_at),
        "sent_at": iso(delivery.sent_at),
    }
