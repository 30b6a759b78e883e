"""Alerting: rules with their state, durable deliveries, and per-minute request outcomes for SLOs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db

# Delivery statuses: `pending` waits for its next attempt (a claimed one has its lease in next_attempt_at),
# `sent` reached the channel, `failed` gave up after ALERT_DELIVERY_MAX_ATTEMPTS and waits for an operator.
# `cancelled`: its rule was disabled or deleted before it went out.
PENDING, SENT, FAILED, CANCELLED = "pending", "sent", "failed", "cancelled"


class AlertRule(db.Model):  # type: ignore[name-defined]
    """One alert rule, its channels and its current state (ok or firing)."""

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    channels: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    severity: Mapped[str] = mapped_column(String(16), default="HIGH")
    cooldown_seconds: Mapped[int] = mapped_column(Integer, default=300)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default="ok")  # ok | firing
    state_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    notified: Mapped[bool] = mapped_column(Boolean, default=False)  # the current firing was announced
    last_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_value: Mapped[float | None] = mapped_column(Float)
    last_evaluated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=0)  # optimistic lock for concurrent evaluators
    # HMAC-SHA256 key for webhook signatures (shown once at creation and on rotation; never listed).
    signing_secret: Mapped[str | None] = mapped_column(String(80))
    last_error: Mapped[str | None] = mapped_column(Text)  # why the last evaluation failed (None: it worked)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertDelivery(db.Model):  # type: ignore[name-defined]
    """One message to one channel, written with the state change that caused it; retried until sent."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(16))  # firing | resolved
    channel: Mapped[dict[str, Any]] = mapped_column(JSON)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SloMinute(db.Model):  # type: ignore[name-defined]
    """Requests and 5xx answers per endpoint group per UTC minute, summed over every process."""

    __tablename__ = "slo_minutes"

    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    endpoint_group: Mapped[str] = mapped_column(String(64), primary_key=True)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    bad: Mapped[int] = mapped_column(BigInteger, default=0)
    #: 503 SERVICE_NOT_CONFIGURED answers: neither good nor bad (a set-up gap, not an outage), outside `total`.
    not_configured: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
