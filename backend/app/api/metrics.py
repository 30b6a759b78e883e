"""`GET /metrics`: the Prometheus scrape of monitoring/metrics.py, behind METRICS_TOKEN."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request

from ..edge.openapi import documented
from ..edge.rate_limits import never_rate_limited
from ..errors import AuthenticationError
from ..monitoring.metrics import EXTENSION, Metrics

#: Registered by create_app when METRICS_ENABLED (its own blueprint: the scrape lives at the root, not under /api).
bp = Blueprint("metrics", __name__)


class MetricsTokenError(AuthenticationError):
    """A valid metrics token is required to scrape /metrics."""

    code = "METRICS_TOKEN_REQUIRED"


def _check_token() -> None:
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), str(token).encode()):
        raise MetricsTokenError("A valid metrics token is required.")


@bp.get("/metrics")
@never_rate_limited  # one scraper polls it; METRICS_TOKEN guards it
@documented(
    "Prometheus metrics (text format); a bearer token when METRICS_TOKEN is set",
    tag="health",
    responses={200: None},
    errors=(401,),
    headers=(("Authorization", "Bearer <METRICS_TOKEN>, when the server sets one"),),
)
def metrics_view() -> Response:
    """Every process's counters (summed in multiprocess mode) and the scrape-time gauges."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess as mp

    _check_token()
    metrics: Metrics = current_app.extensions[EXTENSION]
    if metrics.multiprocess:
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
    else:
        registry = metrics.registry
    output = generate_latest(registry)
    collector = current_app.extensions["metrics_collector"]
    extra = CollectorRegistry(auto_describe=False)
    extra.register(collector)
    output += generate_latest(extra)
    return Response(output, mimetype=CONTENT_TYPE_LATEST.split(";")[0], headers={"Content-Type": CONTENT_TYPE_LATEST})
