"""State transitions of the durable job record, each one atomic across processes.

Every transition is one conditional UPDATE whose WHERE clause states what must still be true
(status, lease owner and attempt number: the fencing token), checked through RETURNING. Two
workers can never both claim a job, and a worker whose lease was taken over can never complete,
fail or record a step for it. This works the same on SQLite (writers are serialised; a single
UPDATE statement takes the write lock before reading) and PostgreSQL (the candidate is picked
with FOR UPDATE SKIP LOCKED, so claimers do not queue behind each other's row locks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from ...log.context import log_context, peek_log_context
from ..extensions import db
from ..models.job import CLAIMABLE, DEAD, FAILED, QUEUED, RETRYING, RUNNING, SUCCEEDED, Job
from ..resilience.classifier import Classification, ErrorKind, classify
from ..resilience.history import append_error, error_entry
from ..resilience.retry import RetryPolicy, decide
from ..timeutil import iso, utcnow
from ..tracing import current_traceparent
from .registry import REGISTRY, JobKind

logger = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024  # large data goes by reference (a storage key), not inline


class UnknownJobKindError(ValueError):
    """No handler is registered for a job kind."""


@dataclass(frozen=True)
class Claim:
    """A job this worker holds a lease on; `attempt` is the fencing token."""

    id: int
    kind: str
    queue: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    owner: str
    request_id: str | None = None  # the request that enqueued the job (its log lines and errors carry it)
    user_id: int | None = None
    traceparent: str | None = None  # the enqueuing span's (tracing on): the run continues that trace


@dataclass(frozen=True)
class Outcome:
    """What a failed attempt led to."""

    status: str
    delay: float | None
    reason: str
    analysis: str | None = None


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert_ignoring_duplicates(session: Session, values: dict[str, Any]) -> Any:
    if _is_postgres(session):
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(Job).values(**values).on_conflict_do_nothing(index_elements=["kind", "idempotency_key"])
    return stmt.returning(Job.id)


def enqueue(
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    queue: str | None = None,
    delay: float = 0.0,
    max_attempts: int | None = None,
    commit: bool = True,
    now: datetime | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    compensations: Sequence[tuple[str, str, dict[str, Any]]] = (),
    request_id: str | None = None,
    user_id: int | None = None,
) -> Job:
    """Record a job (or return the existing one with the same `idempotency_key` for this kind).

    The job remembers who started it: `request_id` and `user_id`, by default those of the current
    log context (the request being served, or the job whose handler enqueues this one), so its log
    lines and error events carry the id the user was shown.

    With `commit=False` the job joins the caller's transaction: it exists only if the caller's
    own writes commit (a render row and its job, together or not at all). `compensations` lists
    (step, compensation name, args) for work the caller did in that same transaction (a credit
    spent by the request): they are pending from the start, so the job undoes them if it ends
    failed or dead even if no attempt ever ran a step.
    """
    spec = REGISTRY.get(kind)
    if spec is None:
        raise UnknownJobKindError(f"unknown job kind {kind!r}")
    body = dict(payload or {})
    encoded = json.dumps(body, separators=(",", ":"), default=str)  # fails now, not in the worker
    if len(encoded.encode("utf-8")) > max_payload_bytes:
        raise ValueError(f"job payload is over {max_payload_bytes} bytes: pass large data by reference")
    at = now or utcnow()
    origin = peek_log_context()
    if request_id is None:
        request_id = origin.get("request_id")
    if user_id is None and isinstance(origin.get("user_id"), int):
        user_id = origin["user_id"]
    values: dict[str, Any] = {
        "kind": kind,
        "request_id": request_id,
        "user_id": user_id,
        "traceparent": current_traceparent(),
        "queue": queue or spec.queue,
        "idempotency_key": idempotency_key,
        "payload": json.loads(encoded),
        "status": QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts or spec.policy.max_attempts,
        "errors": [],
        "compensations": [
            {"step": step, "name": name, "args": dict(args), "state": "pending", "attempts": 0}
            for step, name, args in compensations
        ],
        "compensation_pending": False,  # set when the job ends failed or dead with pending entries
        "next_attempt_at": at + timedelta(seconds=max(0.0, delay)),
        "created_at": at,
        "updated_at": at,
    }
    session = db.session
    if idempotency_key is None:
        job_id = session.execute(insert(Job).values(**values).returning(Job.id)).scalar_one()
    else:
        job_id = session.execute(_insert_ignoring_duplicates(session, values)).scalar_one_or_none()
        if job_id is None:
            job_id = session.execute(
                select(Job.id).where(Job.kind == kind, Job.idempotency_key == idempotency_key)
            ).scalar_one()
            logger.debug("Job %s/%s already recorded as %s", kind, idempotency_key, job_id)
    session.info.setdefault("jobs_wake", set()).add(values["queue"])
    if commit:
        session.commit()
    return session.execute(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).scalar_one()


def claim(
    owner: str, queues: Sequence[str] | None, lease_seconds: float, *, now: datetime | None = None
) -> Claim | None:
    """Take the next due job on `queues` (all queues if None) with a lease; None if none is due."""
    at = now or utcnow()
    session = db.session
    candidate = select(Job.id).where(Job.status.in_(CLAIMABLE), Job.next_attempt_at <= at)
    if queues:
        candidate = candidate.where(Job.queue.in_(list(queues)))
    candidate = candidate.order_by(Job.next_attempt_at, Job.id).limit(1)
    if _is_postgres(session):
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(Job)
        .where(Job.id == candidate.scalar_subquery(), Job.status.in_(CLAIMABLE))
        .values(
            status=RUNNING,
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=at + timedelta(seconds=lease_seconds),
            heartbeat_at=at,
            started_at=at,
            updated_at=at,
        )
        .returning(
            Job.id,
            Job.kind,
            Job.queue,
            Job.payload,
            Job.attempts,
            Job.max_attempts,
            Job.request_id,
            Job.user_id,
            Job.traceparent,
        )
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    session.commit()
    if row is None:
        return None
    payload = dict(row.payload or {})
    return Claim(
        row.id,
        row.kind,
        row.queue,
        payload,
        row.attempts,
        row.max_attempts,
        owner,
        row.request_id,
        row.user_id,
        row.traceparent,
    )


def _fenced(claim: Claim) -> Any:
    return update(Job).where(
        Job.id == claim.id, Job.status == RUNNING, Job.lease_owner == claim.owner, Job.attempts == claim.attempt
    )


def still_held(session: Session, claim: Claim, *, now: datetime | None = None, **values: Any) -> bool:
    """Touch the job under the claim's fence (in the caller's transaction); False if the lease was lost."""
    stmt = _fenced(claim).values(updated_at=now or utcnow(), **values).returning(Job.id)
    return session.execute(stmt.execution_options(synchronize_session=False)).first() is not None


def extend_leases(owner: str, job_ids: Iterable[int], lease_seconds: float, *, now: datetime | None = None) -> set[int]:
    """Push back the leases of the jobs `owner` is running (a heartbeat); the ids still held.

    Only jobs a handler is actually running are extended: a job whose bookkeeping failed is left
    to expire, so the reaper retries it instead of this worker sitting on it.
    """
    ids = list(job_ids)
    if not ids:
        return set()
    at = now or utcnow()
    stmt = (
        update(Job)
        .where(Job.status == RUNNING, Job.lease_owner == owner, Job.id.in_(ids))
        .values(lease_expires_at=at + timedelta(seconds=lease_seconds), heartbeat_at=at)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    held = {row.id for row in db.session.execute(stmt)}
    db.session.commit()
    return held


def complete(claim: Claim, result: Any, *, now: datetime | None = None) -> bool:
    """Mark the claimed job succeeded; False if the lease was lost meanwhile (someone else owns it)."""
    at = now or utcnow()
    encoded = json.loads(json.dumps(result, default=str)) if result is not None else None
    ok = still_held(
        db.session,
        claim,
        now=at,
        status=SUCCEEDED,
        result=encoded,
        progress=100.0,
        finished_at=at,
        lease_owner=None,
        lease_expires_at=None,
    )
    db.session.commit()
    return ok


def release(claim: Claim, *, now: datetime | None = None, commit: bool = True) -> bool:
    """Hand a claimed job back to the queue, this attempt not counted; False if the lease was lost."""
    at = now or utcnow()
    ok = still_held(
        db.session,
        claim,
        now=at,
        status=RETRYING,
        attempts=claim.attempt - 1,
        lease_owner=None,
        lease_expires_at=None,
        next_attempt_at=at,
    )
    if commit:
        db.session.commit()
    return ok


def _load(session: Session, job_id: int) -> Job:
    return session.execute(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).scalar_one()


def fail(
    claim: Claim,
    exc: BaseException,
    *,
    kind: JobKind | None,
    now: datetime | None = None,
    classification: Classification | None = None,
    rng: Any = None,
) -> Outcome | None:
    """Record a failed attempt and schedule a retry or end the job; None if the lease was lost."""
    from .dead_letters import analyse  # the analysis belongs to the dead-letter module

    at = now or utcnow()
    session = db.session
    verdict = classification or classify(exc)
    policy = kind.policy if kind is not None else RetryPolicy(permanent_retries=0)
    decision = decide(verdict, claim.attempt, claim.max_attempts, policy, **({"rng": rng} if rng else {}))
    job = _load(session, claim.id)
    history = append_error(job.errors or [], error_entry(exc, verdict, claim.attempt, at, worker=claim.owner))
    common: dict[str, Any] = {
        "errors": history,
        "last_error_code": history[-1]["code"],
        "last_error_message": history[-1]["message"],
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if decision.retry:
        outcome = Outcome(RETRYING, decision.delay, decision.reason)
        values = {**common, "status": RETRYING, "next_attempt_at": at + timedelta(seconds=decision.delay)}
    else:
        outcome = _terminal_outcome(kind, history, decision.reason, analyse)
        values = {**common, **_terminal_values(job, outcome, at)}
    if not still_held(session, claim, now=at, **values):
        session.rollback()
        return None
    session.commit()
    return outcome


def _terminal_outcome(kind: JobKind | None, history: list[dict[str, Any]], reason: str, analyse: Any) -> Outcome:
    status = DEAD if kind is None or kind.dead_letter else FAILED
    return Outcome(status, None, reason, analyse(history))


def _terminal_values(job: Job, outcome: Outcome, at: datetime) -> dict[str, Any]:
    pending = any(c.get("state") == "pending" for c in job.compensations or [])
    values: dict[str, Any] = {
        "status": outcome.status,
        "failure_analysis": outcome.analysis,
        "finished_at": at,
        "compensation_pending": pending,
    }
    if outcome.status == DEAD:
        values["dead_at"] = at
    return values


def reap_expired(*, now: datetime | None = None, limit: int = 100) -> list[tuple[int, str]]:
    """Hand back jobs whose lease expired (their worker died): (job id, new status) for each."""
    from .dead_letters import analyse

    at = now or utcnow()
    session = db.session
    expired = session.execute(
        select(Job).where(Job.status == RUNNING, Job.lease_expires_at < at).order_by(Job.id).limit(limit)
    ).scalars()
    reaped: list[tuple[int, str]] = []
    for job in list(expired):
        claim = Claim(job.id, job.kind, job.queue, {}, job.attempts, job.max_attempts, job.lease_owner or "")
        lost = Classification(ErrorKind.TRANSIENT, None, "worker lost", None)
        message = (
            f"Worker {job.lease_owner} stopped heartbeating during attempt {job.attempts}; "
            f"its lease expired at {iso(job.lease_expires_at)}"
        )
        entry = error_entry(None, lost, job.attempts, at, worker=job.lease_owner, code="WORKER_LOST", message=message)
        history = append_error(job.errors or [], entry)
        values: dict[str, Any] = {
            "errors": history,
            "last_error_code": "WORKER_LOST",
            "last_error_message": entry["message"],
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if job.attempts >= job.max_attempts:
            reason = f"attempt {job.attempts} of {job.max_attempts} was lost with its worker"
            outcome = _terminal_outcome(REGISTRY.get(job.kind), history, reason, analyse)
            values.update(_terminal_values(job, outcome, at))
            status = outcome.status
        else:
            values.update(status=RETRYING, next_attempt_at=at)
            status = RETRYING
        stmt = (
            _fenced(claim)
            .where(Job.lease_expires_at < at)
            .values(updated_at=at, **values)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        if session.execute(stmt).first() is not None:
            reaped.append((job.id, status))
            with log_context(job_id=job.id, request_id=job.request_id, user_id=job.user_id):
                logger.warning(
                    "Reaped job %s (%s): lease of %s expired; now %s", job.id, job.kind, job.lease_owner, status
                )
    session.commit()
    return reaped


def queue_depth(queues: Sequence[str] | None = None, *, now: datetime | None = None) -> dict[str, Any]:
    """Jobs waiting (due now, or scheduled later), running and dead, per queue and in total."""
    at = now or utcnow()
    stmt = select(Job.queue, Job.status, (Job.next_attempt_at <= at).label("due"), func.count()).where(
        Job.status.in_((QUEUED, RETRYING, RUNNING))
    )
    if queues:
        stmt = stmt.where(Job.queue.in_(list(queues)))
    stmt = stmt.group_by(Job.queue, Job.status, "due")
    per_queue: dict[str, dict[str, int]] = {}
    for queue, status, due, count in db.session.execute(stmt):
        bucket = per_queue.setdefault(queue, {"ready": 0, "scheduled": 0, "running": 0})
        if status == RUNNING:
            bucket["running"] += count
        elif due:
            bucket["ready"] += count
        else:
            bucket["scheduled"] += count
    dead = db.session.execute(
        select(func.count()).select_from(Job).where(Job.status == DEAD, Job.archived_at.is_(None))
    ).scalar_one()
    totals = {k: sum(b[k] for b in per_queue.values()) for k in ("ready", "scheduled", "running")}
    return {"queues": per_queue, **totals, "dead": dead}
