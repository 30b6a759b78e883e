"""What users see while a dependency is failing: open breakers → affected features, fallbacks, expectations.

Read from the breakers only (one store read each), so the public endpoints stay cheap and reveal
nothing internal: feature names and plain-language expectations, never hosts, errors or config.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from .health import find_adapter


@dataclass(frozen=True)
class Feature:
    """The user-facing side of one dependency."""

    features: tuple[str, ...]
    fallback: str | None  # what stands in for the service (None: nothing, the operation fails)
    with_fallback: str  # what users should expect while the fallback serves
    without_fallback: str  # what users should expect when nothing stands in
    critical: bool = False  # the whole service is down without it


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
    ),
    "stripe": Feature(
        ("payments",),
        None,
        "",
        "Buying credits is unavailable for now. Nothing is charged; please retry later.",
    ),
    "rendering": Feature(
        ("video rendering",),
        None,
        "",
        "New renders may fail or wait; failed renders are retried automatically.",
    ),
}

UNHEALTHY = frozenset({"open", "forced_open", "half_open"})


def _fallback_serves(app: Flask, service: str, feature: Feature) -> bool:
    # A fallback is claimed only when the adapter that implements it is actually registered.
    return feature.fallback is not None and find_adapter(app, service) is not None


def degradation(app: Flask) -> dict[str, Any]:
    """Every service with an unhealthy breaker, its features, fallback and what users should expect."""
    snapshots = app.extensions["breakers"].snapshot()
    affected: list[dict[str, Any]] = []
    for name, snap in snapshots.items():
        if snap["state"] not in UNHEALTHY:
            continue
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
    return {"degraded": bool(affected), "level": _level(affected), "services": affected}


def _critical(service: str) -> bool:
    feature = FEATURES.get(service)
    return feature is not None and feature.critical


def _level(affected: list[dict[str, Any]]) -> str:
    if any(_critical(a["service"]) for a in affected):
        return "down"
    return "degraded" if affected else "ok"


def public_health(app: Flask) -> dict[str, Any]:
    """A level (ok, degraded, down) and the degraded features: nothing internal."""
    report = degradation(app)
    features = sorted({f for item in report["services"] for f in item["features"]})
    return {"status": report["level"], "degraded_features": features}


def system_notifications(app: Flask) -> list[dict[str, Any]]:
    """Admin notifications for degraded services and firing alerts (alerts add theirs when configured)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    items: list[dict[str, Any]] = []
    for item in degradation(app)["services"]:
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
