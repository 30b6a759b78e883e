"""Alert evaluation: each rule's condition, state changes deduplicated per rule, deliveries written durably.

Kinds and their params:
- `error_rate`: errors / requests over `window_seconds` (default 300) at least `threshold` (a ratio),
  once the window holds `min_requests` (default 20) requests (from the error statistics rollups).
- `code_count`: events with error `code` over `window_seconds` at least `threshold`.
- `breaker_open`: the `service` breaker is open, forced open or half-open (trials still running).
- `dead_letters`: at least `threshold` jobs dead-lettered within `window_seconds`.
- `slo_burn`: the endpoint `group` burns its error budget at least `factor` times over both
  `long_seconds` and `short_seconds` (see `alerts.slo`).
- `failed_work`: the failed-work inbox holds at least `threshold` (default 1) items (of inbox `kind`,
  when given) that failed more than `older_than_minutes` ago; it resolves once they are retried,
  discarded or fewer (see `monitoring.inbox`).
- `service_misconfigured`: a service refuses this server's credentials or permissions: an uncleared
  `service_faults` row exists, recorded by any process; resolves when the operation succeeds again or
  an admin resets the breaker. Optional `service` (e.g. "storage"); without it, any service.
  The value is the number of open faults (see `monitoring.service_faults`).

A rule moving ok → firing announces itself once (unless it was announced less than
`cooldown_seconds` ago: flapping is not paged twice); while it keeps firing nothing more is sent;
when the condition clears, a "resolved" message follows, if the firing was announced. State
changes use an optimistic version check, so two evaluators running at once send one message.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import func, select, update

from ..extensions import db
from ..jobs.records import as_utc, iso
from ..models import ErrorCodeMinute, ErrorMinute, Job
from ..models.alert import PENDING, AlertDelivery, AlertRule
from ..monitoring.service_faults import misconfigured_condition
from .delivery import build_payload, deliver_pending
from .slo import burn_rate, objective_for

logger = logging.getLogger(__name__)

UNHEALTHY_BREAKER = ("open", "forced_open", "half_open")


def _since(now: datetime, seconds: float) -> datetime:
    return (now - timedelta(seconds=float(seconds))).replace(second=0, microsecond=0)


def evaluate_condition(app: Flask, rule: AlertRule, now: datetime) -> tuple[bool, float | None, str]:
    """(firing, measured value, one-line summary) of a rule right now."""
    p = rule.params or {}
    kind = rule.kind
    if kind == "service_misconfigured":
        return misconfigured_condition(app, p)
    if kind == "breaker_open":
        snap = app.extensions["breakers"].get(p["service"]).snapshot()
        firing = snap["state"] in UNHEALTHY_BREAKER
        return firing, snap["failure_rate"], f"circuit breaker {p['service']} is {snap['state']}"
    if kind == "error_rate":
        window = float(p.get("window_seconds", 300))
        errors, total = db.session.execute(
            select(
                func.coalesce(func.sum(ErrorMinute.errors), 0), func.coalesce(func.sum(ErrorMinute.requests), 0)
            ).where(ErrorMinute.minute >= _since(now, window))
        ).one()
        ratio = errors / total if total else 0.0
        firing = total >= int(p.get("min_requests", 20)) and ratio >= float(p["threshold"])
        return firing, ratio, f"error rate {ratio:.2%} over {int(window)} s ({errors} of {total} requests)"
    if kind == "code_count":
        window = float(p.get("window_seconds", 300))
        count = db.session.execute(
            select(func.coalesce(func.sum(ErrorCodeMinute.count), 0)).where(
                ErrorCodeMinute.code == p["code"], ErrorCodeMinute.minute >= _since(now, window)
            )
        ).scalar_one()
        return count >= int(p["threshold"]), float(count), f"{count} x {p['code']} in {int(window)} s"
    if kind == "dead_letters":
        window = float(p.get("window_seconds", 3600))
        count = db.session.execute(
            select(func.count())
            .select_from(Job)
            .where(Job.status == "dead", Job.dead_at >= now - timedelta(seconds=window))
        ).scalar_one()
        return count >= int(p.get("threshold", 1)), float(count), f"{count} job(s) dead-lettered in {int(window)} s"
    if kind == "slo_burn":
        group = p["group"]
        objective = objective_for(app, group)
        long_rate = burn_rate(group, objective, float(p["long_seconds"]), now)
        short_rate = burn_rate(group, objective, float(p["short_seconds"]), now)
        factor = float(p["factor"])
        firing = long_rate >= factor and short_rate >= factor
        summary = (
            f"{group} burns its {objective.objective:.3%} SLO budget at {long_rate:.1f}x over "
            f"{int(p['long_seconds'])} s and {short_rate:.1f}x over {int(p['short_seconds'])} s (alert at {factor}x)"
        )
        return firing, long_rate, summary
    if kind == "failed_work":
        return _failed_work(app, p, now)
    raise ValueError(f"unknown alert kind {kind!r}")


def _failed_work(app: Flask, p: dict[str, Any], now: datetime) -> tuple[bool, float | None, str]:
    """Items in the failed-work inbox older than `older_than_minutes` (of one `kind`, when given)."""
    minutes = float(p["older_than_minutes"])
    threshold = int(p.get("threshold", 1))
    only = p.get("kind") or None
    inbox = app.extensions["inbox"]
    before = now - timedelta(minutes=minutes)
    if only is None:
        count = sum(inbox.counts(failed_before=before).values())
    else:
        source = inbox.source(only)
        count = source.count(failed_before=before) if source is not None else 0
    what = f"{only} item(s)" if only else "item(s)"
    summary = f"{count} failed-work {what} older than {minutes:g} min in the inbox (alert at {threshold})"
    return count >= threshold, float(count), summary


def _transition(rule: AlertRule, firing: bool, now: datetime) -> str | None:
    """The message to send for this evaluation, if any ("firing" or "resolved"), updating the rule."""
    if firing and rule.state != "firing":
        rule.state, rule.state_since = "firing", now
        last = as_utc(rule.last_notified_at)
        if last is not None and (now - last).total_seconds() < rule.cooldown_seconds:
            rule.notified = False  # flapping inside the cooldown: recorded, not paged again
            return None
        rule.notified = True
        rule.last_notified_at = now
        return "firing"
    if not firing and rule.state == "firing":
        announced = rule.notified
        rule.state, rule.state_since, rule.notified = "ok", now, False
        return "resolved" if announced else None
    return None


def evaluate_rule(app: Flask, rule_id: int, now: datetime) -> str | None:
    """Evaluate one rule and record its change (and deliveries) atomically; the message event, if any."""
    rule = db.session.get(AlertRule, rule_id)
    if rule is None or not rule.enabled:
        return None
    firing, value, summary = evaluate_condition(app, rule, now)
    version = rule.version
    event = _transition(rule, firing, now)
    values: dict[str, Any] = {
        "state": rule.state,
        "state_since": rule.state_since,
        "notified": rule.notified,
        "last_notified_at": rule.last_notified_at,
        "last_value": value,
        "last_evaluated_at": now,
        "version": version + 1,
    }
    db.session.expire(rule)  # the UPDATE below is the only write; the ORM copy must not flush
    won = db.session.execute(
        update(AlertRule)
        .where(AlertRule.id == rule_id, AlertRule.version == version)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not won:
        db.session.rollback()  # another evaluator changed the rule first: it owns this transition
        return None
    if event is not None:
        rule = db.session.get(AlertRule, rule_id)
        assert rule is not None
        for channel in rule.channels or []:
            db.session.add(
                AlertDelivery(
                    rule_id=rule.id,
                    event=event,
                    channel=channel,
                    payload=build_payload(rule, channel, event, summary, value, now),
                    status=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        logger.warning("Alert %s: %s (%s)", rule.name, event, summary, extra={"alert": rule.name, "event": event})
    db.session.commit()
    return event


def evaluate_all(app: Flask, now: datetime | None = None) -> dict[str, Any]:
    """Flush this process's SLO counts, evaluate every enabled rule, then send what is due."""
    at = now or datetime.now(UTC)
    counter = app.extensions.get("slo_counter")
    if counter is not None:
        counter.flush()
    from ..monitoring import flush_error_stats

    flush_error_stats(app)
    events: dict[str, str] = {}
    rule_ids = db.session.execute(select(AlertRule.id, AlertRule.name).where(AlertRule.enabled.is_(True))).all()
    for rule_id, name in rule_ids:
        event = evaluate_rule(app, rule_id, at)
        if event is not None:
            events[name] = event
    deliveries = deliver_pending(app, datetime.now(UTC))
    return {"events": events, "deliveries": deliveries}


def firing_notifications(app: Flask) -> list[dict[str, Any]]:
    """Firing rules as admin notifications (for the error API)."""
    rows = db.session.execute(select(AlertRule).where(AlertRule.state == "firing")).scalars()
    out = []
    for rule in rows:
        out.append(
            {
                "id": f"alert:{rule.id}",
                "kind": "system",
                "severity": rule.severity,
                "code": "ALERT_FIRING",
                "title": f"Alert {rule.name} is firing",
                "action": "Open the monitoring dashboard; the alert resolves by itself when the condition clears.",
                "occurred_at": iso(rule.state_since),
                "request_id": None,
            }
        )
    return out
