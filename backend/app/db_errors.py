"""Map SQLAlchemy exceptions to API errors: conflict 409, unreachable 503, anything else 500.

The message never carries SQL, parameters or the database URL; those go to the log only.

`DatabaseCircuitOpenError` lives here, beside the mapping, so the breaker that raises it
(`resilience.database_breaker`) and every layer that handles it reach it without importing each other.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from .errors import APIError, ConflictError, DatabaseError, DatabaseUnavailableError, ExternalServiceError

# SQLite messages that mean "the database cannot be used right now", not "the query is wrong".
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database file", "disk i/o error", "database is full")

# A server that refuses who we are at connect time answered: a configuration fault, not an outage. libpq
# reports these with no sqlstate ("connection failed: ... FATAL:  password authentication failed ..."),
# the same way it reports a refused port, so they are told apart by the server's own words.
_LOGIN_REFUSED = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # role "x" / database "x"
    "permission denied for database",
)


class DatabaseCircuitOpenError(sa_exc.DisconnectionError):
    """The `database` breaker is open: no connection was attempted; retry after `retry_after` seconds.

    A `DisconnectionError` (so a `SQLAlchemyError`) on purpose: every handler that already copes with a
    lost database (`except SQLAlchemyError` in the job worker and the error-statistics writer, the HTTP
    handler, `is_unreachable`, the classifier) copes with this one unchanged.
    """

    def __init__(self, retry_after: int, state: str = "open") -> None:
        super().__init__(f"The database circuit breaker is {state}: no connection tried; retry after {retry_after} s")
        self.retry_after = retry_after
        self.state = state


def is_login_refused(exc: BaseException) -> bool:
    """Whether the database server refused this server's credentials, role or database name at connect."""
    if not isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return False
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) is not None:
        return str(orig.sqlstate).startswith(("28", "3D"))  # invalid authorization; invalid catalog name
    text = str(orig or exc).lower()
    return "fatal:" in text and any(marker in text for marker in _LOGIN_REFUSED)


def is_unreachable(exc: BaseException) -> bool:
    """Whether a database error means the database cannot be reached or used right now."""
    if isinstance(exc, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        if is_login_refused(exc):
            return False
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


def missing_schema(exc: BaseException) -> str | None:
    """The missing table or column when `exc` says the schema is behind the code (not migrated), else None."""
    if not isinstance(exc, (sa_exc.OperationalError, sa_exc.ProgrammingError)):
        return None
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    text = str(orig or exc).splitlines()[0] if str(orig or exc) else ""
    if sqlstate in ("42P01", "42703"):  # PostgreSQL: undefined table, undefined column
        return text
    if text.lower().startswith(("no such table", "no such column")) or "has no column named" in text.lower():
        return text  # SQLite
    return None


def translate_db_error(exc: sa_exc.SQLAlchemyError) -> APIError:
    """The API error for a SQLAlchemy exception."""
    if isinstance(exc, sa_exc.IntegrityError):
        return ConflictError("The request conflicts with existing data.")
    if isinstance(exc, DatabaseCircuitOpenError):
        return DatabaseUnavailableError(
            f"The database is temporarily unavailable. Retry after {exc.retry_after} seconds.",
            details={"service": "database", "state": exc.state},
            retry_after=exc.retry_after,
        )
    if is_unreachable(exc):
        return DatabaseUnavailableError("The database is temporarily unavailable. Retry shortly.", retry_after=5)
    if is_login_refused(exc):
        # Waiting cannot fix a refused login: an operator must (the log has the server's words).
        return ExternalServiceError(
            "The database refused this server's credentials; an operator must fix the configuration.",
            code="SERVICE_MISCONFIGURED",
            details={"service": "database"},
        )
    return DatabaseError("A database error occurred. Quote the request ID when contacting support.")
