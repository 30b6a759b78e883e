"""Alert channels and durable delivery: every message is a row first, sent through its destination's breaker.

Channels: `webhook` (generic JSON with a Slack-compatible `text`), `pagerduty` (Events API v2:
`routing_key`, `event_action` trigger/resolve, one `dedup_key` per rule so PagerDuty groups and
resolves the incident) and `email` (through the email service, which keeps its own outbox).

A delivery is claimed by moving its `next_attempt_at` forward by a lease (one conditional UPDATE
on its attempt count, so two evaluators never send the same row at once), then sent; success marks
it `sent`, a failure sets the next attempt with exponential backoff. A process killed mid-send
loses nothing: the lease passes and the row is due again. After `ALERT_DELIVERY_MAX_ATTEMPTS`
(default 50, about a day of backoff) it is `failed`, kept for an operator, never dropped.

Channels are isolated: each webhook or PagerDuty URL has its own breaker (`alerts:<type>:<hash>`,
see `destinations`) and retries, and each destination is sent to in its own thread, so a receiver
answering 500 or hanging never blocks or delays another. Webhook bodies are signed with the rule's
secret (`X-Oriel-Signature`). A delivery whose rule was disabled meanwhile is `cancelled`, not sent.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import requests
from flask import Flask
from sqlalchemy import select, update

from ...errors import APIError
from ...extensions import db
from ...models.alert import CANCELLED, FAILED, PENDING, SENT, AlertDelivery, AlertRule
from ...resilience.recovery import call_with_recovery
from ...resilience.retry import RetryPolicy, backoff_ceiling
from ...timeutil import iso
from .destinations import SIGNATURE_HEADER, WebhookDestinationError, breaker_name, check_url, signature_header

logger = logging.getLogger(__name__)

SERVICE = "alerts"
LEASE_SECONDS = 60
MAX_PARALLEL = 8  # destinations sent to at once
DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
PD_SEVERITY = {"CRITICAL": "critical", "HIGH": "error", "MEDIUM": "warning", "LOW": "info"}


def build_payload(
    rule: AlertRule, channel: dict[str, Any], event: str, summary: str, value: float | None, at: datetime
) -> dict[str, Any]:
    """The body for one channel."""
    stamp = iso(at)
    details = {"rule": rule.name, "kind": rule.kind, "params": rule.params, "value": value, "event": event}
    if channel["type"] == "pagerduty":
        body: dict[str, Any] = {
            "routing_key": channel.get("routing_key", ""),
            "event_action": "resolve" if event == "resolved" else "trigger",
            # A test opens its own incident, never the rule's real one.
            "dedup_key": f"oriel-alert-{rule.id}" + ("-test" if event == "test" else ""),
        }
        if event != "resolved":
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


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    response = requests.post(url, data=body, headers=headers, timeout=timeout)
    response.raise_for_status()


def _send_http(app: Flask, breaker: str, url: str, body: bytes, headers: dict[str, str], *, retries: int) -> None:
    """One POST through the destination's own breaker, with retries (the URL is checked again first)."""
    check_url(url, allow_private=bool(app.config.get("ALERT_WEBHOOK_ALLOW_PRIVATE", True)))
    timeout = float(app.config.get("ALERT_HTTP_TIMEOUT", 5.0))
    call_with_recovery(
        _post,
        (url, body, {"Content-Type": "application/json", **headers}, timeout),
        {},
        service=breaker,
        operation="deliver",
        max_retries=retries,
        idempotent=True,
        timeout=15,
    )


def encode(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def send(
    app: Flask, channel: dict[str, Any], payload: dict[str, Any], *, secret: str | None, dedup: str, retries: int = 2
) -> str | None:
    """Send one message to one channel; a note when it was handed on rather than delivered (email outbox)."""
    if channel["type"] in ("webhook", "pagerduty"):
        body = encode(payload)
        headers: dict[str, str] = {}
        if channel["type"] == "webhook" and secret:
            headers[SIGNATURE_HEADER] = signature_header(secret, body)
        url = channel.get("url") or DEFAULT_PAGERDUTY_URL
        _send_http(app, breaker_name(channel) or SERVICE, url, body, headers, retries=retries)
        return None
    if channel["type"] == "email":
        from ...services import get_email

        # The email service has its own breaker, recovery and outbox; the dedup key makes a retry send once.
        result = get_email().send(channel["to"], payload["subject"], payload["text"], dedup_key=dedup)
        if result.status != "sent":
            return f"handed to the email outbox ({result.reason or result.status})"
        return None
    raise ValueError(f"unknown channel type {channel['type']!r}")  # the request model accepts three types


# Deterministic (no jitter: one process sends a rule's deliveries): 2, 4, 8 ... seconds, at most an hour.
_DELIVERY_BACKOFF = RetryPolicy(base_delay=1.0, max_delay=3600.0)


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=backoff_ceiling(_DELIVERY_BACKOFF, attempts + 1))


def _deliver_one(app: Flask, delivery_id: int, attempts: int, now: datetime, max_attempts: int) -> str | None:
    """Claim and send one delivery; its outcome (sent, retrying, failed, cancelled) or None if another has it."""
    claimed = db.session.execute(
        update(AlertDelivery)
        .where(AlertDelivery.id == delivery_id, AlertDelivery.attempts == attempts, AlertDelivery.status == PENDING)
        .values(attempts=attempts + 1, next_attempt_at=now + timedelta(seconds=LEASE_SECONDS))
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if not claimed:
        return None  # another evaluator has it
    delivery = db.session.get(AlertDelivery, delivery_id)
    if delivery is None:  # pragma: no cover - deleted with its rule meanwhile
        return None
    db.session.refresh(delivery)
    rule = db.session.get(AlertRule, delivery.rule_id)
    target = breaker_name(delivery.channel) or delivery.channel["type"]
    if rule is None or not rule.enabled:
        delivery.status, delivery.last_error = CANCELLED, "the rule was disabled before this was sent"
        db.session.commit()
        logger.info("Alert delivery %s cancelled: its rule is disabled", delivery.id)
        return CANCELLED
    try:
        note = send(app, delivery.channel, delivery.payload, secret=rule.signing_secret, dedup=f"alert-{delivery.id}")
    except APIError as exc:
        delivery.last_error = f"{exc.code}: {exc.message}"[:500]
        outcome = "retrying"
        refused = isinstance(exc, WebhookDestinationError) and not exc.recoverable  # not a DNS hiccup
        if refused or delivery.attempts >= max_attempts:
            delivery.status, outcome = FAILED, FAILED
            logger.error(
                "Alert delivery %s to %s failed for good after %s attempt(s): %s",
                delivery.id,
                target,
                delivery.attempts,
                exc.code,
                extra={"alert": rule.name, "breaker": target, "error_code": exc.code},
            )
        else:
            delivery.next_attempt_at = now + _backoff(delivery.attempts)
            logger.warning(
                "Alert delivery %s to %s failed (%s); retrying later",
                delivery.id,
                target,
                exc.code,
                extra={"alert": rule.name, "breaker": target, "error_code": exc.code},
            )
        db.session.commit()
        return outcome
    delivery.status = SENT
    delivery.sent_at = now
    delivery.last_error = note
    db.session.commit()
    logger.info("Alert delivery %s (%s) sent to %s", delivery.id, delivery.event, target, extra={"alert": rule.name})
    return SENT


def _deliver_group(app: Flask, rows: list[tuple[int, int]], now: datetime, max_attempts: int) -> list[str | None]:
    with app.app_context():
        return [_deliver_one(app, delivery_id, attempts, now, max_attempts) for delivery_id, attempts in rows]


def deliver_pending(app: Flask, now: datetime, *, limit: int = 50) -> dict[str, int]:
    """Send every due delivery once, each destination in its own thread; counts of each outcome.

    A destination that hangs or fails (its breaker opening) only holds up its own thread: every other
    destination's deliveries go out in parallel, and the next pass retries it with backoff.
    """
    max_attempts = int(app.config.get("ALERT_DELIVERY_MAX_ATTEMPTS", 50))
    due = db.session.execute(
        select(AlertDelivery.id, AlertDelivery.attempts, AlertDelivery.channel)
        .where(AlertDelivery.status == PENDING, AlertDelivery.next_attempt_at <= now)
        .order_by(AlertDelivery.id)
        .limit(limit)
    ).all()
    db.session.commit()  # end the read transaction: SQLite writers in the threads must not wait for it
    groups: dict[str, list[tuple[int, int]]] = {}
    for delivery_id, attempts, channel in due:
        groups.setdefault(breaker_name(channel) or channel["type"], []).append((delivery_id, attempts))
    result = {"sent": 0, "retrying": 0, "failed": 0, "cancelled": 0}
    if not groups:
        return result
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(groups)), thread_name_prefix="alert-delivery") as pool:
        outcomes = pool.map(lambda rows: _deliver_group(app, rows, now, max_attempts), groups.values())
        for outcome in (o for group in outcomes for o in group):
            if outcome is not None:
                result[outcome] += 1
    return result


def send_test(app: Flask, rule: AlertRule, now: datetime) -> list[dict[str, Any]]:
    """Send a test message through every channel of the rule at once (one attempt each, not stored)."""
    summary = f"This is a test of alert rule {rule.name}; nothing is wrong."
    jobs = [
        (i, channel, build_payload(rule, channel, "test", summary, None, now))
        for i, channel in enumerate(rule.channels)
    ]

    def one(item: tuple[int, dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
        index, channel, payload = item
        outcome: dict[str, Any] = {"index": index, "type": channel["type"], "breaker": breaker_name(channel)}
        with app.app_context():
            try:
                # One attempt: the admin waits for the answer, and a test is not worth a retry.
                note = send(
                    app,
                    channel,
                    payload,
                    secret=rule.signing_secret,
                    dedup=f"alert-test-{rule.id}-{now.timestamp()}",
                    retries=0,
                )
            except APIError as exc:
                outcome.update(outcome="failed", error_code=exc.code, error=exc.message)
            else:
                outcome.update(outcome="sent" if note is None else "queued", error_code=None, error=note)
        logger.info("Alert rule %s test via %s: %s", rule.name, channel["type"], outcome["outcome"])
        return outcome

    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(jobs)), thread_name_prefix="alert-test") as pool:
        return list(pool.map(one, jobs))
