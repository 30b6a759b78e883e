"""Prometheus metrics, served at `GET /metrics` (the view: api/metrics.py), correct under many gunicorn workers.

Counters are fed by hooks that already exist: a request observer called from the app's one
`after_request` hook (requests by method, endpoint and status, and their durations), the
`error_occurred` signal (error responses by code), a breaker listener (transitions, rejections)
and a recovery listener (outbound calls by outcome, retries, fallbacks served). Values that live
elsewhere are read at scrape time, by the process that answers the scrape: breaker states (from
the breaker store, shared on Redis), queue depth, dead letters and job records by kind and status
(from the database), and the failed-work inbox's size and oldest item's age by kind (a source that
cannot be read is left out, never the scrape).

Several processes: with `PROMETHEUS_MULTIPROC_DIR` set in the environment before the process
starts (prometheus-client decides at import), every worker writes its counters to files there and
a scrape sums them with `MultiProcessCollector`; `gunicorn.conf.py` marks dead workers. The
directory must be emptied before the server starts (the gunicorn config does it in `on_starting`).

`METRICS_TOKEN` (config): when set, a scrape needs `Authorization: Bearer <token>`.
`METRICS_ENABLED` (default True) turns the whole thing off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Request, Response

from ...log.redaction import register_secrets
from ..errors import APIError
from ..resilience.breaker import BreakerListener, CircuitBreaker
from ..resilience.breaker_store import BreakerState
from ..resilience.classifier import classify
from ..resilience.state import RecoveryEvent
from ..signals import error_occurred, request_finished, spans_dropped

logger = logging.getLogger(__name__)

EXTENSION = "metrics"
STATE_VALUES = {
    BreakerState.CLOSED.value: 0,
    BreakerState.HALF_OPEN.value: 1,
    BreakerState.OPEN.value: 2,
    BreakerState.FORCED_OPEN.value: 3,
    BreakerState.DISABLED.value: 4,
}


def multiprocess_dir() -> str | None:
    """The multiprocess directory, when the process was started with one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The app's metric objects (one set per app; in multiprocess mode they write to files)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.multiprocess = multiprocess_dir() is not None
        # Multiprocess: metrics are not registered anywhere; a scrape reads every process's files.
        self.registry = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "oriel_http_requests",
            "HTTP requests by method, endpoint and status",
            ["method", "endpoint", "status"],
            registry=reg,
        )
        self.duration = Histogram(
            "oriel_http_request_duration_seconds",
            "HTTP request duration by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=reg,
        )
        self.errors = Counter("oriel_errors", "Error responses by code and status", ["code", "status"], registry=reg)
        self.transitions = Counter(
            "oriel_circuit_breaker_transitions",
            "Breaker state changes",
            ["service", "from_state", "to_state"],
            registry=reg,
        )
        self.rejections = Counter(
            "oriel_circuit_breaker_rejections", "Calls refused by an open breaker", ["service"], registry=reg
        )
        self.outbound = Counter(
            "oriel_outbound_calls",
            "Guarded outbound calls by outcome",
            ["service", "operation", "outcome"],
            registry=reg,
        )
        self.retries = Counter("oriel_outbound_retries", "Retries of outbound calls", ["service"], registry=reg)
        self.fallbacks = Counter("oriel_fallbacks_served", "Fallbacks that served a call", ["service"], registry=reg)
        self.possible_duplicates = Counter(
            "oriel_email_possible_duplicates",
            "Email sends whose outcome was unknown (reply lost after sending): resent later with the same dedup key",
            # Labelled like every other metric here: in multiprocess mode a label-less counter opens its file when
            # the app is built, so `flask db upgrade` would need PROMETHEUS_MULTIPROC_DIR to exist already.
            ["operation"],
            registry=reg,
        )
        self.spans_dropped = Counter(
            "oriel_trace_spans_dropped", "Spans the tracing exporter dropped, by reason", ["reason"], registry=reg
        )
        self.request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.error_children: dict[tuple[str, int], Any] = {}


class _BreakerMetrics(BreakerListener):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def state_changed(
        self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState, reason: str, actor: str | None
    ) -> None:
        self.metrics.transitions.labels(breaker.name, old.value, new.value).inc()

    def call_rejected(self, breaker: CircuitBreaker, state: BreakerState) -> None:
        self.metrics.rejections.labels(breaker.name).inc()


def _recovery_listener(metrics: Metrics) -> Any:
    def listen(event: RecoveryEvent) -> None:
        metrics.outbound.labels(event.service, event.operation, event.outcome).inc()
        if event.attempts > 1:
            metrics.retries.labels(event.service).inc(event.attempts - 1)
        if event.outcome == "fallback":
            metrics.fallbacks.labels(event.service).inc()
        if event.service == "email" and event.error is not None and classify(event.error).ambiguous:
            # SendGrid may have accepted it: the outbox resends it (never inline), so it may arrive twice.
            metrics.possible_duplicates.labels(event.operation).inc()

    return listen


class _ScrapeTimeCollector:
    """Breaker states, queue depth, dead letters and job records, read when scraped."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        """Yield the gauges; a source that fails is skipped (and logged), never the whole scrape."""
        from prometheus_client.core import GaugeMetricFamily

        states = GaugeMetricFamily(
            "oriel_circuit_breaker_state",
            "Breaker state (0 closed, 1 half-open, 2 open, 3 forced open, 4 disabled)",
            labels=["service"],
        )
        for name, snap in self.app.extensions["breakers"].snapshot().items():
            states.add_metric([name], STATE_VALUES.get(snap["state"], -1))
        yield states
        try:
            yield from self._jobs()
        except Exception:  # a scrape must still answer with what it has when the database is down
            logger.warning("Metrics: could not read the job tables", exc_info=True)
        try:
            yield from self._inbox()
        except Exception:  # the inbox is one more source: never the reason a scrape fails
            logger.warning("Metrics: could not read the failed-work inbox", exc_info=True)

    def _inbox(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        inbox = self.app.extensions.get("inbox")
        if inbox is None:
            return
        with self.app.app_context():
            sizes = inbox.sizes()  # per source: one that fails is logged and left out
        now = time.time()
        items = GaugeMetricFamily("oriel_failed_work_items", "Items in the failed-work inbox by kind", labels=["kind"])
        oldest = GaugeMetricFamily(
            "oriel_failed_work_oldest_age_seconds",
            "Age of the oldest item in the failed-work inbox by kind (0 when empty)",
            labels=["kind"],
        )
        for kind, (count, since) in sizes.items():
            items.add_metric([kind], count)
            oldest.add_metric([kind], max(0.0, now - since.timestamp()) if since is not None else 0.0)
        yield items
        yield oldest

    def _jobs(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        from sqlalchemy import func, select

        from ..extensions import db
        from ..jobs import queue_depth
        from ..models.job import Job

        with self.app.app_context():
            depth = queue_depth()
            by_kind = db.session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
            rows = list(by_kind)
        queue = GaugeMetricFamily("oriel_queue_depth", "Jobs by queue and state", labels=["queue", "state"])
        for name, counts in sorted(depth["queues"].items()):
            for state, value in counts.items():
                queue.add_metric([name, state], value)
        yield queue
        yield GaugeMetricFamily("oriel_dead_letters", "Unarchived dead letters", value=depth["dead"])
        jobs = GaugeMetricFamily("oriel_jobs", "Job records by kind and status (outcomes)", labels=["kind", "status"])
        for kind, status, count in rows:
            jobs.add_metric([kind, status], count)
        yield jobs


def _request_recorder(metrics: Metrics) -> Any:
    children = metrics.request_children

    def record_request(req: Request, response: Response, seconds: float | None) -> None:
        if seconds is None:
            return
        endpoint = req.endpoint or "unmatched"  # bounded label: never the raw path
        key = (req.method, endpoint, response.status_code)
        pair = children.get(key)
        if pair is None:
            # labels() costs a lock and a tuple build per call; the (bounded) children are cached instead.
            pair = (metrics.requests.labels(key[0], endpoint, str(key[2])), metrics.duration.labels(endpoint))
            children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    return record_request


def _on_error(sender: Flask, error: APIError, **_: Any) -> None:
    metrics: Metrics | None = sender.extensions.get(EXTENSION)
    if metrics is not None:
        key = (error.code, error.status_code)
        child = metrics.error_children.get(key)
        if child is None:  # as for requests: codes are a bounded set, labels() is not free
            child = metrics.error_children[key] = metrics.errors.labels(key[0], str(key[1]))
        child.inc()


def _on_spans_dropped(sender: Flask, *, count: int, reason: str, **_: Any) -> None:
    metrics: Metrics | None = sender.extensions.get(EXTENSION)
    if metrics is not None:
        metrics.spans_dropped.labels(reason).inc(count)


def init_metrics(app: Flask) -> Metrics | None:
    """Create the app's metrics and hook them to requests, errors, breakers and recovery (the view: api/metrics.py)."""
    if not app.config.get("METRICS_ENABLED", True):
        return None
    register_secrets([app.config.get("METRICS_TOKEN")])
    metrics = Metrics()
    app.extensions[EXTENSION] = metrics
    app.extensions["metrics_collector"] = _ScrapeTimeCollector(app)
    request_finished.connect(app, _request_recorder(metrics))
    error_occurred.connect(_on_error, sender=app, weak=False)
    spans_dropped.connect(_on_spans_dropped, sender=app, weak=False)
    app.extensions["breakers"].add_listener(_BreakerMetrics(metrics))
    app.extensions["resilience"].listeners.append(_recovery_listener(metrics))
    return metrics
