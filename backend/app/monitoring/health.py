"""Dependency health for the admin: live probes run in parallel under one short deadline.

`service_health(app)` answers "what is broken, since when" in one call: for every dependency
(database, Redis, storage, email, Stripe, rendering, the job queue) whether it is configured, its
breaker state, the last success and failure this process saw through the breaker, and a live
probe. Probes run on a small per-app thread pool; the endpoint waits for them together at most
`HEALTH_PROBE_DEADLINE` seconds (default 2). A probe still running then is reported as "timeout"
and keeps its thread: the next request does not start a second probe of the same dependency
while the first hangs, so a dead service cannot pile up threads.

Service adapters are found in `app.extensions` under their service name (or `<name>_service`);
an adapter with a `probe()` method is probed live, one with only `status()` is asked for it.
A service with neither an adapter nor configuration is "not_configured"; configured but with no
adapter to ask, "unknown". Nothing is guessed.

A service that refuses this server's credentials or permissions is "misconfigured", not "error": when a
live probe's failure classifies so (a 401/403 from the bucket, SendGrid or Stripe), or when any process
recorded a configuration fault for one of its operations (`service_faults`: an upload refused with 403
while the probe's read still passes). The probe then carries the real error (code, HTTP status, reason,
operation, since, last seen), the entry lists the service's open faults, `service_faults` lists those of
every service, and the overall status is not "ok" while one is open.

The probes themselves, one per dependency, are in `probes.py`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from typing import Any

from flask import Flask

from ..resilience.breaker import BreakerListener, CircuitBreaker
from ..resilience.breaker_store import Outcome
from ..timeutil import epoch_iso, iso, utcnow
from .probes import Probe, ProbeResult, dependency_probes, find_adapter, is_configured, timed
from .service_faults import describe, get_monitor

EXTENSION = "service_health"
DEFAULT_DEADLINE = 2.0


class CallHistory(BreakerListener):
    """Last success and last failure of each breaker's calls, as seen by this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, dict[str, float]] = {}

    def call_recorded(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
        """Remember when the call ended and how."""
        key = "success" if outcome is Outcome.SUCCESS else "failure"
        with self._lock:
            self._last.setdefault(breaker.name, {})[key] = self._clock()

    def last(self, service: str) -> dict[str, str | None]:
        """ISO times of the last success and failure of `service` (None when never seen)."""
        with self._lock:
            seen = dict(self._last.get(service, {}))
        return {"last_success": epoch_iso(seen.get("success")), "last_failure": epoch_iso(seen.get("failure"))}


class HealthProber:
    """Runs probes on a bounded pool; never two at once for one dependency."""

    def __init__(self, workers: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="health-probe")
        self._inflight: dict[str, Future[ProbeResult]] = {}
        self._lock = threading.Lock()

    def run(self, probes: dict[str, Probe], deadline: float) -> dict[str, ProbeResult]:
        """Every probe's result within `deadline` seconds in total ("timeout" for the late ones)."""
        futures: dict[str, Future[ProbeResult]] = {}
        with self._lock:
            for name, probe in probes.items():
                running = self._inflight.get(name)
                if running is not None and not running.done():
                    futures[name] = running  # still hung from an earlier request: wait on it, do not pile up
                    continue
                future = self._pool.submit(timed, probe)
                self._inflight[name] = future
                futures[name] = future
        wait_futures(list(futures.values()), timeout=deadline)
        results: dict[str, ProbeResult] = {}
        for name, future in futures.items():
            if future.done():
                try:
                    results[name] = future.result(timeout=0)
                except FutureTimeout:  # pragma: no cover - done() said otherwise
                    results[name] = ProbeResult("timeout")
            else:
                results[name] = ProbeResult("timeout", round(deadline * 1000, 1), f"no answer within {deadline} s")
        return results

    def shutdown(self) -> None:
        """Stop the pool without waiting for hung probes."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def init_service_health(app: Flask) -> CallHistory:
    """Attach the call history listener to the app's breakers and create the prober."""
    history = CallHistory()
    app.extensions["breakers"].add_listener(history)
    app.extensions[EXTENSION] = {"history": history, "prober": HealthProber()}
    return history


BACKLOG_KEYS = (
    "pending_storage_sync",
    "failed_storage_sync",
    "email_outbox",
    "failed_email",
    "email_possible_duplicates",
)


def _count(app: Flask, model_name: str, statuses: tuple[str, ...]) -> int | None:
    from sqlalchemy import func, select

    from .. import models
    from ..extensions import db

    model = getattr(models, model_name, None)
    if model is None:
        return None
    with app.app_context():
        stmt = select(func.count()).select_from(model).where(model.status.in_(statuses))
        return int(db.session.execute(stmt).scalar_one())


def _possible_duplicates(app: Flask) -> int | None:
    with app.app_context():
        adapter = find_adapter(app, "email")
        return adapter.possible_duplicates() if adapter is not None else None


def _faults_probe(app: Flask) -> ProbeResult:
    """Open configuration faults, recorded by any process (this one's pending refusals written first)."""
    monitor = get_monitor(app)
    return ProbeResult("ok", extra={"faults": monitor.open_faults() if monitor is not None else []})


def _misconfigured_view(probe: ProbeResult, fault: dict[str, Any]) -> dict[str, Any]:
    """The probe as a recorded fault shows it: misconfigured with the real error, whatever the live check found.

    A read-only probe may pass where an upload is refused (a missing write permission); `live_status` keeps it.
    """
    view = probe.as_dict()
    error = {key: fault[key] for key in ("code", "http_status", "reason", "operation", "since", "last_seen", "count")}
    view.update(status="misconfigured", live_status=probe.status, detail=describe(fault), error=error)
    return view


def _backlog(app: Flask) -> ProbeResult:
    # Waiting work (pending files, queued emails) and work that needs a human (failed: the inbox), apart.
    counts = {
        "pending_storage_sync": _count(app, "PendingSync", ("pending",)),
        "failed_storage_sync": _count(app, "PendingSync", ("failed",)),
        "email_outbox": _count(app, "EmailOutbox", ("queued", "sending")),
        "failed_email": _count(app, "EmailOutbox", ("failed",)),
        "email_possible_duplicates": _possible_duplicates(app),
    }
    return ProbeResult("ok", extra=counts)


def service_health(app: Flask) -> dict[str, Any]:
    """The full dependency report of the admin health endpoint (see the module docstring)."""
    from ...log.setup import sink_status

    state = app.extensions[EXTENSION]
    history: CallHistory = state["history"]
    prober: HealthProber = state["prober"]
    deadline = float(app.config.get("HEALTH_PROBE_DEADLINE", DEFAULT_DEADLINE))
    probes, fixed = dependency_probes(app, deadline)
    probes["_backlog"] = lambda: _backlog(app)
    probes["_faults"] = lambda: _faults_probe(app)
    started = time.perf_counter()
    results = {**prober.run(probes, deadline), **fixed}
    breakers = app.extensions["breakers"]
    snapshots = breakers.snapshot()
    read = results["_faults"]
    faults: list[dict[str, Any]] | None = (read.extra or {}).get("faults") if read.status == "ok" else None
    services: dict[str, Any] = {}
    for name in ("database", "redis", "storage", "email", "stripe", "rendering", "queue"):
        probe = results[name]
        own = [fault for fault in faults or () if fault["service"] == name]
        entry: dict[str, Any] = {
            "configured": is_configured(app, name),
            "probe": _misconfigured_view(probe, own[0]) if own else probe.as_dict(),
            "breaker": _breaker_view(snapshots.get(name)),
            "faults": own,
            **history.last(name),
        }
        services[name] = entry
    backlog = results["_backlog"]
    queue = services["queue"]["probe"]
    overall = _overall(services, faults)
    return {
        "status": overall,
        "timestamp": iso(utcnow()),
        "deadline_seconds": deadline,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        "services": services,
        "queue": {
            "depth": queue.get("depth"),
            "dead_letters": queue.get("dead_letters"),
            "workers_alive": queue.get("workers_alive"),
            "heartbeat_age_seconds": queue.get("heartbeat_age_seconds"),
        },
        "backlog": {"status": backlog.status, **{key: (backlog.extra or {}).get(key) for key in BACKLOG_KEYS}},
        "logs": sink_status(),
        "breaker_storage": breakers.storage,
        "service_faults": faults,  # every open configuration fault, of any service; None when unreadable
    }


def _breaker_view(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    keys = ("state", "failure_rate", "calls_in_window", "failures_in_window", "retry_after", "storage")
    view = {key: snapshot.get(key) for key in keys}
    view["opened_at"] = epoch_iso(snapshot.get("opened_at"))
    return view


UNHEALTHY_PROBES = ("error", "timeout", "degraded", "misconfigured")
UNHEALTHY_BREAKERS = ("open", "forced_open", "half_open")


def _overall(services: dict[str, Any], faults: list[dict[str, Any]] | None) -> str:
    if services["database"]["probe"]["status"] != "ok":
        return "down"
    if faults:
        return "degraded"  # a service refuses our credentials: what needs it cannot work until an operator acts
    for entry in services.values():
        probe = entry["probe"]["status"]
        breaker = (entry.get("breaker") or {}).get("state")
        if probe in UNHEALTHY_PROBES or breaker in UNHEALTHY_BREAKERS:
            return "degraded"
    return "ok"
