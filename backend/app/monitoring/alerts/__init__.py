"""Alerts and error budgets: rules stored in the database, evaluated by a periodic job, delivered durably.

`init_alerts(app)` counts request outcomes for the SLOs, schedules the `monitoring.alerts` job
every `ALERTS_EVALUATE_SECONDS` (default 60; tests set 1) and lets the error API list firing
alerts as admin notifications. See `engine` (rules), `delivery` (channels) and `slo` (budgets).

Layer: monitoring; may import log, base, errors, resilience, services, jobs (tests/unit/test_layers.py).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from ...jobs import JobContext, register_periodic
from ...jobs.registry import REGISTRY, job_kind, schedule_for_app
from ...timeutil import utcnow
from .delivery import deliver_pending
from .engine import evaluate_all, evaluate_rules, firing_notifications
from .slo import budgets, init_slo

__all__ = ["budgets", "evaluate_all", "evaluate_rules", "init_alerts"]

JOB_KIND = "monitoring.alerts"
DELIVER_KIND = "monitoring.alerts.deliver"
DEFAULT_EVERY_SECONDS = 60.0


def evaluate_alerts(ctx: JobContext) -> dict[str, Any]:
    """The periodic job: evaluate every rule and send due deliveries."""
    result = evaluate_all(current_app._get_current_object())  # type: ignore[attr-defined]
    if not result["events"] and not result.get("errors") and not any(result["deliveries"].values()):
        ctx.nothing_to_do()
    return result


def deliver_alerts(ctx: JobContext) -> dict[str, int]:
    """Send the deliveries an admin's evaluation wrote (so the request never waits for a channel)."""
    return deliver_pending(current_app._get_current_object(), utcnow())  # type: ignore[attr-defined]


if REGISTRY.get(JOB_KIND) is None:
    register_periodic(JOB_KIND, DEFAULT_EVERY_SECONDS, evaluate_alerts, queue="default", max_attempts=1)
if REGISTRY.get(DELIVER_KIND) is None:
    # One attempt: a delivery that fails keeps its own backoff in its row, and the periodic job sends it then.
    job_kind(DELIVER_KIND, queue="default", max_attempts=1, dead_letter=False)(deliver_alerts)


def init_alerts(app: Flask) -> None:
    """SLO counting, the evaluation schedule and admin notifications of firing alerts."""
    init_slo(app)
    every = float(app.config.get("ALERTS_EVALUATE_SECONDS", DEFAULT_EVERY_SECONDS))
    schedule_for_app(app, JOB_KIND, every)  # this app's interval; another app of the process keeps its own

    def notifications() -> list[dict[str, Any]]:
        with app.app_context():
            return firing_notifications(app)

    app.extensions["alert_notifications"] = notifications
