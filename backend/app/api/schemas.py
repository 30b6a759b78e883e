"""Request and response models of the public api blueprint (error catalog, reports, status, notifications)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..edge.validation import StrictModel
from ..monitoring.errors.client_reports import (
    ClientErrorReport as ClientErrorReport,  # the body of POST /api/errors/report
)


class CatalogEntryOut(BaseModel):
    """One error code of the catalog."""

    code: str
    status: int
    meaning: str
    recoverable: bool


class CatalogOut(BaseModel):
    """The error catalog."""

    errors: list[CatalogEntryOut]


class ErrorReportAccepted(BaseModel):
    """A client report was accepted for recording."""

    status: str = "accepted"
    event_id: str


class GroupStatusRequest(StrictModel):
    """The new triage status of an error group."""

    status: Literal["acknowledged", "resolved", "unresolved"] = "acknowledged"


class ErrorGroupOut(BaseModel):
    """One error group (every event with the same fingerprint)."""

    id: int
    fingerprint: str
    source: str
    code: str
    title: str
    exc_type: str | None
    endpoint: str | None
    frames: list[str]
    category: str
    severity: str
    status_code: int | None
    count: int
    count_24h: int | None
    first_seen: str | None
    last_seen: str | None
    status: str
    regressed: bool


class ErrorGroupEnvelope(BaseModel):
    """A group wrapped in `group`."""

    status: str = "success"
    group: ErrorGroupOut


class ErrorSummaryItemOut(BaseModel):
    """One recent error in the summary."""

    error_id: str
    group_id: int
    code: str
    message: str
    category: str
    severity: str
    timestamp: str | None


class ErrorSummaryDataOut(BaseModel):
    """Seed 004's summary fields."""

    total_errors: int
    error_counts: dict[str, int]
    recent_errors: list[ErrorSummaryItemOut]


class ErrorSummaryOut(BaseModel):
    """The error summary, wrapped as seed 004 shows."""

    status: str
    data: ErrorSummaryDataOut
    timestamp: str


# --- Health, breakers, degradation (monitoring) ------------------------------------------------------


class LivenessOut(BaseModel):
    """The process is up."""

    status: Literal["alive"]


class ReadinessOut(BaseModel):
    """The process can serve: the database answers."""

    status: Literal["ready"]


class BreakerSnapshotOut(BaseModel):
    """A breaker's full snapshot: state, window counts, retry_after, storage and tuning."""

    model_config = ConfigDict(extra="allow")

    name: str
    state: str
    failure_rate: float
    calls_in_window: int
    failures_in_window: int
    opened_at: float | None
    retry_after: float | None
    storage: str
    config: dict[str, float | int | None]


class BreakerListOut(BaseModel):
    """Every breaker and where their state lives."""

    storage: str
    breakers: dict[str, BreakerSnapshotOut]


class DegradedServiceOut(BaseModel):
    """One failing dependency from a user's point of view."""

    service: str
    state: str  # the breaker's state, or "not_configured"
    features: list[str]
    fallback_active: bool
    fallback: str | None
    user_impact: str
    retry_after: int | None


class DegradationOut(BaseModel):
    """Open breakers and unconfigured services → affected features, fallbacks, what users should expect."""

    degraded: bool  # an outage (not-configured services alone are not one)
    level: Literal["ok", "degraded", "down"]
    services: list[DegradedServiceOut]


class SystemHealthOut(BaseModel):
    """The public health level and the degraded features only."""

    status: Literal["ok", "degraded", "down"]
    degraded_features: list[str]  # failing now (an outage)
    unavailable_features: list[str]  # not set up on this server (payments without Stripe)


class RateLimitOut(BaseModel):
    """One limit that applies to the caller and what is left of it."""

    endpoint: str
    limit: str
    remaining: int | None
    reset_at: str | None


class RateLimitStatusOut(BaseModel):
    """The caller's own limits (by client address) and what is left, read without consuming."""

    enabled: bool
    limits: list[RateLimitOut]


class NotificationOut(BaseModel):
    """An error that hit the caller (or a system alert, for admins) with the action to take."""

    id: str
    kind: Literal["error", "render", "system"]
    severity: str
    code: str
    title: str
    action: str
    occurred_at: str | None
    request_id: str | None
    render_id: int | None = None  # kind "render": the failed render (GET /api/renders/<id>)


class NotificationsOut(BaseModel):
    """The caller's notifications, newest first."""

    notifications: list[NotificationOut]


class NotificationsQuery(BaseModel):
    """Query of `GET /api/errors/notifications`: a severity (any case) and at most `limit` items."""

    model_config = ConfigDict(extra="forbid")

    severity: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] | None = None
    limit: int = Field(20, ge=1, le=100)

    @field_validator("severity", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip().upper() or None
        return value
