"""Alert channels and durable delivery: every message is a row first, sent through `with_error_recovery`.

Channels: `webhook` (generic JSON with a Slack-compatible `text`), `pagerduty` (Events API v2:
`routing_key`, `event_action` trigger/resolve, one `dedup_key` per rule so PagerDuty groups and
resolves the incident) and `email` (through the email service, which keeps its own outbox).

A delivery is claimed by moving its `next_attempt_at` forward by a lease (one conditional UPDATE
on its attempt count, so two evaluators never send the same row at once), then sent; success marks
it `sent`, a failure sets the next attempt with exponential backoff. A process killed mid-send
loses nothing: the lease passes and the row is due again. After `ALERT_DELIVERY_MAX_ATTEMPTS`
(default 50, about a day of backoff) it is `failed`, kept for an operator, never dropped.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import requests
from flask import Flask
from sqlalchemy import select, update

from ..errors import APIError
from ..extensions import db
from ..models.alert import FAILED, PENDING, SENT, AlertDelivery, AlertRule
from ..utils.error_recovery import with_error_recovery

logger = logging.getLogger(__name__)

SERVICE = "alerts"
LEASE_SECONDS = 60
DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
PD_SEVERITY = {"CRITICAL": "critical", "HIGH": "error", "MEDIUM": "warning", "LOW": "info"}


def build_payload(
    rule: AlertRule, channel: dict[str, Any], event: str, summary: str, value: float | None, at: datetime
) -> dict[str, Any]:
    """The body for one channel."""
    stamp = at.isoformat().replace("+00:00", "Z")
    details = {"rule": rule.name, "kind": rule.kind, "params": rule.params, "value": value, "event": event}
    if channel["type"] == "pagerduty":
        body: dict[str, Any] = {
            "routing_key": channel.get("routing_key", ""),
            "event_action": "trigger" if event == "firing" else "resolve",
            "dedup_key": f"oriel-alert-{rule.id}",
        }
        if event == "firing":
            body["payload"] = {
                "summary": summary[:1024],
                "source": "oriel-signal-fx",
                "severity": PD_SEVERITY.get(rule.severity, "error"),
                "timestamp": stamp,
                "custom_details": details,
            }
        return body
    if channel["type"] == "email":
        return {"subject": f"[{event.upper()}] {rule.name}", "text": f"{summary}\n\nAt {stamp}.\n"}
    return {
        "text": f"[{event.upper()}] {rule.name}: {summary}",
        "event": event,
        "rule": rule.name,
        "severity": rule.severity,
        "summary": summary,
        "value": value,
        "timestamp": stamp,
        "details": details,
    }


def _post(url: str, body: dict[str, Any], timeout: float) -> None:
    response = requests.post(url, json=body, timeout=timeout)
    response.raise_for_status()


@with_error_recovery(SERVICE, "deliver", max_retries=2, idempotent=True, timeout=15)
def _send_http(url: str, body: dict[str, Any], timeout: float) -> None:
    _post(url, body, timeout)


def _send(app: Flask, delivery: AlertDelivery) -> str | None:
    """Send one delivery; a note when it was handed on rather than delivered (email queued in the outbox)."""
    channel = delivery.channel
    timeout = float(app.config.get("ALERT_HTTP_TIMEOUT", 5.0))
    if channel["type"] == "webhook":
        _send_http(channel["url"], delivery.payload, timeout)
    elif channel["type"] == "pagerduty":
        _send_http(channel.get("url") or DEFAULT_PAGERDUTY_URL, delivery.payload, timeout)
    elif channel["type"] == "email":
        from ..services import get_email

        # The email service has its own recovery and outbox; the dedup key makes a retry send once.
        result = get_email().send(
            channel["to"], delivery.payload["subject"], delivery.payload["text"], dedup_key=f"alert-{delivery.id}"
        )
        if result.status != "sent":
            return f"handed to the email outbox ({result.reason or result.status})"
    else:  # pragma: no cover - the request model only accepts the three types
        raise ValueError(f"unknown channel type {channel['type']!r}")
    return None


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 2 ** min(attempts, 12)))


def deliver_pending(app: Flask, now: datetime, *, limit: int = 50) -> dict[str, int]:
    """Send every due delivery once; counts of sent, retrying and failed."""
    max_attempts = int(app.config.get("ALERT_DELIVERY_MAX_ATTEMPTS", 50))
    due = db.session.execute(
        select(AlertDelivery.id, AlertDelivery.attempts)
        .where(AlertDelivery.status == PENDING, AlertDelivery.next_attempt_at <= now)
        .order_by(AlertDelivery.id)
        .limit(limit)
    ).all()
    result = {"sent": 0, "retrying": 0, "failed": 0}
    for delivery_id, attempts in due:
        claimed = db.session.execute(
            update(AlertDelivery)
            .where(AlertDelivery.id == delivery_id, AlertDelivery.attempts == attempts)
            .values(attempts=attempts + 1, next_attempt_at=now + timedelta(seconds=LEASE_SECONDS))
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
        if not claimed:
            continue  # another evaluator has it
        delivery = db.session.get(AlertDelivery, delivery_id)
        if delivery is None:  # pragma: no cover - deleted with its rule meanwhile
            continue
        db.session.refresh(delivery)
        try:
            note = _send(app, delivery)
        except APIError as exc:
            delivery.last_error = f"{exc.code}: {exc.message}"[:500]
            if delivery.attempts >= max_attempts:
                delivery.status = FAILED
                result["failed"] += 1
                logger.error("Alert delivery %s failed for good after %s attempts", delivery.id, delivery.attempts)
            else:
                delivery.next_attempt_at = now + _backoff(delivery.attempts)
                result["retrying"] += 1
                logger.warning("Alert delivery %s failed (%s); retrying later", delivery.id, exc.code)
        else:
            delivery.status = SENT
            delivery.sent_at = now
            delivery.last_error = note
            result["sent"] += 1
        db.session.commit()
    return result
