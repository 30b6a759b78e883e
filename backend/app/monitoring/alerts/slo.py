"""Service-level objectives per endpoint group: request outcomes per minute, error budgets, burn rates.

Every response is counted in this process (group, minute → total, 5xx; a 503 SERVICE_NOT_CONFIGURED
apart, as a set-up gap rather than an outage) by a request observer
(called from the app's one `after_request` hook) and written to `slo_minutes` with an additive
upsert by one flusher thread per process (every `SLO_FLUSH_SECONDS`, default 5, per app) and by the
alert evaluator before it reads, so every process's counts add up in the database.

A group is the request's blueprint (`auth`, `api`, `monitoring`...), or `other`. Objectives come
from `SLOS`: `{"*": {"objective": 0.999, "window_days": 30}, "api": {"objective": 0.995}}`
(default: 99.9% of requests are not 5xx over 30 days, for every group seen). Background jobs have
budgets of their own, a `jobs:<kind>` group per kind: each job counts once when it ends, bad when it
failed for good.

Burn rate over a window = (bad / total in the window) / (1 - objective): 1 spends the budget
exactly over the SLO window. Multiwindow alerts (Google SRE workbook) fire when both the long
and the short window burn at least the factor:
14.4x over 1 h and 5 m, 6x over 6 h and 30 m, 1x over 3 days and 6 h.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, Request, Response, g
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ...extensions import db
from ...models import SloMinute
from ...signals import request_finished
from ...sweeper import Sweeper
from ...timeutil import utcnow
from ..errors.store import minute_from_epoch, upsert_add

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = 0.999
DEFAULT_WINDOW_DAYS = 30

#: What one counted response or job was.
GOOD, BAD, NOT_CONFIGURED = "good", "bad", "not_configured"
#: Background jobs have budgets of their own (seed 003), one per kind: `jobs:render.video`. A job counts
#: once, when it ends: good when it succeeded, bad when it failed for good (a retried attempt is not an end).
JOBS_PREFIX = "jobs:"


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
        self._counts: Counter[tuple[int, str, str]] = Counter()
        self._last_flush = time.monotonic()

    def after_fork(self) -> None:
        """A forked child starts empty: the parent writes what it counted."""
        self._lock = threading.Lock()
        self._counts = Counter()

    def count(self, group: str, outcome: str = GOOD, *, at: float | None = None) -> None:
        """Count one response (or job): `GOOD`, `BAD`, or `NOT_CONFIGURED` (outside the SLO's total)."""
        minute = int((at if at is not None else time.time()) // 60)
        with self._lock:
            self._counts[(minute, group, outcome)] += 1
        _flusher.ensure_started()

    def count_job(self, kind: str, *, failed: bool) -> None:
        """Count one job that ended (succeeded, or failed for good) in its kind's budget."""
        self.count(f"{JOBS_PREFIX}{kind}"[:64], BAD if failed else GOOD)

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
        for (minute, group, outcome), n in counts.items():
            row = rows.setdefault((minute, group), {"total": 0, "bad": 0, "not_configured": 0})
            if outcome == NOT_CONFIGURED:
                row["not_configured"] += n
                continue
            row["total"] += n
            row["bad"] += n if outcome == BAD else 0
        try:
            with self.app.app_context(), db.engine.begin() as conn:
                upsert_add(
                    conn,
                    SloMinute.__table__,
                    [{"minute": minute_from_epoch(m), "endpoint_group": g, **v} for (m, g), v in sorted(rows.items())],
                    ["minute", "endpoint_group"],
                    ["total", "bad", "not_configured"],
                )
        except SQLAlchemyError as exc:
            # The database is down: keep the counts for the next flush instead of losing them.
            logger.warning("SLO counts not written (%s); kept for the next flush", type(exc).__name__)
            with self._lock:
                self._counts.update(counts)
            return 0
        return sum(counts.values())


def _flush_if_due(counter: SloCounter) -> None:
    if counter.due():
        counter.flush()


# One daemon thread per process flushing every live counter (apps are held weakly); a forked child gets its own.
_flusher: Sweeper[SloCounter] = Sweeper(
    "slo-flusher", _flush_if_due, period=lambda _counters: 1.0, after_fork=SloCounter.after_fork
)


def init_slo(app: Flask) -> SloCounter | None:
    """Count every response by endpoint group (unless SLO_ENABLED is false)."""
    if not app.config.get("SLO_ENABLED", True):
        return None
    counter = SloCounter(app, float(app.config.get("SLO_FLUSH_SECONDS", 5.0)))
    app.extensions["slo_counter"] = counter
    _flusher.add(counter)

    def count_response(req: Request, response: Response, _seconds: float | None) -> None:
        status = response.status_code
        outcome = GOOD
        if status >= 500:
            # A feature this server was never set up for is a gap to report, not an outage to burn budget on.
            outcome = NOT_CONFIGURED if g.get("error_code") == "SERVICE_NOT_CONFIGURED" else BAD
        counter.count(req.blueprint or "other", outcome)

    request_finished.connect(app, count_response)
    return counter


def window_counts(group: str, seconds: float, now: datetime) -> tuple[int, int, int]:
    """(total, bad, not configured) of a group over the last `seconds` (whole minutes, the current one included)."""
    since = (now - timedelta(seconds=seconds)).replace(second=0, microsecond=0)
    if seconds % 60 == 0:
        since += timedelta(minutes=1)  # exactly seconds/60 minutes, the current one included
    row = db.session.execute(
        select(
            func.coalesce(func.sum(SloMinute.total), 0),
            func.coalesce(func.sum(SloMinute.bad), 0),
            func.coalesce(func.sum(SloMinute.not_configured), 0),
        ).where(SloMinute.endpoint_group == group, SloMinute.minute >= since, SloMinute.minute <= now)
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def burn_rate(group: str, objective: Objective, seconds: float, now: datetime) -> float:
    """How fast the group spends its budget over the window (0 with no traffic)."""
    total, bad, _ = window_counts(group, seconds, now)
    if total == 0:
        return 0.0
    return (bad / total) / objective.budget


def burn_status(app: Flask, group: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every multiwindow pair of the group: both burn rates and whether the alert condition holds."""
    at = now or utcnow()
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
    at = now or utcnow()
    groups = sorted(set(db.session.execute(select(SloMinute.endpoint_group).distinct()).scalars()))
    out = []
    for group in groups:
        objective = objective_for(app, group)
        total, bad, not_configured = window_counts(group, objective.window_days * 86400, at)
        allowed = objective.budget * total
        consumed = 0.0 if bad == 0 else (bad / allowed if allowed else float("inf"))
        out.append(
            {
                "group": group,
                "kind": "jobs" if group.startswith(JOBS_PREFIX) else "requests",
                "objective": objective.objective,
                "window_days": objective.window_days,
                "requests": total,
                "errors": bad,
                "not_configured": not_configured,
                "availability": round(1 - bad / total, 6) if total else None,
                # Past zero the budget is exhausted: `budget_consumed` says how many budgets were spent (1.5 is
                # half a budget over), so nobody has to read "-14186%".
                "budget_remaining": round(max(1.0 - consumed, -1e9), 6),
                "budget_consumed": round(min(consumed, 1e9), 6),
                "exhausted": consumed >= 1.0,
                "burn": burn_status(app, group, at),
            }
        )
    return out
