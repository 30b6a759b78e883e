"""What users see: failing dependencies (open breakers) and features this server was never set up for.

Read from the breakers (one store read each) and the configuration, so the public endpoints stay
cheap and reveal nothing internal: feature names and plain-language expectations, never hosts,
errors or config keys. A service that is not configured is listed as `not_configured` with what does
not work (checkout without Stripe); the level (ok, degraded, down) is about outages only. A breaker of
a service that is not configured guards nothing that runs, so its state is not an outage: uploads on
local storage are not degraded by a forced-open storage breaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask

from ..resilience.breaker import is_internal
from ..timeutil import iso, utcnow
from .probes import find_adapter, is_configured


@dataclass(frozen=True)
class Feature:
    """The user-facing side of one dependency."""

    features: tuple[str, ...]
    fallback: str | None  # what stands in for the service (None: nothing, the operation fails)
    with_fallback: str  # what users should expect while the fallback serves
    without_fallback: str  # what users should expect when nothing stands in
    critical: bool = False  # the whole service is down without it
    #: What users see when this server has no configuration for it (None: the built-in stand-in is the whole
    #: feature, as local storage is for uploads).
    not_configured: str | None = None


FEATURES: dict[str, Feature] = {
    "database": Feature(
        ("everything",),
        None,
        "",
        "The service is unavailable. Please try again in a few minutes.",
        critical=True,
    ),
    "storage": Feature(
        ("uploads", "downloads"),
        "local_storage",
        "Uploads are kept safely and copied to cloud storage when it recovers; downloads may be slower.",
        "Uploads and downloads are unavailable for now. Please retry later.",
    ),
    "email": Feature(
        ("email notifications",),
        "outbox",
        "Emails are delayed, not lost: they are sent as soon as email delivery recovers.",
        "Emails cannot be sent for now.",
        not_configured="Emails are not sent: email delivery is not set up on this server.",
    ),
    "stripe": Feature(
        ("payments",),
        None,
        "",
        "Buying credits is unavailable for now. Nothing is charged; please retry later.",
        not_configured="Buying credits is not available: payments are not set up on this server.",
    ),
    "rendering": Feature(
        ("video rendering",),
        None,
        "",
        "New renders may fail or wait; failed renders are retried automatically.",
    ),
}

UNHEALTHY = frozenset({"open", "forced_open", "half_open"})
NOT_CONFIGURED = "not_configured"


def _fallback_serves(app: Flask, service: str, feature: Feature) -> bool:
    # A fallback is claimed only when the adapter that implements it is actually registered.
    return feature.fallback is not None and find_adapter(app, service) is not None


def degradation(app: Flask, *, include_internal: bool = False) -> dict[str, Any]:
    """Every failing or unconfigured service: its features, fallback and what users should expect.

    Internal breakers (alert channels) are left out unless `include_internal` (admin notifications).
    """
    snapshots = app.extensions["breakers"].snapshot()
    affected: list[dict[str, Any]] = []
    for name, feature in FEATURES.items():
        if feature.not_configured is not None and not is_configured(app, name):
            affected.append(
                {
                    "service": name,
                    "state": NOT_CONFIGURED,
                    "features": list(feature.features),
                    "fallback_active": False,
                    "fallback": None,
                    "user_impact": feature.not_configured,
                    "retry_after": None,
                }
            )
    for name, snap in snapshots.items():
        if snap["state"] not in UNHEALTHY or (is_internal(name) and not include_internal):
            continue
        if not _guards_calls(app, name):
            continue  # its breaker guards no call that runs (listed above when a feature is missing)
        feature = FEATURES.get(name, Feature((name,), None, "", f"Features that use {name} may be unavailable."))
        serves = _fallback_serves(app, name, feature)
        affected.append(
            {
                "service": name,
                "state": snap["state"],
                "features": list(feature.features),
                "fallback_active": serves,
                "fallback": feature.fallback if serves else None,
                "user_impact": feature.with_fallback if serves else feature.without_fallback,
                "retry_after": round(snap["retry_after"]) if snap.get("retry_after") is not None else None,
            }
        )
    outages = [item for item in affected if item["state"] != NOT_CONFIGURED]
    return {"degraded": bool(outages), "level": _level(outages), "services": affected}


def _guards_calls(app: Flask, service: str) -> bool:
    # Local storage writes to the disk without the storage breaker; an unconfigured service makes no call.
    if service == "storage":
        adapter = find_adapter(app, service)
        return adapter is None or getattr(adapter, "backend", "gcs") != "local"
    return is_configured(app, service)


def _critical(service: str) -> bool:
    feature = FEATURES.get(service)
    return feature is not None and feature.critical


def _level(affected: list[dict[str, Any]]) -> str:
    if any(_critical(a["service"]) for a in affected):
        return "down"
    return "degraded" if affected else "ok"


def public_health(app: Flask) -> dict[str, Any]:
    """A level (ok, degraded, down), the degraded features and those not set up here: nothing internal."""
    report = degradation(app)
    missing = [item for item in report["services"] if item["state"] == NOT_CONFIGURED]
    failing = [item for item in report["services"] if item["state"] != NOT_CONFIGURED]
    return {
        "status": report["level"],
        "degraded_features": sorted({f for item in failing for f in item["features"]}),
        "unavailable_features": sorted({f for item in missing for f in item["features"]}),
    }


def system_notifications(app: Flask) -> list[dict[str, Any]]:
    """Admin notifications for degraded services and firing alerts (alerts add theirs when configured)."""
    now = iso(utcnow())
    items: list[dict[str, Any]] = []
    for item in degradation(app, include_internal=True)["services"]:
        if item["state"] == NOT_CONFIGURED:
            continue  # a set-up choice, shown on the health page, not an incident to notify about
        critical = _critical(item["service"])
        items.append(
            {
                "id": f"breaker:{item['service']}",
                "kind": "system",
                "severity": "CRITICAL" if critical else "HIGH",
                "code": "CIRCUIT_OPEN",
                "title": f"Circuit breaker {item['service']} is {item['state']}",
                "action": "Check the service's health; reset the breaker once it has recovered.",
                "occurred_at": now,
                "request_id": None,
            }
        )
    source = app.extensions.get("alert_notifications")
    if source is not None:
        items.extend(source())
    return items
