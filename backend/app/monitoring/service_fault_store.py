"""The storage of configuration faults: one `service_faults` row per (service, operation), written in time order.

`service_faults.ServiceFaultMonitor` decides what to write and when (memory, throttling, the writer
thread); this module holds the SQL: record a refusal (reopening a cleared fault only when the refusal came
after the clear), clear one operation's fault or a whole service's, and read the open ones. Each write is
its own short transaction on the engine it is given, never the request's session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import Engine, case, literal, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..extensions import db
from ..models.service_fault import ServiceFault
from ..timeutil import iso

# The fault lines keep the logger they had before the split ("configuration fault recorded" is the line an
# operator's log alert matches): both halves of the monitor log as one.
logger = logging.getLogger("backend.app.monitoring.service_faults")

Key = tuple[str, str]  # (service, operation)

_table = ServiceFault.__table__


@dataclass
class Refusal:
    """Refusals of one operation seen by this process and not yet written."""

    error_code: str
    http_status: int | None
    reason: str
    count: int
    first_at: datetime
    last_at: datetime

    def merge(self, later: Refusal) -> None:
        """Add refusals seen after these: counts add up, the latest error and time win."""
        self.count += later.count
        self.error_code, self.http_status, self.reason = later.error_code, later.http_status, later.reason
        self.last_at = max(self.last_at, later.last_at)


def fault_view(row: Any) -> dict[str, Any]:
    """The JSON form of a `service_faults` row (health, alerts, CLI)."""
    return {
        "service": row.service,
        "operation": row.operation,
        "code": row.error_code,
        "http_status": row.http_status,
        "reason": row.reason,
        "count": row.count,
        "since": iso(row.first_seen_at),
        "last_seen": iso(row.last_seen_at),
    }


def open_faults(conn: Any, service: str | None = None) -> list[dict[str, Any]]:
    """Every uncleared fault (of one service), most recent first; `conn` is a connection or a session."""
    stmt = select(_table).where(_table.c.cleared_at.is_(None))
    if service is not None:
        stmt = stmt.where(_table.c.service == service)
    rows = conn.execute(stmt.order_by(_table.c.last_seen_at.desc(), _table.c.id.desc())).all()
    return [fault_view(row) for row in rows]


def clear_service(engine: Engine, service: str, at: datetime) -> int:
    """Clear every open fault of `service` (an admin reset at `at`); how many were open."""
    with engine.begin() as conn:
        return conn.execute(
            update(_table).where(_table.c.service == service, _table.c.cleared_at.is_(None)).values(cleared_at=at)
        ).rowcount


def clear_operation(engine: Engine, key: Key, at: datetime) -> int:
    """Clear the open fault of one operation that succeeded at `at`, unless a refusal came after; 1 if cleared."""
    service, operation = key
    with engine.begin() as conn:
        return conn.execute(
            update(_table)
            .where(
                _table.c.service == service,
                _table.c.operation == operation,
                _table.c.cleared_at.is_(None),
                _table.c.last_seen_at <= at,  # a refusal after this success keeps it open
            )
            .values(cleared_at=at)
        ).rowcount


def record_refusal(engine: Engine, key: Key, refusal: Refusal) -> bool:
    """Write refusals: add to the open fault, reopen a cleared one, or insert it; True when newly inserted."""
    service, operation = key
    c = _table.c
    cleared = c.cleared_at.is_not(None)
    first, last = literal(refusal.first_at, c.first_seen_at.type), literal(refusal.last_at, c.last_seen_at.type)
    values = {
        "error_code": refusal.error_code,
        "http_status": refusal.http_status,
        "reason": refusal.reason,
        # Reopened after a clear: a new fault, counted from here. Still open: add up (other processes too).
        "count": case((cleared, refusal.count), else_=c.count + refusal.count),
        "first_seen_at": case((cleared, first), else_=c.first_seen_at),
        "last_seen_at": case((cleared | (c.last_seen_at < last), last), else_=c.last_seen_at),
        "cleared_at": None,
    }
    reopenable = update(_table).where(
        c.service == service,
        c.operation == operation,
        # A clear written after the last of these refusals (a success, an admin reset) wins: they predate
        # the fix. One after it (the key is still wrong) reopens the fault.
        or_(c.cleared_at.is_(None), c.cleared_at < last),
    )
    with engine.begin() as conn:
        if conn.execute(reopenable.values(**values)).rowcount:
            return False
    try:
        with engine.begin() as conn:
            conn.execute(
                _table.insert().values(
                    service=service,
                    operation=operation,
                    error_code=refusal.error_code,
                    http_status=refusal.http_status,
                    reason=refusal.reason,
                    count=refusal.count,
                    first_seen_at=refusal.first_at,
                    last_seen_at=refusal.last_at,
                )
            )
    except IntegrityError:
        # Another process inserted it first (merge into its row), or it was cleared after these refusals.
        with engine.begin() as conn:
            conn.execute(reopenable.values(**values))
        return False
    return True


class FaultWriter:
    """The write half of `ServiceFaultMonitor`: pending changes, written in time order off the call path.

    The monitor's call path only fills the pending dicts under `_lock` and calls `_kick()`; a short-lived
    writer thread (or a caller's `flush()`) writes them with the functions above, and puts back what a
    failed write took. The monitor creates the settings below and the pending state (`_reset_state`).
    """

    _app: Flask
    write_seconds: float
    retry_seconds: float
    _clock: Callable[[], float]
    _engine: Engine | None

    def _kick(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._thread is not None:
                self._wake.set()
                return
            # Started under the lock, so two calls never start two writers; it ends when nothing is left.
            self._thread = threading.Thread(target=self._run, name="service-faults-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Write what is due, wait for what is throttled, and end when nothing is left."""
        while True:
            with self._lock:
                wait = self._due_in()
                if wait is None or self._closed:
                    self._thread = None
                    return
                self._wake.clear()
            if wait > 0:
                self._wake.wait(wait)
                continue
            try:
                written = self._write(force=False)
            except Exception:  # the writer must outlive one bad write; the failure is logged
                logger.exception("Service faults: the writer failed")
                written = False
            if not written:
                self._stopping.wait(self.retry_seconds)

    def _due_in(self) -> float | None:
        """Seconds until something is due (0: now), or None when nothing is pending. Holds the lock."""
        if self._clears or self._checks or self._service_clears:
            return 0.0
        if not self._refusals:
            return None
        now = self._clock()
        waits = [self._written_at.get(key, -float("inf")) + self.write_seconds - now for key in self._refusals]
        return max(0.0, min(waits))

    def flush(self) -> bool:
        """Write everything pending now, throttled refusals included; False if the database refused."""
        try:
            return self._write(force=True)
        except Exception:  # monitoring never raises into its caller
            logger.exception("Service faults: flush failed")
            return False

    def _write(self, *, force: bool) -> bool:
        with self._flush_lock:
            with self._lock:
                now = self._clock()
                due = {
                    key: r
                    for key, r in self._refusals.items()
                    if force or now - self._written_at.get(key, -float("inf")) >= self.write_seconds
                }
                for key in due:
                    del self._refusals[key]
                clears, self._clears = self._clears, {}
                checks, self._checks = self._checks, {}
                if checks:
                    self._refreshed_at = now  # successes meanwhile wait for this look instead of asking again
                service_clears, self._service_clears = self._service_clears, {}
            if not (due or clears or checks or service_clears):
                return True
            try:
                self._apply(due, clears, checks, service_clears)
            except SQLAlchemyError:
                self._keep(due, clears, checks, service_clears)
                self.failed_writes += 1
                if self._failing_since is None:  # once per outage, not once per retry
                    self._failing_since = self._clock()
                    logger.warning(
                        "Service faults: could not write %s change(s); kept and retried every %s s",
                        len(due) + len(clears) + len(checks) + len(service_clears),
                        self.retry_seconds,
                        exc_info=True,
                    )
                return False
            if self._failing_since is not None:
                logger.info("Service faults: the database takes writes again; pending changes written")
                self._failing_since = None
            return True

    def _keep(
        self,
        due: dict[Key, Refusal],
        clears: dict[Key, datetime],
        checks: dict[Key, datetime],
        service_clears: dict[str, datetime],
    ) -> None:
        """Put back what a failed write took, merged with what arrived meanwhile."""
        with self._lock:
            for key, taken in due.items():
                arrived = self._refusals.get(key)
                if arrived is not None:
                    taken.merge(arrived)
                self._refusals[key] = taken
            for target, items in ((self._clears, clears), (self._checks, checks)):
                for key, at in items.items():
                    target[key] = max(at, target.get(key, at))
            for service, at in service_clears.items():
                self._service_clears[service] = max(at, self._service_clears.get(service, at))

    def _engine_for_app(self) -> Engine:
        if self._engine is None:
            with self._app.app_context():
                self._engine = db.engine
        return self._engine

    def _apply(
        self,
        refusals: dict[Key, Refusal],
        clears: dict[Key, datetime],
        checks: dict[Key, datetime],
        service_clears: dict[str, datetime],
    ) -> None:
        """Write the changes in time order; each one written leaves its dict, so a failure keeps only the rest."""
        engine = self._engine_for_app()
        for service, at in list(service_clears.items()):
            cleared = clear_service(engine, service, at)
            del service_clears[service]
            if cleared:
                logger.warning("Service faults: %s configuration fault(s) of %s cleared by an admin", cleared, service)
        for key, refusal in list(refusals.items()):
            self._upsert(engine, key, refusal)
            del refusals[key]
            with self._lock:
                self._written_at[key] = self._clock()
        if checks:
            with engine.connect() as conn:
                open_now = {(f["service"], f["operation"]) for f in open_faults(conn)}
            for key, at in checks.items():
                if key in open_now:
                    clears[key] = max(at, clears.get(key, at))
            checks.clear()
            with self._lock:
                self._open = (open_now - set(clears)) | set(self._refusals)
        for (service, operation), at in list(clears.items()):
            cleared = clear_operation(engine, (service, operation), at)
            del clears[(service, operation)]
            if cleared:
                logger.info("Service faults: %s %s succeeded again; its fault is cleared", service, operation)
            with self._lock:
                self._written_at.pop((service, operation), None)

    def _upsert(self, engine: Engine, key: Key, refusal: Refusal) -> None:
        if not record_refusal(engine, key, refusal):
            return  # an open fault counted on, or one a later clear keeps closed: nothing new to say
        service, operation = key
        logger.warning(
            "%s %s: configuration fault recorded (%s, %s); an operator must fix the credentials or permissions",
            service,
            operation,
            refusal.error_code,
            refusal.reason,
            extra={"service": service, "operation": operation, "error_code": refusal.error_code},
        )

    def close(self) -> None:
        """Stop the writer and write what is left (process exit)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stopping.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        self.flush()
