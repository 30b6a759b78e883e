"""Configuration faults of external services: a dependency that refuses this server for good (401/403).

A permanent refusal of our credentials or permissions is not an outage that waits out: every
call fails the same way until an operator fixes the key or the permission. Each (service,
operation) that met one has a row here, shared by every process (web and job workers), so the
health endpoint shows the service `misconfigured` with the real error wherever it happened, and
an alert rule can page. The row is cleared (`cleared_at`) when that operation succeeds again, or
when an admin resets the service's breaker.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..timeutil import utcnow


class ServiceFault(db.Model):  # type: ignore[name-defined]
    """The last permanent refusal of one operation of a service, until it succeeds again."""

    __tablename__ = "service_faults"
    __table_args__ = (UniqueConstraint("service", "operation", name="uq_service_faults_service_operation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(50))
    operation: Mapped[str] = mapped_column(String(100))
    error_code: Mapped[str] = mapped_column(String(100))  # our code, e.g. SERVICE_MISCONFIGURED
    http_status: Mapped[int | None] = mapped_column(Integer)  # the peer's status (401, 403), when it sent one
    reason: Mapped[str] = mapped_column(String(500))  # the classifier's reason, e.g. "google Forbidden 403"
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
