"""The worker process: claim, run, heartbeat, reap, schedule; stop gracefully on SIGTERM.

`concurrency` threads each loop claim → run → record. The main thread beats every
`heartbeat_seconds`: it extends the leases of the jobs this worker runs (a job whose lease was
taken over is told through its context), refreshes the worker's own heartbeat row, reaps other
workers' expired leases and ticks the periodic scheduler.

SIGTERM (or SIGINT) stops claiming and lets running jobs finish for `shutdown_grace_seconds`;
a second signal, or the end of the grace period, hands the still-running jobs back to the queue
(their attempt is not counted) and exits.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from ...log.context import log_context
from ...log.events import log_performance_metric
from .. import timeutil
from ..extensions import db
from ..models.job import CLAIMABLE, DEAD, FAILED, RETRYING, RUNNING, Job, JobWorker
from ..resilience.history import error_code
from ..signals import job_failed, send
from ..tracing import job_span
from . import records
from .compensation import run_compensations
from .context import JobContext, LeaseLostError
from .registry import REGISTRY, app_schedules
from .scheduler.periodic import PeriodicScheduler

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: A job's outcomes that end it (a retrying attempt or a lost lease does not).
ENDED = frozenset({"succeeded", FAILED, DEAD})


@dataclass
class WorkerOptions:
    """How one worker runs (the CLI flags, plus timing from app.config)."""

    concurrency: int = 1
    queues: Sequence[str] | None = None  # None: every queue
    burst: bool = False  # exit when no job is due now
    drain: bool = False  # exit when no job is waiting, scheduled or running at all (tests)
    max_jobs: int | None = None  # exit after this many jobs (--once is max_jobs=1)
    schedule: bool = True  # tick the periodic scheduler
    max_seconds: float | None = None  # hard stop (tests, benchmarks)
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    shutdown_grace_seconds: float = 30.0
    install_signals: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def options_from_app(app: Flask, **overrides: Any) -> WorkerOptions:
    """Worker options from the app's job settings, with CLI overrides."""
    from . import runtime

    s = runtime(app).settings
    base = WorkerOptions(
        concurrency=s.concurrency,
        lease_seconds=s.lease_seconds,
        heartbeat_seconds=s.heartbeat_seconds,
        poll_seconds=s.poll_seconds,
        shutdown_grace_seconds=s.shutdown_grace_seconds,
    )
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


class Worker:
    """One worker process's engine."""

    def __init__(self, app: Flask, options: WorkerOptions, *, clock: Clock = timeutil.utcnow, rng: Any = None) -> None:
        self.app = app
        self.options = options
        self.clock = clock
        self.rng = rng or random.uniform
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()  # stop claiming
        self.force = threading.Event()  # stop waiting for running jobs
        # Signals received, handled by the main loop: a handler that sets an Event or logs can deadlock on a
        # lock the interrupted main thread holds (it did: `make run` hung on Ctrl+C). deque.append takes none.
        self._signals: deque[int] = deque()
        self.processed = 0
        self._claimed = 0
        self._lock = threading.Lock()
        self._running: dict[int, JobContext] = {}
        self._idle: set[int] = set()
        self._scheduler = PeriodicScheduler(overrides=app_schedules(app))
        self._queues = list(options.queues) if options.queues else None

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or burst/drain/max_jobs says so); the number of jobs processed."""
        from . import import_job_modules, runtime

        import_job_modules(self.app)
        self._dispatcher = runtime(self.app).dispatcher
        self._backend = runtime(self.app).backend
        self._wait_queues = self._queues or REGISTRY.queues()
        previous: dict[int, Any] = {}
        if self.options.install_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            return self._run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self) -> int:
        started = time.monotonic()
        with self.app.app_context():
            self._register()
            threads = [
                threading.Thread(target=self._thread_main, args=(n,), name=f"job-worker-{n}", daemon=True)
                for n in range(max(1, self.options.concurrency))
            ]
            for thread in threads:
                thread.start()
            logger.info(
                "Worker %s started: queues=%s concurrency=%s backend=%s",
                self.worker_id,
                ",".join(self._wait_queues),
                self.options.concurrency,
                self._backend,
            )
            next_beat = 0.0
            stop_requested_at: float | None = None
            while any(t.is_alive() for t in threads):
                self._handle_signals()
                now_mono = time.monotonic()
                if self.options.max_seconds is not None and now_mono - started > self.options.max_seconds:
                    self.stopping.set()
                if self.stopping.is_set() and stop_requested_at is None:
                    stop_requested_at = now_mono
                if stop_requested_at is not None and (
                    self.force.is_set() or now_mono - stop_requested_at > self.options.shutdown_grace_seconds
                ):
                    self._release_running()
                    break
                if now_mono >= next_beat:
                    self._beat()
                    next_beat = now_mono + self.options.heartbeat_seconds
                self._check_drained(threads)
                self.stopping.wait(min(0.1, self.options.heartbeat_seconds))
                if self.stopping.is_set():
                    self._dispatcher.notify(self._wait_queues)  # unblock local waiters
                    time.sleep(0.05)
            self._unregister()
            db.session.remove()
        logger.info("Worker %s stopped after %s jobs", self.worker_id, self.processed)
        return self.processed

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)  # nothing else: see `_signals`

    def _handle_signals(self) -> None:
        """Act on the signals received since the last loop: the first stops claiming, a second hands jobs back."""
        while self._signals:
            signum = self._signals.popleft()
            if self.stopping.is_set():
                logger.warning("Worker %s: second signal %s, handing running jobs back now", self.worker_id, signum)
                self.force.set()
                continue
            logger.info("Worker %s: signal %s, finishing running jobs then stopping", self.worker_id, signum)
            self.stopping.set()

    def stop(self, *, force: bool = False) -> None:
        """Ask the worker to stop (from another thread)."""
        self.stopping.set()
        if force:
            self.force.set()

    def _thread_main(self, index: int) -> None:
        with self.app.app_context():
            try:
                while not self.stopping.is_set():
                    if not self._take_slot():
                        break
                    claim = self._claim()
                    if claim is None:
                        self._give_slot_back()
                        with self._lock:
                            self._idle.add(index)
                        if self.options.burst and not self.options.drain:
                            break
                        self._dispatcher.wait(self._wait_queues, self.options.poll_seconds)
                        continue
                    with self._lock:
                        self._idle.discard(index)
                    try:
                        self._execute(claim)
                    except SQLAlchemyError as exc:
                        # The database failed the bookkeeping: the job's lease expires and it is retried.
                        db.session.rollback()
                        logger.error("Worker %s: recording job %s failed: %s", self.worker_id, claim.id, exc)
                        self.stopping.wait(self.options.poll_seconds)
            finally:
                with self._lock:
                    self._idle.add(index)
                db.session.remove()

    def _take_slot(self) -> bool:
        with self._lock:
            if self.options.max_jobs is not None and self._claimed >= self.options.max_jobs:
                return False
            self._claimed += 1
            return True

    def _give_slot_back(self) -> None:
        with self._lock:
            self._claimed -= 1

    def _claim(self) -> records.Claim | None:
        try:
            return records.claim(self.worker_id, self._queues, self.options.lease_seconds, now=self.clock())
        except SQLAlchemyError as exc:
            db.session.rollback()
            logger.warning("Worker %s could not claim a job: %s", self.worker_id, exc)
            self.stopping.wait(self.options.poll_seconds)
            return None

    def _check_drained(self, threads: list[threading.Thread]) -> None:
        if not self.options.drain or self.stopping.is_set():
            return
        with self._lock:
            idle = len(self._idle) >= len(threads) and not self._running
        if not idle:
            return
        stmt = select(func.count()).select_from(Job).where(Job.status.in_((*CLAIMABLE, RUNNING)))
        if self._queues:
            stmt = stmt.where(Job.queue.in_(self._queues))
        if db.session.execute(stmt).scalar_one() == 0:
            self.stopping.set()
        db.session.commit()

    # -- one job ------------------------------------------------------------------------------

    def _execute(self, claim: records.Claim) -> None:
        kind = REGISTRY.get(claim.kind)
        ctx = JobContext(claim, self.worker_id)
        with self._lock:
            self._running[claim.id] = ctx
        started = time.perf_counter()
        outcome = "succeeded"
        # The originating request's id and user, beside the job's own id: every line and error event of the
        # attempt (app.log, errors.log, performance.log, the error store) traces back to what the user was shown.
        with (
            log_context(job_id=claim.id, request_id=claim.request_id, user_id=claim.user_id),
            job_span(self.app, kind=claim.kind, job_id=claim.id, attempt=claim.attempt, traceparent=claim.traceparent),
        ):
            try:
                if kind is None:
                    raise records.UnknownJobKindError(f"no handler is registered for job kind {claim.kind!r}")
                result = kind.handler(ctx)
            except LeaseLostError as exc:
                db.session.rollback()
                outcome = "lease_lost"
                # If the lease is in fact still ours, hand the job back rather than sit on it.
                released = records.release(claim, now=self.clock())
                logger.warning("Job %s (%s) abandoned (released: %s): %s", claim.id, claim.kind, released, exc)
            except Exception as exc:  # noqa: BLE001 - classified, recorded with its real message, retried or dead-lettered
                db.session.rollback()
                outcome = self._record_failure(claim, kind, exc)
            else:
                if not records.complete(claim, result, now=self.clock()):
                    outcome = "lease_lost"
                    logger.warning("Job %s (%s) finished after its lease was taken over", claim.id, claim.kind)
            finally:
                with self._lock:
                    self._running.pop(claim.id, None)
                    self.processed += 1
            if outcome in ENDED:
                self._count_ended(claim.kind, failed=outcome != "succeeded")
            elapsed_ms = (time.perf_counter() - started) * 1000
            level = logging.DEBUG if outcome == "succeeded" and ctx.idle else logging.INFO
            log_performance_metric(
                "job_duration",
                round(elapsed_ms, 3),
                level=level,
                job_kind=claim.kind,
                attempt=claim.attempt,
                outcome=outcome,
            )

    def _count_ended(self, kind: str, *, failed: bool) -> None:
        # The jobs' error budget (seed 003), in the SLO counter the app set up (none when SLO_ENABLED is off).
        counter = self.app.extensions.get("slo_counter")
        if counter is not None:
            counter.count_job(kind, failed=failed)

    def _record_failure(self, claim: records.Claim, kind: Any, exc: Exception) -> str:
        result = records.fail(claim, exc, kind=kind, now=self.clock(), rng=self.rng)
        if result is None:
            logger.warning("Job %s (%s) failed after its lease was taken over: %s", claim.id, claim.kind, exc)
            return "lease_lost"
        level = logging.WARNING if result.status == RETRYING else logging.ERROR
        logger.log(
            level,
            "Job %s (%s) attempt %s/%s failed: %s: %s; %s",
            claim.id,
            claim.kind,
            claim.attempt,
            claim.max_attempts,
            error_code(exc),
            exc,
            result.reason,
            exc_info=result.status != RETRYING,
        )
        _record_error_stats(self.app, exc, claim, result)
        if result.status in (FAILED, DEAD):
            run_compensations(claim.id)
        return result.status

    # -- housekeeping on the main thread ------------------------------------------------------

    def _beat(self) -> None:
        now = self.clock()
        try:
            # Snapshot first: a job claimed after the snapshot must not be judged by this beat.
            with self._lock:
                running = dict(self._running)
            held = records.extend_leases(self.worker_id, running, self.options.lease_seconds, now=now)
            for job_id, ctx in running.items():
                if job_id not in held:
                    ctx.lost.set()
            self._touch(now, len(running))
            for job_id, status in records.reap_expired(now=now):
                if status in (FAILED, DEAD):
                    run_compensations(job_id)
                    job = db.session.get(Job, job_id)
                    if job is not None:  # its worker died on the last attempt: it ended, failed
                        self._count_ended(job.kind, failed=True)
            if self.options.schedule:
                self._scheduler.tick(now)
        except SQLAlchemyError as exc:
            db.session.rollback()
            logger.warning("Worker %s heartbeat failed: %s", self.worker_id, exc)

    def _register(self) -> None:
        now = self.clock()
        db.session.add(
            JobWorker(
                worker_id=self.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=",".join(self._queues or ["*"]),
                concurrency=self.options.concurrency,
                running=0,
                processed=0,
                started_at=now,
                last_seen_at=now,
            )
        )
        db.session.commit()

    def _touch(self, now: datetime, running: int, **values: Any) -> None:
        db.session.execute(
            update(JobWorker)
            .where(JobWorker.worker_id == self.worker_id)
            .values(last_seen_at=now, running=running, processed=self.processed, **values)
        )
        db.session.commit()

    def _unregister(self) -> None:
        try:
            self._touch(self.clock(), 0, stopped_at=self.clock())
        except SQLAlchemyError as exc:
            db.session.rollback()
            logger.warning("Worker %s could not record its stop: %s", self.worker_id, exc)

    def _release_running(self) -> None:
        """Hand jobs still running back to the queue, their attempt not counted (shutdown)."""
        with self._lock:
            running = list(self._running.values())
        now = self.clock()
        for ctx in running:
            ctx.lost.set()
            records.release(ctx.claim, now=now, commit=False)
            logger.warning("Worker %s shutting down: job %s handed back to the queue", self.worker_id, ctx.claim.id)
        db.session.commit()


def _record_error_stats(app: Flask, exc: Exception, claim: records.Claim, outcome: records.Outcome) -> None:
    # Monitoring listens (error statistics); the worker, a layer below it, only says what happened.
    send(job_failed, app, error=exc, claim=claim, outcome=outcome)
