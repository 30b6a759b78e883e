"""Error statistics: groups (one per fingerprint), raw events (with retention) and small rollups.

Counts are read from the groups and the rollups, never from `error_events`: that table only serves
"show me the events" queries through its indexes and is pruned by age and row count.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class ErrorGroup(db.Model):  # type: ignore[name-defined]
    """Every event with the same fingerprint: counters, first/last seen and triage status."""

    __tablename__ = "error_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(40), unique=True)
    source: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(64), index=True)
    exc_type: Mapped[str | None] = mapped_column(String(128))
    endpoint: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(300))
    frames: Mapped[str | None] = mapped_column(Text)  # in-app frames, one "path:function" a line
    category: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    status: Mapped[str] = mapped_column(String(16), default="unresolved")
    regressed: Mapped[bool] = mapped_column(Boolean, default=False)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status_changed_by: Mapped[int | None] = mapped_column(Integer)


class ErrorEvent(db.Model):  # type: ignore[name-defined]
    """One recorded error (raw, kept for ERROR_EVENT_RETENTION_DAYS)."""

    __tablename__ = "error_events"
    __table_args__ = (
        Index("ix_error_events_occurred_id", "occurred_at", "id"),
        Index("ix_error_events_group_occurred", "group_id", "occurred_at"),
        Index("ix_error_events_code_occurred", "code", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("error_groups.id", ondelete="CASCADE"))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(16))
    code: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(1000))
    exc_type: Mapped[str | None] = mapped_column(String(128))
    endpoint: Mapped[str | None] = mapped_column(String(128))
    method: Mapped[str | None] = mapped_column(String(10))
    path: Mapped[str | None] = mapped_column(String(500))
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    context: Mapped[str | None] = mapped_column(Text)  # sanitised JSON (client reports, job details)


class ErrorMinute(db.Model):  # type: ignore[name-defined]
    """Errors and requests per UTC minute, summed over every process: the source of error rates."""

    __tablename__ = "error_minutes"
    __table_args__ = {"sqlite_with_rowid": False}  # clustered on the key: window sums read one range

    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Of `errors`, those the server owes: 5xx answers and failures outside a request (jobs); the rest are 4xx.
    server_errors: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    requests: Mapped[int] = mapped_column(BigInteger, default=0)


class ErrorCodeMinute(db.Model):  # type: ignore[name-defined]
    """Errors per code per UTC minute (per-code rates over short windows, alert rules)."""

    __tablename__ = "error_code_minutes"
    __table_args__ = {"sqlite_with_rowid": False}  # clustered on the key: window sums read one range

    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class ErrorCodeHour(db.Model):  # type: ignore[name-defined]
    """Errors per code per UTC hour (per-code counts over 24 hours read 24 rows a code, not 1,440)."""

    __tablename__ = "error_code_hours"
    __table_args__ = {"sqlite_with_rowid": False}  # clustered on the key: window sums read one range

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class ErrorGroupHour(db.Model):  # type: ignore[name-defined]
    """Errors per group per UTC hour (top groups over a window, bounded at 24 rows a group a day)."""

    __tablename__ = "error_group_hours"
    __table_args__ = {"sqlite_with_rowid": False}  # clustered on the key: window sums read one range

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("error_groups.id", ondelete="CASCADE"), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
