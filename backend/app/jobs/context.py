"""What a job handler gets: its payload, attempt, a "do this step once" ledger and compensations.

    def render(ctx: JobContext) -> dict:
        ctx.step("consume_credit", lambda: credits.consume(user_id), atomic=True,
                 compensate=("refund_credit", {"user_id": user_id}))
        url = ctx.step("upload", lambda: storage.upload(path, key=ctx.idempotency_key("upload")))
        ...

- `atomic=True`: the step's database writes commit in the same transaction as its ledger row,
  under the job's lease fence, so they happen exactly once even if the worker is killed at any
  instant. Keep such steps short (on SQLite they hold the write lock).
- `atomic=False` (external effects: an upload, an email): the function runs, then the ledger row
  is written. A crash in between runs it again, so it must be idempotent at the receiving end:
  pass `ctx.idempotency_key(step)` (Stripe's Idempotency-Key, an object name, a message id).
- `compensate=(name, args)`: registered with the step, atomically; if the job ends failed or dead,
  the kind's compensation `name` runs once with `args` (give the consumed credit back).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models.job import Job, JobStep
from ..resilience.classifier import classify
from ..resilience.retry import RetryPolicy, decide
from ..timeutil import utcnow
from .records import Claim, still_held
from .registry import REGISTRY

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LeaseLostError(RuntimeError):
    """This worker no longer holds the job's lease (it expired and another worker took the job)."""


@dataclass
class JobContext:
    """The running job as its handler sees it."""

    claim: Claim
    worker_id: str
    lost: threading.Event = field(default_factory=threading.Event)
    idle: bool = False  # set by `nothing_to_do()`

    def nothing_to_do(self) -> None:
        """Say this run found no work: a successful idle run logs its duration at DEBUG, not INFO.

        Periodic jobs tick every minute; their idle runs were most of an idle console (560 of 686 lines
        in 90 minutes). A run that did work, or failed, still logs at INFO or above.
        """
        self.idle = True

    @property
    def job_id(self) -> int:
        """The job record's id."""
        return self.claim.id

    @property
    def attempt(self) -> int:
        """This attempt's number, from 1."""
        return self.claim.attempt

    @property
    def final_attempt(self) -> bool:
        """Whether a failure now ends the job (no attempts left after this one)."""
        return self.claim.attempt >= self.claim.max_attempts

    @property
    def payload(self) -> dict[str, Any]:
        """The job's JSON payload."""
        return self.claim.payload

    def idempotency_key(self, step: str) -> str:
        """A key that is the same on every attempt of this job's `step` (for external idempotency)."""
        return f"job-{self.claim.id}-{step}"

    def will_retry(self, exc: BaseException) -> bool:
        """Whether the worker will retry this job if the attempt now fails with `exc` (its kind's policy)."""
        kind = REGISTRY.get(self.claim.kind)
        policy = kind.policy if kind is not None else RetryPolicy(permanent_retries=0)
        return decide(classify(exc), self.claim.attempt, self.claim.max_attempts, policy).retry

    def check_lease(self) -> None:
        """Raise `LeaseLostError` if the heartbeat found the lease gone (long handlers call this between steps)."""
        if self.lost.is_set():
            raise LeaseLostError(f"job {self.job_id} attempt {self.attempt}: lease lost")

    def done(self, step: str) -> bool:
        """Whether `step` already completed (on this or an earlier attempt)."""
        return db.session.get(JobStep, (self.claim.id, step)) is not None

    def step(
        self,
        name: str,
        func: Callable[[], T],
        *,
        atomic: bool = False,
        compensate: tuple[str, dict[str, Any]] | None = None,
    ) -> T:
        """Run `func` once for this job: a completed step returns its recorded result instead."""
        self.check_lease()
        session = db.session
        recorded = session.execute(select(JobStep).where(JobStep.job_id == self.claim.id, JobStep.name == name))
        existing = recorded.scalar_one_or_none()
        if existing is not None:
            logger.info("Job %s step %s already done (attempt %s); skipped", self.claim.id, name, existing.attempt)
            result = existing.result
            session.commit()
            return result  # type: ignore[no-any-return]
        session.commit()
        if atomic:
            # The fence first: it takes the row (and on SQLite the write) lock before the step's reads.
            if not still_held(session, self.claim):
                session.rollback()
                raise LeaseLostError(f"job {self.job_id}: lease lost before step {name}")
            result = func()
            return self._record(name, result, compensate, fenced=True)
        result = func()
        return self._record(name, result, compensate, fenced=False)

    def _record(self, name: str, result: T, compensate: tuple[str, dict[str, Any]] | None, *, fenced: bool) -> T:
        session = db.session
        values: dict[str, Any] = {}
        if compensate is not None:
            comp_name, args = compensate
            job = session.execute(select(Job.compensations).where(Job.id == self.claim.id)).scalar_one()
            entry = {"step": name, "name": comp_name, "args": args, "state": "pending", "attempts": 0}
            values["compensations"] = [*(job or []), entry]
        if (not fenced or values) and not still_held(session, self.claim, **values):
            session.rollback()
            raise LeaseLostError(f"job {self.job_id}: lease lost during step {name}")
        session.add(JobStep(job_id=self.claim.id, name=name, result=result, attempt=self.attempt, created_at=utcnow()))
        try:
            session.commit()
        except IntegrityError as exc:
            # Another holder of this job recorded the step first; our writes are rolled back with it.
            session.rollback()
            raise LeaseLostError(f"job {self.job_id}: step {name} was recorded by another attempt") from exc
        return result

    def progress(self, percent: float) -> None:
        """Report how far the job is (0-100), visible on its record while it runs."""
        self.check_lease()
        clamped = max(0.0, min(100.0, float(percent)))
        if not still_held(db.session, self.claim, progress=clamped):
            db.session.rollback()
            raise LeaseLostError(f"job {self.job_id}: lease lost")
        db.session.commit()
