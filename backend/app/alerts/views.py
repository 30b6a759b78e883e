"""Alert rules as stored and shown by the admin API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from ..extensions import db
from ..jobs.records import iso
from ..models.alert import AlertDelivery, AlertRule
from ..schemas import AlertRuleRequest


def save_rule(body: AlertRuleRequest) -> tuple[AlertRule, bool]:
    """Create the rule, or replace the one with the same name (keeping its state); (rule, created)."""
    now = datetime.now(UTC)
    rule = db.session.execute(select(AlertRule).where(AlertRule.name == body.name)).scalar_one_or_none()
    created = rule is None
    if rule is None:
        rule = AlertRule(name=body.name, state="ok", notified=False, version=0, created_at=now)
        db.session.add(rule)
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
    }


def delivery_dict(delivery: AlertDelivery) -> dict[str, Any]:
    """The admin view of a delivery."""
    return {
        "id": delivery.id,
        "rule_id": delivery.rule_id,
        "event": delivery.event,
        "channel_type": delivery.channel.get("type", "?"),
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_error": delivery.last_error,
        "created_at": iso(delivery.created_at),
        "sent_at": iso(delivery.sent_at),
    }
