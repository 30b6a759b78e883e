"""Durable job records: the job itself, its step ledger and the workers' heartbeats.

The `jobs` table is the source of truth for every background job (the queue only carries
wake-ups): a worker killed with SIGKILL loses nothing because the record still says `running`
with a lease that expires, and the reaper hands the job to another worker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

# Job statuses. `failed` is terminal for kinds that opt out of the dead-letter queue (periodic
# maintenance ticks: the next tick runs again); every other exhausted job ends `dead`.
QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, DEAD = "queued", "running", "retrying", "succeeded", "failed", "dead"
CLAIMABLE = (QUEUED, RETRYING)
TERMINAL = (SUCCEEDED, FAILED, DEAD)
STATUSES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, DEAD)


class Job(db.Model):  # type: ignore[name-defined]
    """One background job: what to run, where it stands, every error it met."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("kind", "idempotency_key", name="uq_jobs_kind_idempotency_key"),
        Index("ix_jobs_claim", "status", "queue", "next_attempt_at", "id"),
        Index("ix_jobs_lease", "status", "lease_expires_at"),
        Index("ix_jobs_dead", "status", "dead_at"),
        Index("ix_jobs_finished", "status", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(50), default="default")
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    last_error_code: Mapped[str | None] = mapped_column(String(100))
    last_error_message: Mapped[str | None] = mapped_column(Text)
    failure_analysis: Mapped[str | None] = mapped_column(String(32), index=True)
    result: Mapped[Any | None] = mapped_column(JSON)
    progress: Mapped[float | None] = mapped_column(Float)
    compensations: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    compensation_pending: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dead_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    archive_reason: Mapped[str | None] = mapped_column(String(500))  # an admin's discard reason (TTL: None)
    # Who started it: the request's id (the one its user was shown) and user, so a failure traces back to both.
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    # The W3C traceparent of the span that enqueued it (tracing on): the job's run is that span's child.
    traceparent: Mapped[str | None] = mapped_column(String(55))


class JobStep(db.Model):  # type: ignore[name-defined]
    """A completed step of a job ("do this once"): a re-run after a crash skips it."""

    __tablename__ = "job_steps"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    result: Mapped[Any | None] = mapped_column(JSON)
    attempt: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobWorker(db.Model):  # type: ignore[name-defined]
    """A worker process's own heartbeat, for the health endpoint (age of the last beat)."""

    __tablename__ = "job_workers"

    worker_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(500))
    concurrency: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
