"""Admin overrides shared through the app database, for deployments without Redis (#15 points 1 and 2).

Without Redis, breaker state lives in each process's memory. Counting calls per process is honest (each
process judges what it sees), but an admin action is not: `flask monitoring reset storage` in a shell, or a
force-open answered by one gunicorn worker, must reach every process that serves or renders. So admin
actions and fault-injection rules are written to the `shared_overrides` table, and each process re-reads it
at most every `refresh_seconds` (1 s by default, `OVERRIDES_REFRESH_SECONDS`), applying every row whose
`version` it has not applied yet. The hot path pays one clock comparison per call; the table has one row per
breaker and per fault rule, read in one query about once a second by each busy process, on a short-lived
thread that a call waits for at most 0.25 s (a hung database never holds a call longer).

An action is written first and applied locally only once written: if the database refuses the write, the
action raises `AdminActionNotAppliedError` (503) and nothing changed anywhere, never a false success.
A database in memory (`sqlite://`) cannot be shared by two processes, so there is nothing to share: such an
app keeps the plain memory store and says its scope is this process.
All reads and writes bypass the `database` breaker: a forced-open database breaker must still be resettable.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..models.shared_override import SharedOverride
from .breaker_store import (
    AdminActionNotAppliedError,
    Admission,
    BreakerConfig,
    BreakerState,
    MemoryBreakerStore,
    Outcome,
)
from .database_breaker import bypassed

logger = logging.getLogger(__name__)

BREAKER = "breaker"
FAULT = "fault"
_table = SharedOverride.__table__


def database_is_shared(uri: str | None) -> bool:
    """Whether other processes can open the same database (a file or a server, not `sqlite://` in memory)."""
    if not uri:
        return False
    url = make_url(uri)
    if url.get_backend_name() != "sqlite":
        return True
    database = url.database or ""
    return database not in ("", ":memory:") and "mode=memory" not in str(url)


@dataclass(frozen=True)
class Override:
    """One row of `shared_overrides`."""

    kind: str
    name: str
    value: dict[str, Any]
    version: int
    updated_at: float
    expires_at: float | None


class OverrideTable:
    """Reads and writes `shared_overrides` on its own short connections (never a request's session)."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    def read(self, kind: str, now: float | None = None) -> list[Override]:
        """Every live override of `kind` (raises SQLAlchemyError when the database does not answer)."""
        c = _table.c
        stmt = select(_table).where(c.kind == kind)
        if now is not None:
            stmt = stmt.where(or_(c.expires_at.is_(None), c.expires_at > now))
        with bypassed(), self._engine().connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            Override(row.kind, row.name, json.loads(row.value), row.version, row.updated_at, row.expires_at)
            for row in rows
        ]

    def put(self, kind: str, name: str, value: dict[str, Any], now: float, expires_at: float | None = None) -> int:
        """Write (or replace) one override; returns its new version, or raises AdminActionNotAppliedError."""
        c = _table.c
        values = {"value": json.dumps(value, sort_keys=True), "updated_at": now, "expires_at": expires_at}
        where = (c.kind == kind, c.name == name)
        try:
            with bypassed():
                for _ in range(2):  # an insert racing another process's insert becomes an update
                    with self._engine().begin() as conn:
                        if conn.execute(update(_table).where(*where).values(**values, version=c.version + 1)).rowcount:
                            return int(conn.scalar(select(c.version).where(*where)) or 0)
                    try:
                        with self._engine().begin() as conn:
                            conn.execute(insert(_table).values(kind=kind, name=name, version=1, **values))
                        return 1
                    except IntegrityError:
                        continue
        except SQLAlchemyError as exc:
            raise _not_applied(name, exc) from exc
        raise AdminActionNotAppliedError("The admin action could not be saved; nothing was changed.")

    def delete(self, kind: str, names: list[str]) -> int:
        """Remove the overrides of `names`; how many existed (AdminActionNotAppliedError if the database refuses)."""
        if not names:
            return 0
        c = _table.c
        try:
            with bypassed(), self._engine().begin() as conn:
                return int(conn.execute(delete(_table).where(c.kind == kind, c.name.in_(names))).rowcount or 0)
        except SQLAlchemyError as exc:
            raise _not_applied(", ".join(names), exc) from exc


def _not_applied(name: str, exc: SQLAlchemyError) -> AdminActionNotAppliedError:
    return AdminActionNotAppliedError(
        "The admin action was not applied: the database every process reads it from refused the write "
        f"({type(exc.orig if getattr(exc, 'orig', None) is not None else exc).__name__}). Nothing was changed.",
        details={"service": name[:64], "shared_through": "database"},
    )


class SharedOverrideStore:
    """Breaker state in this process's memory; admin overrides shared through the app database."""

    def __init__(
        self,
        table: OverrideTable,
        *,
        refresh_seconds: float = 1.0,
        wait_seconds: float = 0.25,
        local: MemoryBreakerStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.local = local or MemoryBreakerStore()
        self.refresh_seconds = max(0.0, refresh_seconds)
        self._clock = clock
        self._next_sync = float("-inf")
        self.wait_seconds = wait_seconds
        self._applied: dict[str, int] = {}
        self._lock = threading.Lock()  # applying overrides vs an admin action in this process
        self._kick_lock = threading.Lock()  # starting the reader
        self._reader: threading.Thread | None = None
        self._failing = False
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child (a gunicorn worker): no reader thread, fresh locks, read again on first use."""
        self._lock, self._kick_lock = threading.Lock(), threading.Lock()
        self._reader = None
        self._next_sync = float("-inf")

    @property
    def storage(self) -> str:
        """'memory': the counts are this process's (admin overrides are shared, see `shared_through`)."""
        return "memory"

    @property
    def shared_through(self) -> str:
        """Where admin actions are shared: the database."""
        return "database"

    def sync(self, *, force: bool = False) -> None:
        """Apply overrides written since the last look, at most every `refresh_seconds` (always with `force`).

        The read runs on a short-lived thread and a call waits for it at most `wait_seconds`: a hung database
        delays no call by more than that (the call goes on with the state it has, and the read lands later).
        While this process's `database` breaker is open or half-open the database is known to be down, so no
        read is tried behind its back (an admin action could not be written then either).
        """
        if not force and self._clock() < self._next_sync:
            return
        with self._kick_lock:
            if not force and self._clock() < self._next_sync:
                return
            self._next_sync = self._clock() + self.refresh_seconds
            if self._database_refusing():
                return
            reader = self._reader
            if reader is None:
                reader = self._reader = threading.Thread(target=self._read, name="breaker-overrides", daemon=True)
                reader.start()
        reader.join(None if force else self.wait_seconds)

    def _database_refusing(self) -> bool:
        state = self.local.peek_state("database")
        return state in (BreakerState.OPEN, BreakerState.HALF_OPEN)

    def _read(self) -> None:
        try:
            overrides = self.table.read(BREAKER)
        except SQLAlchemyError as exc:
            if not self._failing:  # once per outage; admin actions meanwhile are refused, not lost
                self._failing = True
                logger.warning("Breaker overrides not re-read from the database: %s", type(exc).__name__)
            return
        finally:
            with self._kick_lock:
                self._reader = None
        if self._failing:
            self._failing = False
            logger.info("Breaker overrides are read from the database again")
        with self._lock:
            for item in overrides:
                if self._applied.get(item.name) == item.version:
                    continue
                state = BreakerState(item.value["state"])
                transition = self.local.set_state(item.name, state, item.updated_at)
                self._applied[item.name] = item.version
                if transition is not None:
                    logger.info(
                        "Circuit breaker %s: %s -> %s (admin override from another process)",
                        item.name,
                        transition[0].value,
                        transition[1].value,
                        extra={"breaker": item.name, "new_state": state.value},
                    )

    def acquire(self, name: str, config: BreakerConfig, now: float) -> Admission:
        """Admit or reject one call from this process's state (after the periodic look at overrides)."""
        self.sync()
        return self.local.acquire(name, config, now)

    def record(
        self, name: str, config: BreakerConfig, now: float, outcome: Outcome, epoch: int, trial: bool
    ) -> tuple[BreakerState, BreakerState] | None:
        """Count one outcome in this process."""
        self.sync()
        return self.local.record(name, config, now, outcome, epoch, trial)

    def set_state(self, name: str, state: BreakerState, now: float) -> tuple[BreakerState, BreakerState] | None:
        """Admin override: written to the database first (raises when it cannot be), then applied here."""
        version = self.table.put(BREAKER, name, {"state": state.value}, now)
        with self._lock:
            transition = self.local.set_state(name, state, now)
            self._applied[name] = version
        return transition

    def snapshot(self, name: str, config: BreakerConfig, now: float) -> dict[str, Any]:
        """This process's state and counts (overrides applied)."""
        self.sync()
        return self.local.snapshot(name, config, now)

    def names(self) -> list[str]:
        """Every breaker this process has seen."""
        return self.local.names()

    def clear(self) -> None:
        """Forget local state (overrides are applied again on the next look)."""
        with self._lock:
            self.local.clear()
            self._applied.clear()
            self._next_sync = float("-inf")
