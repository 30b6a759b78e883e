"""The log context: fields bound per request or job and merged into every line of that context."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from .redaction import clean_text

_log_context: ContextVar[dict[str, Any] | None] = ContextVar("log_context", default=None)
_EMPTY_CONTEXT: Mapping[str, Any] = MappingProxyType({})


def _clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    # Sanitised once at bind time, so every record of a request reuses the cleaned values.
    return {k: (v if isinstance(v, (int, float, bool)) else clean_text(str(v))) for k, v in fields.items()}


def bind_log_context(**fields: Any) -> None:
    """Attach fields (request_id, user_id, job_id...) to every log line of the current context."""
    current = dict(_log_context.get() or {})
    current.update(_clean_fields({k: v for k, v in fields.items() if v is not None}))
    _log_context.set(current)


def bind_cleaned_log_context(fields: dict[str, Any]) -> None:
    """`bind_log_context` for fields the caller cleaned itself (`clean_text`) and hands over: no None values.

    The request-start hook binds six fields on every request; this skips the copies and the generic
    cleaning pass, so the caller can leave out values that cannot hold a secret (its own ids).
    """
    current = _log_context.get()
    _log_context.set({**current, **fields} if current else fields)


def clear_log_context() -> None:
    """Forget the current context's log fields (end of a request or job)."""
    _log_context.set(None)


def current_log_context() -> dict[str, Any]:
    """A copy of the current context's log fields."""
    return dict(_log_context.get() or {})


def peek_log_context() -> Mapping[str, Any]:
    """The current context's log fields without a copy (read-only: every bind replaces the dict)."""
    return _log_context.get() or _EMPTY_CONTEXT


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields for the duration of a block (job workers use it for `job_id`)."""
    added = _clean_fields({k: v for k, v in fields.items() if v is not None})
    token = _log_context.set({**(_log_context.get() or {}), **added})
    try:
        yield
    finally:
        _log_context.reset(token)
