"""UTC times and their ISO 8601 texts: the one place a timestamp is made or formatted.

Each function keeps the exact text an endpoint has always shown (the HTTP contract): `iso` for stored times
(microseconds only when non-zero, `Z`), `iso_micro` where a fixed width matters (error events and their
cursors), `iso_seconds` for the error envelope, and the `epoch_*` pair for times kept as Unix seconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import overload

_stamp: tuple[int, str] = (0, "")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """`value` as an aware UTC datetime (SQLite hands back naive datetimes that were stored as UTC); None stays None."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 with a Z (`2026-12-04T10:00:00Z`, microseconds only when set), or None."""
    return as_utc(value).isoformat().replace("+00:00", "Z") if value is not None else None


def iso_micro(value: datetime | None) -> str | None:
    """A stored time as fixed-width ISO 8601 with microseconds and a Z (sorts as text), or None."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value is not None else None


def iso_offset(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 with `+00:00` (the form uploads and renders have always shown), or None."""
    return as_utc(value).isoformat() if value is not None else None


def iso_to_second(value: datetime | None) -> str | None:
    """A stored time, to the second, as ISO 8601 with a Z (like the error envelope's timestamp), or None."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def iso_seconds() -> str:
    """Now, to the second, as ISO 8601 with a Z (formatted once per second: every error envelope shows it)."""
    global _stamp
    second = int(time.time())
    cached = _stamp  # one tuple read: another thread may replace it, never tear it
    if cached[0] != second:
        cached = _stamp = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return cached[1]


def epoch_iso(epoch: float | None) -> str | None:
    """Unix seconds as ISO 8601 with a Z (microseconds only when set), or None."""
    return None if epoch is None else iso(datetime.fromtimestamp(epoch, UTC))


def epoch_iso_micro(epoch: float) -> str:
    """Unix seconds as fixed-width ISO 8601 with microseconds and a Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
