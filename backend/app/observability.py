"""Observability wiring: health probes, metrics, fault injection and alerts, built in create_app."""

from __future__ import annotations

from flask import Flask

from .monitoring.health import init_service_health


def init_observability(app: Flask) -> None:
    """Attach the health prober and call history (after `init_resilience`: they listen to the breakers)."""
    init_service_health(app)
