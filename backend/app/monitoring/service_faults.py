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
processes on several machines need synchronised clocks, as the breakers' shared state does.) The SQL of
those writes and reads is in `service_fault_store.py`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import Engine

from ..errors import APIError
from ..extensions import db
from ..resilience.breaker import BreakerListener, CircuitBreaker
from ..resilience.classifier import Classification, classify
from ..resilience.state import RecoveryEvent
from ..timeutil import utcnow
from .service_fault_store import FaultWriter, Key, Refusal, open_faults

logger = logging.getLogger(__name__)

EXTENSION = "service_faults"
MISCONFIGURED = "SERVICE_MISCONFIGURED"


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


def describe(fault: dict[str, Any]) -> str:
    """One line for an admin: what refused which operation, how, since when."""
    status = f"HTTP {fault['http_status']}, " if fault.get("http_status") else ""
    return (
        f"{fault['service']} {fault['operation']} refused: {fault['code']} ({status}{fault['reason']}), "
        f"{fault['count']} time(s) since {fault['since']}, last {fault['last_seen']}"
    )


class ServiceFaultMonitor(FaultWriter, BreakerListener):
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
        """Nothing pending, no writer thread, fresh locks (at start, and in a forked child)."""
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
