"""What one failed attempt looked like: the error-history entries kept on jobs, replays and inbox rows.

An entry holds the attempt, the stable code, the classifier's verdict and the real (redacted) message;
a history is bounded so a job that fails for days keeps its first attempts and its latest ones.
Imports only the errors layer, the classifier and the log's redaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ...log.redaction import redact
from ..errors import APIError
from ..timeutil import iso
from .classifier import Classification

MAX_ERROR_HISTORY = 50  # entries kept per history (the first attempts and the most recent ones)
MAX_MESSAGE_CHARS = 2000


def error_code(exc: BaseException) -> str:
    """The stable code of an exception: an APIError's code, otherwise its class name."""
    return exc.code if isinstance(exc, APIError) else type(exc).__name__


def error_entry(
    exc: BaseException | None,
    classification: Classification,
    attempt: int,
    at: datetime,
    *,
    worker: str | None,
    code: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """One entry of a job's error history, with the real (redacted) message."""
    text = message if message is not None else (str(exc) if exc is not None else "")
    if not text and exc is not None:
        text = type(exc).__name__
    entry: dict[str, Any] = {
        "attempt": attempt,
        "code": code or (error_code(exc) if exc is not None else "UNKNOWN"),
        "kind": classification.kind.value,
        "reason": classification.reason,
        "message": redact(text)[:MAX_MESSAGE_CHARS],
        "time": iso(at),
        "worker": worker,
    }
    if exc is not None:
        entry["exc_type"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if classification.status is not None:
        entry["status"] = classification.status
    if classification.retry_after is not None:
        entry["retry_after"] = classification.retry_after
    return entry


def append_error(history: Iterable[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The history with `entry` added, bounded: the first 5 entries and the most recent ones."""
    items = [*history, entry]
    if len(items) > MAX_ERROR_HISTORY:
        items = items[:5] + items[-(MAX_ERROR_HISTORY - 5) :]
    return items
