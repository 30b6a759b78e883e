"""Background jobs that lose nothing: durable records, leases, retries by class, dead letters.

Design (SPEC section 6 and 10). The job table in the app database IS the queue: every job is a
row, claimed with one atomic conditional UPDATE that sets a lease (owner, expiry) and bumps the
attempt number, which doubles as a fencing token. Running jobs heartbeat their lease; a worker
killed with SIGKILL stops heartbeating, its leases expire and the reaper (run by every worker)
hands the jobs to the next worker. Redis, when `REDIS_URL` is set, carries only wake-ups
(BLPOP), so idle workers on many machines react at once without polling the database hard.

Why not huey or dramatiq: huey loses a task whose worker is killed (no ack, no lease; measured,
SPEC section 10), so it would still need this record and reaper, and would then be a second,
weaker source of truth to keep consistent. dramatiq redelivers but only on Redis (no embedded
default) and still needs the record for history, dead letters and admin requeue. One table with
leases gives both deployments the same code, the same guarantees and one place to look; it adds
no dependency (redis-py is already pinned for breakers and rate limits).

Settings (app.config, all optional; config.py reads them from the environment): JOBS_LEASE_SECONDS
(30), JOBS_HEARTBEAT_SECONDS (lease/3), JOBS_POLL_SECONDS (1), JOBS_CONCURRENCY (1),
JOBS_SHUTDOWN_GRACE_SECONDS (30), DEAD_LETTER_TTL_DAYS (7), JOBS_SUCCEEDED_RETENTION_DAYS (14),
JOBS_IMPORTS (modules that register kinds, imported when the app is built, so every process that
can enqueue a job (a view, `flask jobs enqueue`) knows the same kinds as the workers), REDIS_URL.

Layer: jobs; may import log, base, errors, resilience, services (tests/unit/test_layers.py).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from ..extensions import db
from ..models.job import JobWorker
from ..timeutil import as_utc, iso, utcnow
from .context import JobContext, LeaseLostError
from .dispatch import Dispatcher, build_dispatcher
from .records import enqueue, queue_depth
from .registry import REGISTRY, JobKind, job_kind, register_periodic

logger = logging.getLogger(__name__)

EXTENSION = "jobs"

__all__ = [
    "REGISTRY",
    "JobContext",
    "JobImportError",
    "JobKind",
    "JobsRuntime",
    "LeaseLostError",
    "enqueue",
    "init_jobs",
    "job_kind",
    "queue_depth",
    "register_periodic",
    "runtime",
    "worker_heartbeats",
]


@dataclass(frozen=True)
class JobSettings:
    """Timing settings of the job system, read from app.config."""

    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    concurrency: int = 1
    shutdown_grace_seconds: float = 30.0
    dead_letter_ttl_days: float = 7.0
    succeeded_retention_days: float = 14.0

    @classmethod
    def from_config(cls, config: Any) -> JobSettings:
        """Settings from a Flask config mapping."""
        lease = float(config.get("JOBS_LEASE_SECONDS", 30))
        return cls(
            lease_seconds=lease,
            heartbeat_seconds=float(config.get("JOBS_HEARTBEAT_SECONDS") or lease / 3),
            poll_seconds=float(config.get("JOBS_POLL_SECONDS", 1.0)),
            concurrency=int(config.get("JOBS_CONCURRENCY", 1)),
            shutdown_grace_seconds=float(config.get("JOBS_SHUTDOWN_GRACE_SECONDS", 30)),
            dead_letter_ttl_days=float(config.get("DEAD_LETTER_TTL_DAYS", 7)),
            succeeded_retention_days=float(config.get("JOBS_SUCCEEDED_RETENTION_DAYS", 14)),
        )


class JobsRuntime:
    """Per-app job state: settings and the wake-up dispatcher (built on first use)."""

    def __init__(self, app: Flask) -> None:
        self.settings = JobSettings.from_config(app.config)
        self._redis_url: str | None = app.config.get("REDIS_URL")
        self._dispatcher: Dispatcher | None = None

    @property
    def dispatcher(self) -> Dispatcher:
        """The dispatcher (Redis when REDIS_URL is set); no connection is made until it is used."""
        if self._dispatcher is None:
            self._dispatcher = build_dispatcher(self._redis_url)
        return self._dispatcher

    @property
    def backend(self) -> str:
        """`redis` or `embedded`: how wake-ups travel."""
        return "redis" if self._redis_url else "embedded"


def runtime(app: Flask | None = None) -> JobsRuntime:
    """The app's job runtime."""
    target = app or current_app
    return target.extensions[EXTENSION]  # type: ignore[no-any-return]


def _wake_after_commit(session: Session) -> None:
    queues = session.info.pop("jobs_wake", None)
    if not queues:
        return
    try:
        rt = current_app.extensions.get(EXTENSION)
    except RuntimeError:  # committed outside an app context: workers find the job by polling
        return
    if rt is not None:
        rt.dispatcher.notify(queues)


def _forget_after_rollback(session: Session) -> None:
    session.info.pop("jobs_wake", None)


class JobImportError(ImportError):
    """A module named in JOBS_IMPORTS cannot be imported."""


def import_job_modules(app: Flask) -> None:
    """Import the modules listed in JOBS_IMPORTS so their kinds are registered (idempotent)."""
    names = app.config.get("JOBS_IMPORTS") or ()
    if isinstance(names, str):  # set in app config as "a.b, c.d" rather than a tuple
        names = [name.strip() for name in names.split(",") if name.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            # Fail the start, loudly: a worker or web process missing kinds would dead-letter their jobs.
            raise JobImportError(f"JOBS_IMPORTS names {name!r}, which cannot be imported: {exc}") from exc


def init_jobs(app: Flask) -> None:
    """Attach the job runtime and the wake-up hook (create_app imports the kinds and registers `flask jobs`)."""
    app.extensions[EXTENSION] = JobsRuntime(app)
    if not event.contains(Session, "after_commit", _wake_after_commit):
        event.listen(Session, "after_commit", _wake_after_commit)
        event.listen(Session, "after_rollback", _forget_after_rollback)
    import_job_modules(app)


def worker_heartbeats(*, now: datetime | None = None, include_stopped: bool = False) -> list[dict[str, Any]]:
    """Every worker's last heartbeat and its age in seconds (for the health endpoint)."""
    at = now or utcnow()
    heartbeat = runtime().settings.heartbeat_seconds
    stmt = select(JobWorker).order_by(JobWorker.last_seen_at.desc())
    if not include_stopped:
        stmt = stmt.where(JobWorker.stopped_at.is_(None), JobWorker.last_seen_at >= at - timedelta(days=1))
    rows = []
    for worker in db.session.execute(stmt).scalars():
        seen = as_utc(worker.last_seen_at) or at
        age = max(0.0, (at - seen).total_seconds())
        rows.append(
            {
                "worker_id": worker.worker_id,
                "hostname": worker.hostname,
                "pid": worker.pid,
                "queues": worker.queues,
                "concurrency": worker.concurrency,
                "running": worker.running,
                "processed": worker.processed,
                "started_at": iso(worker.started_at),
                "last_seen_at": iso(worker.last_seen_at),
                "stopped_at": iso(worker.stopped_at),
                "age_seconds": round(age, 3),
                "alive": worker.stopped_at is None and age <= 3 * heartbeat,
            }
        )
    return rows
