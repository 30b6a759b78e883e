"""Configuration faults of external services: recorded where they happen, shown and paged everywhere.

A permanent refusal of this server's credentials or permissions (the classifier's `misconfigured`:
401/403/407, Stripe's AuthenticationError/PermissionError, google-auth credential errors) does not heal
by waiting. `ServiceFaultMonitor` listens to every guarded call (`Resilience.listeners`) and keeps one
`service_faults` row per (service, operation) in the app database, so a fault met by a job worker shows
on the web process's health endpoint and pages through the `service_misconfigured` alert rule. The row
is cleared when that operation succeeds again, or when an admin resets the service's breaker (API,
dashboard or CLI alike: the breakers tell their listeners about admin actions).

Monitoring never raises into a call and never makes it wait on the database:
- a call only updates this process's memory; a short-lived writer thread writes each change on its own
  connection in a short transaction (never the request's session, whose open SQLite write transaction
  would otherwise hold it up);
- a refusal seen again is written at most every `SERVICE_FAULTS_WRITE_SECONDS` (5): counts add up in
  memory meanwhile;
- a success touches the database only when this process believes the operation has an open fault: its
  cache of open faults, re-read at most every `SERVICE_FAULTS_REFRESH_SECONDS` (5), and only when a
  success asks;
- a failed write (the database is down) is kept and retried every `SERVICE_FAULTS_RETRY_SECONDS` (5),
  logged once per outage; `flush()` writes what is pending now (health reads, alert evaluation, exit).

Writes are ordered by when things happened, not by when they are written: a success clears only a fault
last seen before it, and a refusal reopens a cleared fault only if it came after the clear, so a slow
writer or another process never resurrects a fixed fault nor hides a new one. (Times are UTC wall clock:
processes on several machines need synchronised clocks, as the breakers' shared state does.)
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import Engine, case, literal, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..errors import APIError
from ..extensions import db
from ..models.service_fault import ServiceFault
from ..resilience.breaker import BreakerListener, CircuitBreaker
from ..resilience.classifier import Classification, classify
from ..resilience.state import RecoveryEvent
from ..timeutil import iso, utcnow

logger = logging.getLogger(__name__)

EXTENSION = "service_faults"
MISCONFIGURED = "SERVICE_MISCONFIGURED"
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


def refusal_of(event: RecoveryEvent) -> Refusal | None:
    """The configuration fault a failed guarded call reveals, if it is one."""
    if event.outcome != "error" or event.error is None:
        return None
    verdict: Classification = classify(event.error)
    if not verdict.misconfigured:
        return None
    code = event.error.code if isinstance(event.error, APIError) else MISCONFIGURED
    now = utcnow()
    return Refusal(code, verdict.status, verdict.reason[:500], 1, now, now)


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


def describe(fault: dict[str, Any]) -> str:
    """One line for an admin: what refused which operation, how, since when."""
    status = f"HTTP {fault['http_status']}, " if fault.get("http_status") else ""
    return (
        f"{fault['service']} {fault['operation']} refused: {fault['code']} ({status}{fault['reason']}), "
        f"{fault['count']} time(s) since {fault['since']}, last {fault['last_seen']}"
    )


class ServiceFaultMonitor(BreakerListener):
    """Records configuration faults from guarded calls and clears them (see the module docstring)."""

    def __init__(
        self,
        app: Flask,
        *,
        write_seconds: float = 5.0,
        refresh_seconds: float = 5.0,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self.write_seconds = max(0.0, write_seconds)
        self.refresh_seconds = max(0.0, refresh_seconds)
        self.retry_seconds = max(0.01, retry_seconds)
        self._clock = clock
        self._engine: Engine | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time: the thread, or a caller's flush()
        self._refusals: dict[Key, Refusal] = {}
        self._clears: dict[Key, datetime] = {}  # successes of operations believed open
        self._checks: dict[Key, datetime] = {}  # successes while the cache was stale: open or not?
        self._service_clears: dict[str, datetime] = {}  # admin resets not yet written
        self._open: set[Key] = set()
        self._refreshed_at: float | None = None
        self._written_at: dict[Key, float] = {}  # when an open fault was last written (the throttle)
        self._failing_since: float | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()  # the retry wait: new refusals must not hammer a database that is down
        self._closed = False
        self.failed_writes = 0

    def after_fork(self) -> None:
        """In a forked child: nothing pending (the parent writes its own), no thread, fresh locks."""
        self._engine = None
        self._reset_state()

    # -- the call path: memory only -----------------------------------------------------------------------

    def __call__(self, event: RecoveryEvent) -> None:
        """The recovery listener: note a refusal, or a success that may clear one."""
        key = (event.service, event.operation)
        if event.outcome == "ok":
            self._succeeded(key)
            return
        refusal = refusal_of(event)
        if refusal is None:
            return
        with self._lock:
            known = self._refusals.get(key)
            if known is None:
                self._refusals[key] = refusal
            else:
                known.merge(refusal)
            self._open.add(key)
        self._kick()

    def _succeeded(self, key: Key) -> None:
        with self._lock:
            if key in self._open:
                self._open.discard(key)
                self._refusals.pop(key, None)  # refused, then fixed before it was written: nothing is open
                self._clears[key] = utcnow()
            elif self._refreshed_at is None or self._clock() - self._refreshed_at >= self.refresh_seconds:
                self._checks[key] = utcnow()  # another process may have recorded one: the writer looks
            else:
                return  # a fresh cache says nothing is open here: no database work at all
        self._kick()

    def admin_action(self, breaker: CircuitBreaker, action: str, actor: str | None) -> None:
        """A breaker reset by an admin clears the service's faults (written now: the admin waits for it)."""
        if action == "reset":
            self.clear_service(breaker.name)

    def clear_service(self, service: str) -> None:
        """Clear every fault of `service` (an admin fixed the configuration); retried later if the write fails."""
        now = utcnow()
        with self._lock:
            self._service_clears[service] = now
            for key in [k for k in self._refusals if k[0] == service and self._refusals[k].last_at <= now]:
                del self._refusals[key]  # seen before the reset: what the admin just declared fixed
            self._open = {k for k in self._open if k[0] != service}
            self._written_at = {k: v for k, v in self._written_at.items() if k[0] != service}
        self.flush()

    # -- the writer ---------------------------------------------------------------------------------------

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
            with engine.begin() as conn:
                cleared = conn.execute(
                    update(_table)
                    .where(_table.c.service == service, _table.c.cleared_at.is_(None))
                    .values(cleared_at=at)
                ).rowcount
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
            with engine.begin() as conn:
                cleared = conn.execute(
                    update(_table)
                    .where(
                        _table.c.service == service,
                        _table.c.operation == operation,
                        _table.c.cleared_at.is_(None),
                        _table.c.last_seen_at <= at,  # a refusal after this success keeps it open
                    )
                    .values(cleared_at=at)
                ).rowcount
            del clears[(service, operation)]
            if cleared:
                logger.info("Service faults: %s %s succeeded again; its fault is cleared", service, operation)
            with self._lock:
                self._written_at.pop((service, operation), None)

    def _upsert(self, engine: Engine, key: Key, refusal: Refusal) -> None:
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
                return
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
            return
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

    # -- reading ------------------------------------------------------------------------------------------

    def open_faults(self, service: str | None = None) -> list[dict[str, Any]]:
        """Every uncleared fault in the database (this process's pending ones written first)."""
        self.flush()
        with self._engine_for_app().connect() as conn:
            return open_faults(conn, service)


_monitors: weakref.WeakSet[ServiceFaultMonitor] = weakref.WeakSet()


def _after_fork() -> None:
    for monitor in list(_monitors):
        monitor.after_fork()


def _close_all() -> None:
    for monitor in list(_monitors):
        try:
            monitor.close()
        except Exception:  # at exit there is nobody left to raise to; say what was lost
            logger.exception("Service faults: final write failed")


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_close_all)


def init_service_faults(app: Flask) -> ServiceFaultMonitor:
    """Listen to the app's guarded calls and breaker admin actions (after `init_resilience`)."""
    monitor = ServiceFaultMonitor(
        app,
        write_seconds=float(app.config.get("SERVICE_FAULTS_WRITE_SECONDS", 5.0)),
        refresh_seconds=float(app.config.get("SERVICE_FAULTS_REFRESH_SECONDS", 5.0)),
        retry_seconds=float(app.config.get("SERVICE_FAULTS_RETRY_SECONDS", 5.0)),
    )
    app.extensions[EXTENSION] = monitor
    app.extensions["resilience"].listeners.append(monitor)
    app.extensions["breakers"].add_listener(monitor)
    _monitors.add(monitor)
    return monitor


def get_monitor(app: Flask) -> ServiceFaultMonitor | None:
    """The app's monitor, if it has one."""
    return app.extensions.get(EXTENSION)  # type: ignore[no-any-return]


def misconfigured_condition(app: Flask, params: dict[str, Any]) -> tuple[bool, float, str]:
    """The `service_misconfigured` alert rule: (firing, open faults, summary); `service` narrows it."""
    service = params.get("service")
    monitor = get_monitor(app)
    if monitor is not None:
        monitor.flush()  # refusals this process saw count too
    faults = open_faults(db.session, str(service) if service else None)
    scope = str(service) if service else "any service"
    if not faults:
        return False, 0.0, f"no configuration fault open for {scope}"
    more = f" (+{len(faults) - 1} more)" if len(faults) > 1 else ""
    return True, float(len(faults)), f"misconfigured: {describe(faults[0])}{more}"
