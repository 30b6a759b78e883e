"""Alert evaluation: each rule's condition, state changes deduplicated per rule, deliveries written durably.

Kinds and their params:
- `error_rate`: errors / requests over `window_seconds` (default 300) at least `threshold` (a ratio),
  once the window holds `min_requests` (default 20) requests (from the error statistics rollups).
  `scope` picks the errors: `server` (default: 5xx and job failures), `client` (4xx) or `all`.
- `code_count`: events with error `code` over `window_seconds` at least `threshold`.
- `breaker_open`: the `service` breaker is open, forced open or half-open (trials still running).
- `dead_letters`: at least `threshold` jobs dead-lettered within `window_seconds`.
- `slo_burn`: the endpoint `group` ("*": any group) burns its error budget at least `factor` times over
  both `long_seconds` and `short_seconds`, once the long window holds `min_requests` (default 0) requests
  (see `alerts.slo`). The SRE workbook's three pairs ship as default rules (migration d41e8a7c5b20).
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
A rule that cannot be evaluated (a bug, a dependency down) is logged to errors.log with its traceback,
counted in the evaluation's `errors` and kept in the rule's `last_error`; the rules after it still run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from ...extensions import db
from ...models import ErrorCodeMinute, ErrorMinute, Job, SloMinute
from ...models.alert import PENDING, AlertDelivery, AlertRule
from ...timeutil import as_utc, iso, utcnow
from ..service_faults import misconfigured_condition
from .delivery import build_payload, deliver_pending
from .slo import burn_rate, objective_for, window_counts

logger = logging.getLogger(__name__)

UNHEALTHY_BREAKER = ("open", "forced_open", "half_open")


@dataclass(frozen=True)
class BurnReading:
    """One endpoint group's burn rates over a rule's two windows, and its traffic over the long one."""

    group: str
    objective: float
    long_rate: float
    short_rate: float
    requests: int


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
        scope = p.get("scope", "server")
        all_errors, server, total = db.session.execute(
            select(
                func.coalesce(func.sum(ErrorMinute.errors), 0),
                func.coalesce(func.sum(ErrorMinute.server_errors), 0),
                func.coalesce(func.sum(ErrorMinute.requests), 0),
            ).where(ErrorMinute.minute >= _since(now, window))
        ).one()
        errors = {"server": server, "client": all_errors - server}.get(scope, all_errors)
        ratio = errors / total if total else 0.0
        firing = total >= int(p.get("min_requests", 20)) and ratio >= float(p["threshold"])
        what = {"server": "server error", "client": "client error"}.get(scope, "error")
        return firing, ratio, f"{what} rate {ratio:.2%} over {int(window)} s ({errors} of {total} requests)"
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
        return _slo_burn(app, p, now)
    if kind == "failed_work":
        return _failed_work(app, p, now)
    raise ValueError(f"unknown alert kind {kind!r}")


def burn_rates(app: Flask, group: str, long_seconds: float, short_seconds: float, now: datetime) -> BurnReading:
    """Read one group's burn rates from `alerts.slo` (the only place the engine touches budget counting)."""
    objective = objective_for(app, group)
    requests, _bad, _not_configured = window_counts(group, long_seconds, now)
    return BurnReading(
        group,
        objective.objective,
        burn_rate(group, objective, long_seconds, now),
        burn_rate(group, objective, short_seconds, now),
        requests,
    )


def _slo_burn(app: Flask, p: dict[str, Any], now: datetime) -> tuple[bool, float | None, str]:
    """Both windows burn at least `factor` (for `group`, or for any group with "*": the worst one reports)."""
    long_s, short_s, factor = float(p["long_seconds"]), float(p["short_seconds"]), float(p["factor"])
    min_requests = int(p.get("min_requests", 0))
    if p["group"] == "*":
        groups = sorted(set(db.session.execute(select(SloMinute.endpoint_group).distinct()).scalars()))
    else:
        groups = [str(p["group"])]
    readings = [burn_rates(app, group, long_s, short_s, now) for group in groups]
    firing = [r for r in readings if r.long_rate >= factor and r.short_rate >= factor and r.requests >= min_requests]
    worst = max(firing or readings, key=lambda r: min(r.long_rate, r.short_rate), default=None)
    if worst is None:
        return False, 0.0, f"no traffic recorded yet (alert at {factor}x)"
    summary = (
        f"{worst.group} burns its {worst.objective:.3%} SLO budget at {worst.long_rate:.1f}x over "
        f"{int(long_s)} s and {worst.short_rate:.1f}x over {int(short_s)} s (alert at {factor}x)"
    )
    if len(firing) > 1:
        summary += f"; also firing: {', '.join(r.group for r in firing if r is not worst)}"
    return bool(firing), worst.long_rate, summary


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
        "last_error": None,
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


def _record_failure(rule_id: int, name: str, exc: Exception, now: datetime) -> str:
    """Log, count and store why a rule could not be evaluated; the others go on."""
    db.session.rollback()
    reason = f"{type(exc).__name__}: {exc}"[:500]
    logger.exception("Alert rule %s could not be evaluated; the other rules go on", name, extra={"alert": name})
    try:
        db.session.execute(
            update(AlertRule)
            .where(AlertRule.id == rule_id)
            .values(last_error=reason, last_evaluated_at=now)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()  # the database itself is failing: the log line and the result still say why
        logger.warning("Alert rule %s: its evaluation error could not be stored", name)
    return reason


def evaluate_rules(app: Flask, now: datetime | None = None) -> dict[str, Any]:
    """Flush this process's SLO counts and evaluate every enabled rule; one rule's failure stops no other."""
    at = now or utcnow()
    counter = app.extensions.get("slo_counter")
    if counter is not None:
        counter.flush()
    from ..errors import flush_error_stats

    flush_error_stats(app)
    events: dict[str, str] = {}
    errors: dict[str, str] = {}
    rule_ids = db.session.execute(select(AlertRule.id, AlertRule.name).where(AlertRule.enabled.is_(True))).all()
    for rule_id, name in rule_ids:
        try:
            event = evaluate_rule(app, rule_id, at)
        except Exception as exc:  # noqa: BLE001 - any rule's bug must not silence the rules after it
            errors[name] = _record_failure(rule_id, name, exc, at)
            continue
        if event is not None:
            events[name] = event
    return {"events": events, "errors": errors}


def evaluate_all(app: Flask, now: datetime | None = None) -> dict[str, Any]:
    """The periodic job: evaluate every rule, then send what is due (each destination on its own)."""
    result = evaluate_rules(app, now)
    result["deliveries"] = deliver_pending(app, utcnow())
    return result


def firing_notifications(app: Flask) -> list[dict[str, Any]]:
    """Firing rules as admin notifications (for the error API)."""
    rows = db.session.execute(
        select(AlertRule).where(AlertRule.state == "firing", AlertRule.enabled.is_(True))
    ).scalars()
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
