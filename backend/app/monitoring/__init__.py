"""Monitoring: what the app sees of itself, heard through signals and never imported by the layers below.

errors/ (error events, groups, rollups, retention, seed 004 severity, client reports), alerts/ (rules,
channels, SLO burn rates), inbox/ (the failed-work inbox and its sources), health (live probes),
degradation (what users see), service_faults (configuration faults), metrics (Prometheus), trace (one
request id's story). May import every layer up to jobs; never the HTTP edge or a blueprint.

The package face keeps the error-statistics names its callers import from `backend.app.monitoring`.

Layer: monitoring; may import log, base, errors, resilience, services, jobs (tests/unit/test_layers.py).
"""

from __future__ import annotations

from .errors import EXTENSION, flush_all, flush_error_stats, get_recorder, init_error_stats, record_error

__all__ = ["EXTENSION", "flush_all", "flush_error_stats", "get_recorder", "init_error_stats", "record_error"]
