"""Turn every error into the JSON envelope of SPEC section 3, log it, and announce it.

Handlers are registered on base classes (Flask looks them up along the MRO): `APIError`,
`HTTPException`, SQLAlchemy's `SQLAlchemyError`, and `InternalServerError` for unhandled
exceptions (through `original_exception`; there is deliberately no handler for bare `Exception`).
Listeners (error statistics, metrics) subscribe to `error_occurred` instead of being called here.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, has_request_context
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from .db_errors import translate_db_error
from .error_catalog import http_code_for, http_recoverable, lookup
from .errors import APIError
from .request_id import get_request_id
from .signals import error_occurred, send
from .timeutil import iso_seconds

logger = logging.getLogger(__name__)

# Messages for generic HTTP errors that are safe to show and more useful than werkzeug's.
_HTTP_MESSAGES = {
    400: "The request could not be understood.",
    401: "Authentication is required.",
    403: "You do not have permission to do this.",
    404: "The requested URL was not found on this server.",
    405: "This method is not allowed for this URL.",
    413: "The request body is larger than the server accepts.",
    415: "The request body has a content type this endpoint does not accept.",
    500: "An unexpected error occurred. Quote the request ID when contacting support.",
}


def envelope(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    """The JSON body for an error (`request_id`: the request's, when the caller has it already)."""
    body: dict[str, Any] = {
        "code": error.code,
        "message": error.message,
        "details": error.details,
        "timestamp": iso_seconds(),
        "recoverable": bool(error.recoverable),
        "status": error.status_code,
        "request_id": request_id if request_id is not None else get_request_id(),
        "doc_url": f"/api/errors/catalog#{error.code}",
    }
    if error.retry_after is not None:
        body["retry_after"] = error.retry_after
    return {"error": body}


def _json_default(value: Any) -> Any:
    return str(value)  # a detail orjson cannot encode natively (a Decimal, a Path...) is shown as text


#: Sorted keys, as Flask's JSON provider writes them; orjson encodes the envelope in about a tenth of the time.
_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def error_response(error: APIError, exception: BaseException | None = None) -> Response:
    """Build the response for an error, log it and tell the listeners."""
    if lookup(error.code) is None:
        logger.warning("Error code %s is not in the catalog; register it on its class", error.code)
    app = current_app._get_current_object()  # type: ignore[attr-defined] - one proxy lookup, not three
    request_id = get_request_id()  # once, for the body and the header
    body = orjson.dumps(envelope(error, request_id), default=_json_default, option=_JSON_OPTIONS)
    response = app.response_class(body, status=error.status_code, mimetype="application/json")
    headers = response.headers
    headers["X-Request-ID"] = request_id
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(exception, MethodNotAllowed) and exception.valid_methods:
        headers["Allow"] = ", ".join(exception.valid_methods)
    _log_error(error, exception)
    if has_request_context():
        g.error_code = error.code  # for the request's performance.log line
    send(error_occurred, app, error=error, exception=exception)  # each receiver guarded: never breaks a response
    return response


def _log_error(error: APIError, exception: BaseException | None) -> None:
    if error.status_code < 500 and not logger.isEnabledFor(logging.DEBUG):
        return  # the usual case for a 4xx: skip building a line nobody writes
    extra = {"error_code": error.code, "status": error.status_code}
    if exception is not None:
        extra["exc_type"] = type(exception).__name__
    if error.status_code >= 500:
        exc_info = (type(exception), exception, exception.__traceback__) if exception is not None else None
        logger.error("%s %s: %s", error.status_code, error.code, error.message, exc_info=exc_info, extra=extra)
    else:
        # A client error is already on the request's performance.log line (with error_code) and in
        # the error store; an app.log INFO line per 4xx would duplicate both and cost every 4xx.
        logger.debug("%s %s: %s", error.status_code, error.code, error.message, extra=extra)


def from_http_exception(exc: HTTPException) -> APIError:
    """Our error for a werkzeug HTTP exception (routing, 413, 415, 405...)."""
    status = exc.code or 500
    message = _HTTP_MESSAGES[500] if status >= 500 else _HTTP_MESSAGES.get(status) or exc.name
    return APIError(message, code=http_code_for(status), status_code=status, recoverable=http_recoverable(status))


def handle_api_error(error: APIError) -> Response:
    """Our own errors carry everything the envelope needs."""
    return error_response(error, error if error.status_code >= 500 else None)


def handle_http_exception(exc: HTTPException) -> Response:
    """Any werkzeug HTTP error (404, 405, 413, 415, a bare abort(...)) in our envelope."""
    if exc.code is not None and exc.code < 400:
        return exc  # type: ignore[return-value] - redirects are not errors
    if isinstance(exc, InternalServerError):
        return handle_internal_error(exc)
    return error_response(from_http_exception(exc), exc)


def handle_database_error(exc: SQLAlchemyError) -> Response:
    """Roll back so the next request starts clean, then answer with the mapped error."""
    _rollback()
    error = translate_db_error(exc)
    return error_response(error, exc)


def handle_internal_error(exc: InternalServerError) -> Response:
    """Unhandled exceptions: a generic 500 for the client, the full traceback for the log."""
    original = exc.original_exception or exc
    if isinstance(original, SQLAlchemyError):
        return handle_database_error(original)
    if isinstance(original, APIError):
        return handle_api_error(original)
    _rollback()
    error = APIError(_HTTP_MESSAGES[500], code="INTERNAL_ERROR", status_code=500)
    return error_response(error, original)


def _rollback() -> None:
    db_ext = current_app.extensions.get("sqlalchemy")
    if db_ext is None:
        return
    try:
        db_ext.session.rollback()
    except SQLAlchemyError:
        logger.warning("Session rollback failed after an error", exc_info=True)


def register(app: Flask) -> None:
    """Install the handlers on `app`."""
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(InternalServerError, handle_internal_error)
    app.register_error_handler(SQLAlchemyError, handle_database_error)
    # Ours does all Flask-SQLAlchemy's teardown does (`session.remove()`, which only acts when a session was
    # opened) and skips the scope look-up when no session is open at all: one hook instead of two per request.
    db_ext = app.extensions.get("sqlalchemy")
    if db_ext is not None and db_ext._teardown_session in app.teardown_appcontext_funcs:
        app.teardown_appcontext_funcs.remove(db_ext._teardown_session)
    app.teardown_appcontext(_release_session)


def _release_session(exc: BaseException | None) -> None:
    """End the request's session; a connection the database dropped must not fail the answered request.

    Closing a session rolls back its transaction. When the database went away mid-request that rollback
    raises, and from a teardown it escapes Flask: the server then replaces the response (often our 503)
    with a bare, non-JSON 500. The connection is already invalidated, so the session is only forgotten.
    """
    db_ext = current_app.extensions.get("sqlalchemy")
    if db_ext is None:
        return
    registry = db_ext.session.registry
    scopes = registry.registry  # Flask-SQLAlchemy's scopes: app context id -> session, in every thread
    if (type(scopes) is dict and not scopes) or not registry.has():
        return  # no session was opened (most probes and many errors): nothing to end
    try:
        db_ext.session.remove()
    except SQLAlchemyError:
        logger.warning("Closing the request's database session failed (connection lost)", exc_info=True)
        db_ext.session.registry.clear()
