"""Build error events from API errors, exceptions and browser reports (cheap; no I/O).

Recording runs on the request thread of every error response, so it captures only what differs
between occurrences (time, IDs, path) and what cannot be kept for later (the in-app frames: a
traceback holds every frame's locals alive). Everything derived from the error's shape (cleaned
message, fingerprint, title, category, severity) is the same for every occurrence of a group, so
it is computed once and remembered in a small bounded cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from flask import has_request_context, request
from werkzeug.exceptions import HTTPException

from ....log.context import peek_log_context
from ....log.redaction import clean_text as clean_log_text
from ....log.redaction import redact_value, secrets_generation
from ...errors import APIError
from ...ids import uuid7_hex
from ...request_id import get_request_id
from ...timeutil import utcnow
from .fingerprint import exception_frames, fingerprint, normalise_message
from .severity import Category, categorise, categorise_client, severity_for
from .store import CLIENT_SOURCE, ErrorEventData

MESSAGE_LIMIT = 1000
# Derived fields are cached per distinct error shape; messages longer than this are not cached
# (they are rare, and would make the cache's memory unbounded).
_DERIVED_MAX_ENTRIES = 2048
_DERIVED_MAX_MESSAGE = 2000


def clean_text(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Secrets masked and control characters escaped, cut to `limit` characters."""
    return clean_log_text(text)[:limit]


def new_event_id() -> str:
    """A fresh, unguessable, time-ordered 32-hex-digit event id (UUIDv7, see `ids.py`).

    Events recorded on a request thread get theirs from the writer instead (`store.assign_event_ids`,
    one `os.urandom` call a batch): `os.urandom` releases the GIL, and on a busy gunicorn thread
    every release hands the GIL to another thread and waits to get it back.
    """
    return uuid7_hex()


@dataclass(frozen=True, slots=True)
class _Derived:
    """What an error's shape determines: the same for every occurrence with that shape."""

    fingerprint: str
    category: str
    severity: str
    title: str
    message: str
    frames: str | None


class _DerivedCache:
    """Bounded memo of derived fields, emptied when full or when new secrets are registered."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], _Derived] = {}
        self._generation = secrets_generation()

    def get(self, key: tuple[Any, ...]) -> _Derived | None:
        """The cached fields for `key`, or None (also after the redaction secrets changed)."""
        if self._generation != secrets_generation():
            self._entries = {}  # cleaned messages and titles predate the new secrets
            self._generation = secrets_generation()
            return None
        return self._entries.get(key)

    def put(self, key: tuple[Any, ...], derived: _Derived) -> None:
        """Remember `derived` (a full cache starts over: cheaper than LRU bookkeeping on every hit)."""
        if len(self._entries) >= _DERIVED_MAX_ENTRIES:
            self._entries = {}
        self._entries[key] = derived


_derived_cache = _DerivedCache()


def _derive(
    *,
    source: str,
    original: BaseException,
    code: str,
    status_code: int | None,
    endpoint: str | None,
    frames: tuple[str, ...],
    raw_message: str,
) -> _Derived:
    exc_type = type(original).__name__
    message = clean_text(raw_message or exc_type)
    category = categorise(code, status_code, None if isinstance(original, APIError) else original)
    return _Derived(
        fingerprint=fingerprint(
            source=source, exc_type=exc_type, code=code, endpoint=endpoint, frames=frames, message=raw_message
        ),
        category=category.value,
        severity=severity_for(category, status_code).value,
        title=f"{exc_type}: {normalise_message(message)}"[:300],
        message=message,
        frames="\n".join(frames) or None,
    )


def _context_ids(in_request: bool) -> tuple[str | None, int | None]:
    context = peek_log_context()
    request_id = context.get("request_id")
    if request_id is None and in_request:
        # In a request the ID exists even before the log context is bound (an error in an early hook).
        # Outside one (a job) it is the originating request's, bound by the worker; never the job's own id,
        # which goes in the event's context.
        request_id = get_request_id()
    user_id = context.get("user_id")
    return (str(request_id) if request_id else None), (int(user_id) if isinstance(user_id, int) else None)


class PendingEvent(NamedTuple):
    """An error captured while it is answered; `build()` makes the stored event (the writer calls it).

    Only what differs between occurrences or cannot wait is read on the request thread; cleaning
    the path, the timestamp object and the event itself are left to the writer.
    """

    derived: _Derived
    source: str
    code: str
    status_code: int | None
    exc_type: str
    endpoint: str | None
    method: str | None
    raw_path: str | None
    request_id: str | None
    user_id: int | None
    created: float

    def build(self, *, event_id: str | None = None, context: str | None = None) -> ErrorEventData:
        """The event to store (without `event_id`, the writer gives it one)."""
        derived = self.derived
        return ErrorEventData(
            event_id=event_id,
            occurred_at=datetime.fromtimestamp(self.created, UTC),
            fingerprint=derived.fingerprint,
            source=self.source,
            code=self.code,
            status_code=self.status_code,
            category=derived.category,
            severity=derived.severity,
            title=derived.title,
            message=derived.message,
            exc_type=self.exc_type,
            endpoint=self.endpoint,
            method=self.method,
            path=clean_text(self.raw_path, 500) if self.raw_path is not None else None,
            request_id=self.request_id,
            user_id=self.user_id,
            frames=derived.frames,
            context=context,
        )


def capture_error(
    error: BaseException,
    *,
    source: str,
    exception: BaseException | None = None,
    code: str | None = None,
    status_code: int | None = None,
    endpoint: str | None = None,
) -> PendingEvent:
    """What an APIError (with its original exception) or any other exception says, read now."""
    created = time.time()
    original = exception if exception is not None else error
    if isinstance(error, APIError):
        code = code or error.code
        status_code = status_code if status_code is not None else error.status_code
    code = code or "INTERNAL_ERROR"
    # Group on what went wrong (the original exception), not on the generic 500 text the client saw.
    # Werkzeug's HTTP errors carry boilerplate; our envelope message for them is the useful text.
    if isinstance(original, APIError):
        raw_message = original.message
    elif isinstance(original, HTTPException) and isinstance(error, APIError):
        raw_message = error.message
    else:
        raw_message = str(original)
    method = path = None
    in_request = has_request_context()
    if in_request:
        req = request._get_current_object()  # type: ignore[attr-defined] - one proxy lookup, not five
        if endpoint is None:
            rule = req.url_rule
            endpoint = req.endpoint or (rule.rule if rule is not None else None)
        method = req.method
        path = req.path
    frames = tuple(exception_frames(original))
    key = (source, type(original), code, status_code, endpoint, frames, raw_message)
    derived = _derived_cache.get(key) if len(raw_message) <= _DERIVED_MAX_MESSAGE else None
    if derived is None:
        derived = _derive(
            source=source,
            original=original,
            code=code,
            status_code=status_code,
            endpoint=endpoint,
            frames=frames,
            raw_message=raw_message,
        )
        if len(raw_message) <= _DERIVED_MAX_MESSAGE:
            _derived_cache.put(key, derived)
    request_id, user_id = _context_ids(in_request)
    kind = type(original).__name__
    # tuple.__new__: a NamedTuple's own constructor is a Python function, and this runs for every error answered.
    fields = (derived, source, code, status_code, kind, endpoint, method, path, request_id, user_id, created)
    return tuple.__new__(PendingEvent, fields)


def from_error(
    error: BaseException,
    *,
    source: str,
    exception: BaseException | None = None,
    code: str | None = None,
    status_code: int | None = None,
    endpoint: str | None = None,
    context: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> ErrorEventData:
    """An event for an APIError (with its original exception) or any other exception, built now.

    Without `event_id` the event gets its id when it is written (see `new_event_id`).
    """
    pending = capture_error(
        error, source=source, exception=exception, code=code, status_code=status_code, endpoint=endpoint
    )
    return pending.build(
        event_id=event_id,
        context=json.dumps(redact_value("context", context), default=str)[:4000] if context else None,
    )


def from_client_report(
    *,
    message: str,
    error_type: str | None,
    code: str | None,
    status_code: int | None,
    frames: list[str],
    url_path: str | None,
    request_id: str | None,
    user_id: int | None,
    context: dict[str, Any],
) -> ErrorEventData:
    """An event for an error a browser reported (already sanitised by the caller)."""
    category: Category = categorise_client(error_type, message, status_code)
    code = code or "CLIENT_ERROR"
    return ErrorEventData(
        event_id=new_event_id(),
        occurred_at=utcnow(),
        fingerprint=fingerprint(
            source=CLIENT_SOURCE,
            exc_type=error_type,
            code=code,
            endpoint=url_path,
            frames=frames,
            message=message,
        ),
        source=CLIENT_SOURCE,
        code=code,
        status_code=status_code,
        category=category.value,
        severity=severity_for(category, status_code, server_side=False).value,
        title=f"{error_type or 'Error'}: {normalise_message(message)}"[:300],
        message=message,
        exc_type=error_type,
        endpoint=url_path,
        method=None,
        path=url_path,
        request_id=request_id,
        user_id=user_id,
        frames="\n".join(frames) or None,
        # Redacted like every server event: a `password` key is masked whole, whatever the browser sent.
        context=json.dumps(redact_value("context", context), default=str)[:4000] if context else None,
    )
