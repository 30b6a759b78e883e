"""The per-dependency probes of the admin health report: one small callable per dependency.

Each probe answers a `ProbeResult` (ok, error, misconfigured, degraded, not_configured, unknown) for the
database (around its breaker), Redis, rendering (ffmpeg), the job queue and the service adapters (their
`probe()`, or `status()` plus an HTTP check of the provider). `health.py` runs them together under one
deadline and builds the report; `degradation.py` asks `find_adapter` and `is_configured` too.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask

from ..redis_client import make_redis_client
from ..resilience.classifier import Classification, classify, classify_status
from ..timeutil import epoch_iso

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_FACTOR = 2.0  # a live HTTP probe's own timeout, in deadlines

#: Config keys that say a service is configured (any one set is enough).
SERVICE_CONFIG: dict[str, tuple[str, ...]] = {
    "storage": ("GCS_BUCKET",),
    "email": ("SENDGRID_API_KEY",),
    "stripe": ("STRIPE_API_KEY",),
}


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


def timed(fn: Callable[[], ProbeResult | dict[str, Any] | None]) -> ProbeResult:
    """Run one probe and time it; a probe that raises is the answer (error or misconfigured), never raised."""
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


def dependency_probes(app: Flask, deadline: float) -> tuple[dict[str, Probe], dict[str, ProbeResult]]:
    """The live probe of each dependency, and the fixed answer of each one that cannot be probed."""
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
