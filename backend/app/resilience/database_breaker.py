"""The `database` circuit breaker, fed by the engine's connection attempts (#13 point 7).

What is counted: every new DBAPI connection of a server database (PostgreSQL), through SQLAlchemy's
`do_connect` dialect event, which runs just before the driver connects and may make the connection
itself. The guard asks the breaker for admission, connects, and records the outcome (timed, so a
connect slower than the breaker's slow-call threshold counts against it), all in one place; while
the breaker is open no socket is opened at all.

Why connects, and not queries or pool checkouts:
- With `pool_pre_ping` (set for every server database in `create_app`) an outage always surfaces as
  a failed connect: the first checkout after the database went away pings, the ping fails, the pool
  drops every connection made before, and each later checkout has to connect anew. A hung database
  is seen the same way, as connects that wait for `connect_timeout`. So connects are where an
  outage shows, and where a request would otherwise wait.
- A failed query is either the database's verdict on the query (not an outage) or a lost connection,
  which the next checkout turns into a connect anyway: counting queries too would count one outage
  twice, and would put a breaker write on every statement.
- A checkout of a pooled connection that passes its ping proves the database answers, so it is let
  through even while the breaker is open (say, opened by another process through Redis); reading the
  breaker on every checkout would cost a store round trip per request for no gain.

What is a failure: a connect error that `db_errors.is_unreachable` calls unreachable (refused, reset,
timed out, too many clients, shutting down). A server that refuses our login (password, role or
database name) answered: that is a configuration fault, recorded as a success, so the breaker never
hides it behind "unavailable" (`translate_db_error` reports it as `SERVICE_MISCONFIGURED`).

Failing fast: an open breaker raises `DatabaseCircuitOpenError` (db_errors), a `DisconnectionError`.
SQLAlchemy wraps only driver errors raised while connecting (`Connection.__init__` catches
`dialect.loaded_dbapi.Error`), and the pool's checkout loop catches `DisconnectionError` only from its
ping and checkout listeners, never from the reconnect it makes in its handler (pool/base.py
`_ConnectionFairy._checkout`): so the error reaches the caller unchanged and unretried, and every
`except SQLAlchemyError` already in place (job worker, error-statistics writer, HTTP handler) handles
it. The HTTP handler answers 503 `DATABASE_UNAVAILABLE` with the breaker's `Retry-After`.

Recovery: after the breaker's `recovery_timeout` (10 s for the database, `SERVICE_DEFAULTS`) the next
connect is the half-open trial; its success closes the breaker. Readiness probes go through the guard
too, so a load balancer's probes find the recovery even when no user traffic arrives.

`probe(engine)` bypasses the breaker for the admin health probe (health must report the real
database, including that it is back while the breaker still waits for its trial), and `bypassed()` for
the error-statistics writer (a background retry loop at its own pace, whose outage events must land as soon
as the database answers, before a process that holds them can be lost).

SQLite (the embedded default) is not guarded: opening a local file fails or succeeds in microseconds
and "database is locked" is contention that the busy timeout resolves, not an outage; failing fast
would only refuse requests that could succeed a moment later. Its breaker stays closed and idle.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from flask import Flask
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from ..db_errors import DatabaseCircuitOpenError, is_unreachable
from .breaker import CircuitBreaker, CircuitOpenError
from .breaker_store import BreakerState
from .classifier import is_breaker_failure

logger = logging.getLogger(__name__)

SERVICE = "database"
EXTENSION = "database_guards"

_REFUSING = frozenset({BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.FORCED_OPEN})
_bypassed: ContextVar[bool] = ContextVar("database_breaker_bypassed", default=False)
MADE_AROUND = "oriel_made_around_the_breaker"  # a pool entry's info key


class DatabaseGuard:
    """Admits, times and records every new connection of one engine through the `database` breaker."""

    def __init__(self, engine: Engine, breaker: CircuitBreaker) -> None:
        self.engine = engine
        self.breaker = breaker
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error

    def connect(self, dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        """The `do_connect` hook: a new DBAPI connection, or `DatabaseCircuitOpenError` without trying."""
        if _bypassed.get():
            connection = dialect.connect(*cargs, **cparams)
            if _record is not None and self.breaker.state in _REFUSING:
                _record.info[MADE_AROUND] = True  # see `checkout`: not for requests while the breaker refuses
            return connection
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as exc:
            raise DatabaseCircuitOpenError(exc.retry_after or 1, str(exc.details.get("state", "open"))) from exc
        try:
            connection = dialect.connect(*cargs, **cparams)
        except self._driver_error as exc:
            self.breaker.record(permit, failure=self.unreachable(exc))
            raise
        except BaseException as exc:  # recorded either way: a trial's slot must be given back
            self.breaker.record(permit, failure=is_breaker_failure(exc))
            raise
        self.breaker.record(permit, failure=False)
        return connection

    def checkout(self, _dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        """The pool's `checkout` hook: a connection made around a refusing breaker serves only who goes around it.

        Otherwise requests would be served behind the breaker's back on a connection only the writer or the
        probe was allowed to make, and the breaker would never see its trial. Raising DisconnectionError makes
        the pool drop the connection and connect anew, through the breaker (which refuses, fast).
        """
        if not record.info.get(MADE_AROUND) or _bypassed.get():
            return
        if self.breaker.state in _REFUSING:
            raise sa_exc.DisconnectionError("a connection made around the open database breaker")
        record.info.pop(MADE_AROUND, None)  # the breaker closed since: an ordinary connection now

    def unreachable(self, exc: Exception) -> bool:
        """Whether a driver error raised while connecting means the database is out (see the module docstring)."""
        return is_unreachable(sa_exc.DBAPIError.instance(None, None, exc, self._driver_error))


def install_database_breaker(app: Flask) -> list[DatabaseGuard]:
    """Guard every server-database engine of `app` with its `database` breaker (SQLite is left alone)."""
    from ..extensions import db

    breaker = app.extensions["breakers"].get(SERVICE)
    with app.app_context():
        engines = list(db.engines.values())
    guards: list[DatabaseGuard] = []
    for engine in engines:
        if engine.dialect.name == "sqlite":
            continue
        guard = DatabaseGuard(engine, breaker)
        event.listen(engine, "do_connect", guard.connect)
        event.listen(engine, "checkout", guard.checkout)
        guards.append(guard)
    app.extensions[EXTENSION] = guards
    if guards:
        logger.debug("Database breaker guards %s engine(s)", len(guards))
    return guards


@contextlib.contextmanager
def bypassed() -> Iterator[None]:
    """Connect without the breaker (neither admitted nor counted) inside this block, in this context only."""
    token = _bypassed.set(True)
    try:
        yield
    finally:
        _bypassed.reset(token)


def probe(engine: Engine, breaker: CircuitBreaker | None = None) -> None:
    """`SELECT 1` on the real database, around the breaker; raises what the database raises.

    A connection used while the breaker refuses connects is discarded, not pooled: requests must not be
    served behind the breaker's back on a connection only the probe was allowed to make.
    """
    with bypassed(), engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        if breaker is not None and breaker.state in _REFUSING:
            conn.invalidate()
