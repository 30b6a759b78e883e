"""Service-level objectives per endpoint group: request outcomes per minute, error budgets, burn rates.

Every response is counted in this process (group, minute → total, 5xx) by an `after_request`
hook and written to `slo_minutes` with an additive upsert by one flusher thread per process (every
`SLO_FLUSH_SECONDS`, default 5, per app) and by the alert evaluator before it reads, so every
process's counts add up in the database.

A group is the request's blueprint (`auth`, `api`, `monitoring`...), or `other`. Objectives come
from `SLOS`: `{"*": {"objective": 0.999, "window_days": 30}, "api": {"objective": 0.995}}`
(default: 99.9% of requests are not 5xx over 30 days, for every group seen).

Burn rate over a window = (bad / total in the window) / (1 - objective): 1 spends the budget
exactly over the SLO window. Multiwindow alerts (Google SRE workbook) fire when both the long
and the short window burn at least the factor:
14.4x over 1 h and 5 m, 6x over 6 h and 30 m, 1x over 3 days and 6 h.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Response, request
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from ..models import SloMinute
from ..monitoring.store import minute_from_epoch, upsert_add

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = 0.999
DEFAULT_WINDOW_DAYS = 30


@dataclass(frozen=True)
class BurnWindow:
    """One multiwindow burn-rate alert: both windows must burn at least `factor`."""

    name: str
    long_seconds: int
    short_seconds: int
    factor: float


BURN_WINDOWS = (
    BurnWindow("1h_5m", 3600, 300, 14.4),
    BurnWindow("6h_30m", 6 * 3600, 1800, 6.0),
    BurnWindow("3d_6h", 3 * 86400, 6 * 3600, 1.0),
)


@dataclass(frozen=True)
class Objective:
    """One group's SLO."""

    group: str
    objective: float = DEFAULT_OBJECTIVE
    window_days: float = DEFAULT_WINDOW_DAYS

    @property
    def budget(self) -> float:
        """The share of requests allowed to fail."""
        return 1.0 - self.objective


def objective_for(app: Flask, group: str) -> Objective:
    """The group's objective from `SLOS` (its own entry over `*` over the default)."""
    slos = app.config.get("SLOS") or {}
    merged = {**slos.get("*", {}), **slos.get(group, {})}
    return Objective(
        group,
        float(merged.get("objective", DEFAULT_OBJECTIVE)),
        float(merged.get("window_days", DEFAULT_WINDOW_DAYS)),
    )


class SloCounter:
    """Per-process counts waiting to be written; flushed by the shared flusher thread and by the evaluator."""

    def __init__(self, app: Flask, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._lock = threading.Lock()
        self._counts: Counter[tuple[int, str, bool]] = Counter()
        self._last_flush = time.monotonic()

    def after_fork(self) -> None:
        """A forked child starts empty: the parent writes what it counted."""
        self._lock = threading.Lock()
        self._counts = Counter()

    def count(self, group: str, bad: bool, *, at: float | None = None) -> None:
        """Count one response."""
        minute = int((at if at is not None else time.time()) // 60)
        with self._lock:
            self._counts[(minute, group, bad)] += 1
        _flusher.ensure_started()

    def due(self) -> bool:
        """Whether the flusher should write this counter now."""
        return bool(self._counts) and time.monotonic() - self._last_flush >= self.interval

    def flush(self) -> int:
        """Write the pending counts (added to every process's); put them back when the write fails."""
        self._last_flush = time.monotonic()
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not counts:
            return 0
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        for (minute, group, bad), n in counts.items():
            row = rows.setdefault((minute, group), {"total": 0, "bad": 0})
            row["total"] += n
            row["bad"] += n if bad else 0
        try:
            with self.app.app_context(), db.engine.begin() as conn:
                upsert_add(
                    conn,
                    SloMinute.__table__,
                    [{"minute": minute_from_epoch(m), "endpoint_group": g, **v} for (m, g), v in sorted(rows.items())],
                    ["minute", "endpoint_group"],
                    ["total", "bad"],
                )
        except SQLAlchemyError as exc:
            # The database is down: keep the counts for the next flush instead of losing them.
            logger.warning("SLO counts not written (%s); kept for the next flush", type(exc).__name__)
            with self._lock:
                self._counts.update(counts)
            return 0
        return sum(counts.values())


class _Flusher:
    """One daemon thread per process flushing every live counter (apps are held weakly)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.counters: weakref.WeakSet[SloCounter] = getattr(self, "counters", weakref.WeakSet())

    def add(self, counter: SloCounter) -> None:
        """Flush `counter` from now on, while its app lives."""
        self.counters.add(counter)

    def ensure_started(self) -> None:
        """Start the thread on first use (never at import, never in a parent before fork unless used)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="slo-flusher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(1.0)
            for counter in list(self.counters):
                if counter.due():
                    counter.flush()

    def after_fork(self) -> None:
        """The child gets its own thread and empty counters."""
        self._reset()
        for counter in list(self.counters):
            counter.after_fork()


_flusher = _Flusher()
os.register_at_fork(after_in_child=_flusher.after_fork)


def init_slo(app: Flask) -> SloCounter | None:
    """Count every response by endpoint group (unless SLO_ENABLED is false)."""
    if not app.config.get("SLO_ENABLED", True):
        return None
    counter = SloCounter(app, float(app.config.get("SLO_FLUSH_SECONDS", 5.0)))
    app.extensions["slo_counter"] = counter
    _flusher.add(counter)

    @app.after_request
    def _count(response: Response) -> Response:
        counter.count(request.blueprint or "other", response.status_code >= 500)
        return response

    return counter


def window_counts(group: str, seconds: float, now: datetime) -> tuple[int, int]:
    """(total, bad) of a group over the last `seconds` (whole minutes, the current one included)."""
    since = (now - timedelta(seconds=seconds)).replace(second=0, microsecond=0)
    if seconds % 60 == 0:
        since += timedelta(minutes=1)  # exactly seconds/60 minutes, the current one included
    row = db.session.execute(
        select(func.coalesce(func.sum(SloMinute.total), 0), func.coalesce(func.sum(SloMinute.bad), 0)).where(
            SloMinute.endpoint_group == group, SloMinute.minute >= since, SloMinute.minute <= now
        )
    ).one()
    return int(row[0]), int(row[1])


def burn_rate(group: str, objective: Objective, seconds: float, now: datetime) -> float:
    """How fast the group spends its budget over the window (0 with no traffic)."""
    total, bad = window_counts(group, seconds, now)
    if total == 0:
        return 0.0
    return (bad / total) / objective.budget


def burn_status(app: Flask, group: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every multiwindow pair of the group: both burn rates and whether the alert condition holds."""
    at = now or datetime.now(UTC)
    objective = objective_for(app, group)
    out = []
    for window in BURN_WINDOWS:
        long_rate = burn_rate(group, objective, window.long_seconds, at)
        short_rate = burn_rate(group, objective, window.short_seconds, at)
        out.append(
            {
                "window": window.name,
                "factor": window.factor,
                "long_burn_rate": round(long_rate, 3),
                "short_burn_rate": round(short_rate, 3),
                "firing": long_rate >= window.factor and short_rate >= window.factor,
            }
        )
    return out


def budgets(app: Flask, now: datetime | None = None) -> list[dict[str, Any]]:
    """Each group's objective, traffic over its window and the share of its error budget left."""
    at = now or datetime.now(UTC)
    groups = sorted(set(db.session.execute(select(SloMinute.endpoint_group).distinct()).scalars()))
    out = []
    for group in groups:
        objective = objective_for(app, group)
        total, bad = window_counts(group, objective.window_days * 86400, at)
        allowed = objective.budget * total
        remaining = 1.0 if total == 0 else 1.0 - (bad / allowed if allowed else float("inf"))
        out.append(
            {
                "group": group,
                "objective": objective.objective,
                "window_days": objective.window_days,
                "requests": total,
                "errors": bad,
                "availability": round(1 - bad / total, 6) if total else None,
                "budget_remaining": round(max(remaining, -1e9), 6),
                "burn": burn_status(app, group, at),
            }
        )
    return out
