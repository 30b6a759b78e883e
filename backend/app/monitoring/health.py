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
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from flask import Flask

from ..redis_client import make_redis_client
from ..resilience.breaker import BreakerListener, CircuitBreaker
from ..resilience.breaker_store import Outcome
from ..resilience.classifier import Classification, classify, classify_status
from ..timeutil import epoch_iso, iso, utcnow
from .service_faults import describe, get_monitor

logger = logging.getLogger(__name__)

EXTENSION = "service_health"
DEFAULT_DEADLINE = 2.0
PROBE_TIMEOUT_FACTOR = 2.0  # a live HTTP probe's own timeout, in deadlines

#: Config keys that say a service is configured (any one set is enough).
SERVICE_CONFIG: dict[str, tuple[str, ...]] = {
    "storage": ("GCS_BUCKET",),
    "email": ("SENDGRID_API_KEY",),
    "stripe": ("STRIPE_API_KEY",),
}


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


@dataclass
class ProbeResult:
    """What a live probe found: ok, error, misconfigured, timeout, not_configured or unknown."""

    status: str
    latency_ms: float | None = None
    detail: str | None = None
    extra: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {"status": self.status, "latency_ms": self.latency_ms, "detail": self.detail}
        if self.extra:
            out.update(self.extra)
        return out


Probe = Callable[[], ProbeResult]


#: The name of each service's adapter on the `Services` holder (`app.extensions["services"]`).
ADAPTER_NAMES = {"storage": "storage", "email": "email", "stripe": "payments"}


def find_adapter(app: Flask, service: str) -> Any | None:
    """The service adapter (built lazily by `backend.app.services`; building it connects nowhere), if any."""
    holder = app.extensions.get("services")
    if holder is not None and service in ADAPTER_NAMES:
        return getattr(holder, ADAPTER_NAMES[service], None)
    adapter = app.extensions.get(service)
    return adapter if adapter is not None and (hasattr(adapter, "probe") or hasattr(adapter, "status")) else None


def is_configured(app: Flask, service: str) -> bool:
    """Whether the service is configured (database, queue and rendering always are)."""
    if service == "redis":
        return bool(app.config.get("REDIS_URL"))
    keys = SERVICE_CONFIG.get(service)
    if keys is None:
        return True
    adapter = find_adapter(app, service)
    if adapter is not None and hasattr(adapter, "configured"):
        return bool(adapter.configured)
    return any(app.config.get(key) for key in keys)


def misconfigured_probe(verdict: Classification, what: str) -> ProbeResult:
    """A probe refused for our credentials or permissions: "misconfigured", with the real error."""
    status = f"HTTP {verdict.status}, " if verdict.status else ""
    error = {
        "code": "SERVICE_MISCONFIGURED",
        "http_status": verdict.status,
        "reason": verdict.reason,
        "operation": "probe",
        "since": None,  # a live probe only knows now; recorded faults know since when
        "last_seen": epoch_iso(time.time()),
    }
    return ProbeResult(
        "misconfigured",
        detail=f"{what}: credentials or permissions refused ({status}{verdict.reason})",
        extra={"error": error},
    )


def _timed(fn: Callable[[], ProbeResult | dict[str, Any] | None]) -> ProbeResult:
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a failing probe is the answer, reported with its type (never its text)
        latency = round((time.perf_counter() - started) * 1000, 1)
        logger.info("Health probe failed: %s", type(exc).__name__)
        logger.debug("Health probe failure", exc_info=True)
        verdict = classify(exc)
        if verdict.misconfigured:  # a revoked key or a missing permission is not an outage: say which
            refused = misconfigured_probe(verdict, type(exc).__name__)
            refused.latency_ms = latency
            return refused
        return ProbeResult("error", latency, type(exc).__name__)
    latency = round((time.perf_counter() - started) * 1000, 1)
    if isinstance(result, ProbeResult):
        result.latency_ms = result.latency_ms if result.latency_ms is not None else latency
        return result
    data = dict(result or {})
    status = str(data.pop("status", "ok"))
    if status in ("healthy", "up", "available"):
        status = "ok"
    return ProbeResult(status, latency, None, data or None)


def _database_probe(app: Flask) -> ProbeResult:
    """The real database, around its breaker: health must see it is back while the breaker still waits."""
    from ..extensions import db
    from ..resilience.database_breaker import probe

    with app.app_context():
        probe(db.engine, app.extensions["breakers"].get("database"))
    return ProbeResult("ok")


def _redis_probe(app: Flask) -> ProbeResult:
    client = make_redis_client(app.config["REDIS_URL"], timeout=0.5)
    try:
        client.ping()
    finally:
        client.close()
    return ProbeResult("ok")


def _rendering_probe(app: Flask) -> ProbeResult:
    exe = app.config.get("FFMPEG_BINARY")
    if not exe:
        try:
            import imageio_ffmpeg

            exe = imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:
            exe = shutil.which("ffmpeg")
    if not exe:
        return ProbeResult("error", detail="ffmpeg not found")
    completed = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, timeout=1.5, check=False)
    if completed.returncode != 0:
        return ProbeResult("error", detail=f"ffmpeg exited with {completed.returncode}")
    version = completed.stdout.decode("utf-8", "replace").split("\n", 1)[0][:80]
    return ProbeResult("ok", extra={"version": version})


def _queue_probe(app: Flask) -> ProbeResult:
    with app.app_context():
        from ..jobs import queue_depth, worker_heartbeats

        depth = queue_depth()
        workers = worker_heartbeats()
    alive = [w for w in workers if w["alive"]]
    youngest = min((w["age_seconds"] for w in workers), default=None)
    extra = {
        "depth": {k: depth[k] for k in ("ready", "scheduled", "running")},
        "dead_letters": depth["dead"],
        "workers_alive": len(alive),
        "heartbeat_age_seconds": youngest,
    }
    # No live worker: nothing enqueued now or later is served (renders wait for ever), however short the queue.
    if alive:
        return ProbeResult("ok", extra=extra)
    waiting = depth["ready"]
    detail = "no live worker" + (f": {waiting} job(s) ready and waiting" if waiting else "")
    return ProbeResult("degraded", detail=detail, extra=extra)


#: Services whose adapter has no `probe()` are checked over HTTP: (base URL config key, default, path, key config).
HTTP_PROBES: dict[str, tuple[str, str, str, str]] = {
    "stripe": ("STRIPE_API_BASE", "https://api.stripe.com", "/v1/balance", "STRIPE_API_KEY"),
    "email": ("SENDGRID_API_HOST", "https://api.sendgrid.com", "/v3/scopes", "SENDGRID_API_KEY"),
}


def _http_probe(app: Flask, service: str, timeout: float) -> ProbeResult:
    """The provider answers over HTTP: 2xx-4xx proves it is up; 401/403 say our key is refused; 5xx is down."""
    import requests  # only when probing

    base_key, default, path, key_name = HTTP_PROBES[service]
    base = (app.config.get(base_key) or default).rstrip("/")
    response = requests.get(
        base + path, headers={"Authorization": f"Bearer {app.config.get(key_name)}"}, timeout=timeout
    )
    verdict = classify_status(response.status_code, response.headers, reason=f"{service} http {response.status_code}")
    if verdict.misconfigured:  # 401/403: the provider is up and refuses our key
        refused = misconfigured_probe(verdict, f"GET {path}")
        refused.extra = {**(refused.extra or {}), "live": True, "http_status": response.status_code}
        return refused
    if response.status_code >= 500:
        return ProbeResult("error", detail=f"answered {response.status_code}", extra={"live": True})
    return ProbeResult("ok", extra={"live": True, "http_status": response.status_code})


def _adapter_probe(app: Flask, service: str, adapter: Any, timeout: float) -> Callable[[], ProbeResult]:
    def probe() -> ProbeResult:
        with app.app_context():
            live = getattr(adapter, "probe", None)
            if live is not None:
                return _as_result(live(), live=True)
            status = _as_result(adapter.status(), live=False)
            if status.status == "not_configured" or service not in HTTP_PROBES:
                return status
            # Longer than the endpoint waits: a hung provider is then always reported as "timeout", never as an
            # "error" that races the deadline (the probe keeps its thread; no second one starts meanwhile).
            result = _http_probe(app, service, timeout * PROBE_TIMEOUT_FACTOR)
            result.extra = {**(status.extra or {}), **(result.extra or {})}
            return result

    return probe


def _as_result(data: ProbeResult | dict[str, Any] | None, *, live: bool) -> ProbeResult:
    if isinstance(data, ProbeResult):
        return data
    info = dict(data or {})
    configured = info.pop("configured", True)
    reported = str(info.pop("status", "ok" if live else "unknown"))
    info.pop("breaker", None)  # shown from the breaker itself
    info.pop("service", None)
    if not configured:
        status = "not_configured"
    elif live:
        status = "ok" if reported in ("ok", "healthy", "up", "available") else reported
    else:
        # The adapter only reports its configuration: say so rather than claim it answered.
        status = "unknown"
    detail = None if live else "status only: the adapter has no live probe"
    return ProbeResult(status, detail=detail, extra={"live": live, **info})


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
                future = self._pool.submit(_timed, probe)
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


def _probes(app: Flask, deadline: float) -> tuple[dict[str, Probe], dict[str, ProbeResult]]:
    probes: dict[str, Probe] = {
        "database": lambda: _database_probe(app),
        "rendering": lambda: _rendering_probe(app),
        "queue": lambda: _queue_probe(app),
    }
    fixed: dict[str, ProbeResult] = {}
    if is_configured(app, "redis"):
        probes["redis"] = lambda: _redis_probe(app)
    else:
        fixed["redis"] = ProbeResult("not_configured")
    for service in ("storage", "email", "stripe"):
        adapter = find_adapter(app, service)
        if adapter is not None:
            probes[service] = _adapter_probe(app, service, adapter, deadline)
        elif is_configured(app, service):
            fixed[service] = ProbeResult("unknown", detail="configured, but no adapter is registered to probe")
        else:
            fixed[service] = ProbeResult("not_configured")
    return probes, fixed


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
    probes, fixed = _probes(app, deadline)
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
