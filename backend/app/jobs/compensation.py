"""Compensations (seed 003): when a multi-step job ends failed or dead, undo the steps that asked.

A step registers `compensate=(name, args)` atomically with its ledger row. When the job ends
failed or dead, each pending compensation runs once: its database writes commit together with a
`compensate:<step>` ledger row, so a crash or a second runner (the worker and the maintenance
sweep) can never apply it twice. A compensation that raises is recorded in the job's error
history with its real message and tried again by the sweep, up to `MAX_COMPENSATION_ATTEMPTS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ...log.context import log_context
from ..extensions import db
from ..models.job import DEAD, FAILED, Job, JobStep
from ..resilience.classifier import classify
from ..resilience.history import append_error, error_entry
from ..timeutil import utcnow
from .registry import REGISTRY

logger = logging.getLogger(__name__)

MAX_COMPENSATION_ATTEMPTS = 5


@dataclass(frozen=True)
class CompensationContext:
    """What a compensation sees: the job, the step it undoes and a stable idempotency key."""

    job_id: int
    kind: str
    payload: dict[str, Any]
    step: str

    def idempotency_key(self) -> str:
        """The same key on every try of this compensation (for an external refund call)."""
        return f"job-{self.job_id}-compensate-{self.step}"


def _terminal_fence(job_id: int, at: datetime, **values: Any) -> Any:
    return (
        update(Job)
        .where(Job.id == job_id, Job.status.in_((FAILED, DEAD)))
        .values(updated_at=at, **values)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )


def run_compensations(job_id: int, *, now: datetime | None = None) -> int:
    """Run the pending compensations of a failed or dead job; the number applied now."""
    applied = 0
    session = db.session
    job = session.execute(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).scalar_one()
    session.commit()
    if job.status not in (FAILED, DEAD):
        return 0
    kind = REGISTRY.get(job.kind)
    with log_context(job_id=job_id):
        for index, entry in enumerate(list(job.compensations or [])):
            if entry.get("state") != "pending":
                continue
            at = now or utcnow()
            func = kind.compensations.get(entry["name"]) if kind is not None else None
            ctx = CompensationContext(job.id, job.kind, dict(job.payload or {}), entry["step"])
            # The fence first: it locks the job row (the SQLite write lock) before the compensation reads.
            if session.execute(_terminal_fence(job_id, at)).first() is None:
                session.rollback()
                return applied  # requeued meanwhile: the steps stand, nothing to undo
            try:
                if func is None:
                    raise LookupError(f"no compensation {entry['name']!r} is registered for job kind {job.kind!r}")
                func(ctx, dict(entry.get("args") or {}))
                ledger = JobStep(job_id=job_id, name=f"compensate:{entry['step']}", attempt=job.attempts, created_at=at)
                session.add(ledger)
                _set_state(job_id, index, "done", at)
                session.commit()
            except IntegrityError:
                session.rollback()  # another runner applied it first; its record stands
                continue
            except Exception as exc:  # noqa: BLE001 - recorded with its real message, tried again by the sweep
                session.rollback()
                _record_failure(job_id, index, exc, at)
                continue
            applied += 1
            logger.info("Job %s: compensation %s for step %s applied", job_id, entry["name"], entry["step"])
    return applied


def _set_state(job_id: int, index: int, state: str, at: datetime, error: dict[str, Any] | None = None) -> None:
    session = db.session
    job = session.execute(select(Job.compensations, Job.errors).where(Job.id == job_id)).one()
    entries = [dict(e) for e in job.compensations or []]
    entries[index]["state"] = state
    if state != "done":
        entries[index]["attempts"] = int(entries[index].get("attempts", 0)) + 1
        if entries[index]["attempts"] >= MAX_COMPENSATION_ATTEMPTS:
            entries[index]["state"] = "failed"
    values: dict[str, Any] = {
        "compensations": entries,
        "compensation_pending": any(e.get("state") == "pending" for e in entries),
    }
    if error is not None:
        values["errors"] = append_error(job.errors or [], error)
    session.execute(_terminal_fence(job_id, at, **values))


def _record_failure(job_id: int, index: int, exc: Exception, at: datetime) -> None:
    entry = error_entry(exc, classify(exc), 0, at, worker=None, code="COMPENSATION_FAILED")
    entry["message"] = f"{type(exc).__name__}: {entry['message']}"
    logger.error("Job %s: compensation #%s failed: %s", job_id, index, entry["message"])
    _set_state(job_id, index, "pending", at, error=entry)
    db.session.commit()


def sweep_pending(*, limit: int = 100) -> int:
    """Run every failed or dead job's pending compensations (the maintenance sweep); applied count."""
    ids = db.session.execute(
        select(Job.id)
        .where(Job.compensation_pending.is_(True), Job.status.in_((FAILED, DEAD)))
        .order_by(Job.id)
        .limit(limit)
    ).scalars()
    ids = list(ids)
    db.session.commit()
    return sum(run_compensations(job_id) for job_id in ids)
