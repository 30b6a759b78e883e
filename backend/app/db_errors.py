"""Map SQLAlchemy exceptions to API errors: conflict 409, unreachable 503, anything else 500.

The message never carries SQL, parameters or the database URL; those go to the log only.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from .errors import APIError, ConflictError, DatabaseError, DatabaseUnavailableError

# SQLite messages that mean "the database cannot be used right now", not "the query is wrong".
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database file", "disk i/o error", "database is full")


def is_unreachable(exc: BaseException) -> bool:
    """Whether a database error means the database cannot be reached or used right now."""
    if isinstance(exc, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        orig = getattr(exc, "orig", None)
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate is not None:
            # Class 08: connection exception; 57P: operator intervention (shutdown); 53: resources.
            return sqlstate.startswith(("08", "57P", "53"))
        text = str(orig or exc).lower()
        if any(marker in text for marker in _SQLITE_UNAVAILABLE):
            return True
        # psycopg reports a refused or dropped connection without a sqlstate.
        return "connection" in text or "server closed" in text or "could not connect" in text
    return False


def translate_db_error(exc: sa_exc.SQLAlchemyError) -> APIError:
    """The API error for a SQLAlchemy exception."""
    if isinstance(exc, sa_exc.IntegrityError):
        return ConflictError("The request conflicts with existing data.")
    if is_unreachable(exc):
        return DatabaseUnavailableError("The database is temporarily unavailable. Retry shortly.", retry_after=5)
    return DatabaseError("A database error occurred. Quote the request ID when contacting support.")
