"""Category and severity of an error, as seed 004 defines them.

Categories: NETWORK (connection, timeout, socket), DATABASE, API (HTTP and external APIs),
RATE_LIMIT (429), VALIDATION (validation and value errors), PROCESSING (rendering, runtime),
SYSTEM (system-level: memory, disk, OS) and UNKNOWN. Severity follows the category (SYSTEM is
CRITICAL; NETWORK and DATABASE are HIGH; API and RATE_LIMIT are MEDIUM; VALIDATION and PROCESSING
are LOW), except that a server-side 5xx is never below HIGH: an unexpected failure is never "low".
"""

from __future__ import annotations

import socket
from enum import StrEnum

from sqlalchemy.exc import SQLAlchemyError


class Category(StrEnum):
    """Seed 004's error categories."""

    NETWORK = "NETWORK"
    DATABASE = "DATABASE"
    API = "API"
    RATE_LIMIT = "RATE_LIMIT"
    VALIDATION = "VALIDATION"
    PROCESSING = "PROCESSING"
    SYSTEM = "SYSTEM"
    UNKNOWN = "UNKNOWN"


class Severity(StrEnum):
    """Seed 004's severities."""

    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


SEVERITY_OF = {
    Category.SYSTEM: Severity.CRITICAL,
    Category.NETWORK: Severity.HIGH,
    Category.DATABASE: Severity.HIGH,
    Category.API: Severity.MEDIUM,
    Category.RATE_LIMIT: Severity.MEDIUM,
    Category.VALIDATION: Severity.LOW,
    Category.PROCESSING: Severity.LOW,
    Category.UNKNOWN: Severity.MEDIUM,
}
_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}

# Codes of our own catalog whose category the status alone would get wrong.
_CODE_PREFIXES: tuple[tuple[str, Category], ...] = (
    ("DATABASE_", Category.DATABASE),
    ("RENDERING_RESOURCES", Category.SYSTEM),
    ("RENDERING_", Category.PROCESSING),
    ("FFMPEG_", Category.PROCESSING),
    ("RATE_LIMIT", Category.RATE_LIMIT),
    ("VALIDATION", Category.VALIDATION),
    ("MALFORMED_JSON", Category.VALIDATION),
    ("FILE_INVALID", Category.VALIDATION),
    ("UNSUPPORTED_AUDIO", Category.VALIDATION),
)
# Words in a client-reported type or message that name a category (browser errors have no classes).
_CLIENT_WORDS: tuple[tuple[tuple[str, ...], Category], ...] = (
    (("network", "fetch", "timeout", "timed out", "offline", "cors", "socket", "connection"), Category.NETWORK),
    (("ratelimit", "rate limit", "too many requests"), Category.RATE_LIMIT),
    (("validation", "invalid", "rangeerror"), Category.VALIDATION),
    (("quota", "out of memory", "memory"), Category.SYSTEM),
    (("typeerror", "referenceerror", "syntaxerror", "render"), Category.PROCESSING),
)


def _exception_category(exc: BaseException) -> Category | None:
    if isinstance(exc, SQLAlchemyError):
        return Category.DATABASE
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, socket.gaierror)):
        return Category.NETWORK
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"RequestException", "URLError", "HTTPError", "NewConnectionError", "ProtocolError"}:
        return Category.NETWORK
    if isinstance(exc, (MemoryError, SystemError, RecursionError, OSError)):
        return Category.SYSTEM
    if isinstance(exc, (ValueError, UnicodeError)):
        return Category.VALIDATION
    if isinstance(exc, (RuntimeError, ArithmeticError, LookupError, TypeError, AttributeError, AssertionError)):
        return Category.PROCESSING
    return None


def categorise(code: str, status_code: int | None, exception: BaseException | None) -> Category:
    """The category of a server-side error from its code, HTTP status and original exception."""
    for prefix, category in _CODE_PREFIXES:
        if code.startswith(prefix):
            return category
    if status_code == 429:
        return Category.RATE_LIMIT
    if status_code == 422:
        return Category.VALIDATION
    if exception is not None and (found := _exception_category(exception)) is not None:
        return found
    if status_code is not None and status_code < 500:
        return Category.API
    if status_code is not None and status_code in (502, 503, 504):
        return Category.API if code != "DATABASE_UNAVAILABLE" else Category.DATABASE
    return Category.PROCESSING if exception is not None else Category.UNKNOWN


def categorise_client(error_type: str | None, message: str, status_code: int | None) -> Category:
    """The category of a browser-reported error from its type name, message and any HTTP status."""
    if status_code == 429:
        return Category.RATE_LIMIT
    if status_code == 422:
        return Category.VALIDATION
    haystack = f"{error_type or ''} {message}".lower()
    for words, category in _CLIENT_WORDS:
        if any(word in haystack for word in words):
            return category
    if status_code is not None and status_code >= 400:
        return Category.API
    return Category.UNKNOWN


def severity_for(category: Category, status_code: int | None, *, server_side: bool = True) -> Severity:
    """Seed 004's severity for the category, raised to HIGH for a server-side 5xx."""
    severity = SEVERITY_OF[category]
    if server_side and status_code is not None and status_code >= 500 and _RANK[severity] < _RANK[Severity.HIGH]:
        return Severity.HIGH
    return severity
