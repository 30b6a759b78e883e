"""Observability wiring: health probes, metrics, fault injection and alerts, built in create_app."""

from __future__ import annotations

from flask import Flask

from .monitoring.alerts import init_alerts
from .monitoring.health import init_service_health
from .monitoring.metrics import init_metrics
from .monitoring.service_faults import init_service_faults
from .resilience.faults import init_fault_injection


def init_observability(app: Flask) -> None:
    """Health probes, configuration faults, metrics, fault injection, alerts (after `init_resilience`: they listen)."""
    init_service_health(app)
    init_service_faults(app)
    init_metrics(app)
    init_fault_injection(app)
    init_alerts(app)
