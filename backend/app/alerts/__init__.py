"""Alerts and error budgets: rules stored in the database, evaluated by a periodic job, delivered durably.

`init_alerts(app)` counts request outcomes for the SLOs, schedules the `monitoring.alerts` job
every `ALERTS_EVALUATE_SECONDS` (default 60; tests set 1) and lets the error API list firing
alerts as admin notifications. See `engine` (rules), `delivery` (channels) and `slo` (budgets).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from ..jobs import JobContext, register_periodic
from ..jobs.registry import REGISTRY
from .engine import evaluate_all, firing_notifications
from .slo import budgets, init_slo

__all__ = ["budgets", "evaluate_all", "init_alerts"]

JOB_KIND = "monitoring.alerts"
DEFAULT_EVERY_SECONDS = 60.0


def evaluate_alerts(ctx: JobContext) -> dict[str, Any]:
    """The periodic job: evaluate every rule and send due deliveries."""
    return evaluate_all(current_app._get_current_object())  # type: ignore[attr-defined]


if REGISTRY.get(JOB_KIND) is None:
    register_periodic(JOB_KIND, DEFAULT_EVERY_SECONDS, evaluate_alerts, queue="default", max_attempts=1)


def init_alerts(app: Flask) -> None:
    """SLO counting, the evaluation schedule and admin notifications of firing alerts."""
    init_slo(app)
    every = float(app.config.get("ALERTS_EVALUATE_SECONDS", DEFAULT_EVERY_SECONDS))
    REGISTRY.schedule(JOB_KIND, every)  # one schedule per process: the last app built sets it

    def notifications() -> list[dict[str, Any]]:
        with app.app_context():
            return firing_notifications(app)

    app.extensions["alert_notifications"] = notifications
