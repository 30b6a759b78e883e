"""Sanitise and record errors reported by browser clients (source "client").

Everything a client sends is untrusted: markup is stripped (script and style bodies removed, other
tags dropped, what is left HTML-escaped) so an admin page can never execute it, secrets are masked
and control characters escaped so nothing forges a log line or leaks a token into the store.
"""

from __future__ import annotations

import html
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from ....log.redaction import neutralise, redact
from .events import from_client_report
from .store import ErrorEventData

_SCRIPT = re.compile(r"<\s*(script|style)\b[^>]*>.*?(<\s*/\s*\1\s*>|$)", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"</?[A-Za-z!?][^>]*>?")
_SCHEME = re.compile(r"(?i)\b(javascript|vbscript|data)\s*:")
# Chrome: "at fn (file:1:2)"; Firefox/Safari: "fn@file:1:2".
_STACK_FUNCTION = re.compile(r"^\s*(?:at\s+([\w$.<>\[\] ]+?)\s+\(|([\w$.<>]+)@)", re.MULTILINE)
MAX_FRAMES = 5

ContextValue = Annotated[str, Field(max_length=500)] | int | float | bool | None


class ClientErrorReport(BaseModel):
    """An error a browser client reports (sanitised before it is stored)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)  # validation.StrictModel's (not imported here)

    message: str = Field(min_length=1, max_length=4000)
    error_type: str | None = Field(default=None, max_length=128, description="e.g. TypeError")
    code: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    status: int | None = Field(default=None, ge=100, le=599, description="HTTP status of a failed API call")
    request_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    stack: str | None = Field(default=None, max_length=8000)
    url: str | None = Field(default=None, max_length=2048)
    user_agent: str | None = Field(default=None, max_length=512)
    release: str | None = Field(default=None, max_length=64)
    context: dict[Annotated[str, Field(max_length=64)], ContextValue] = Field(default_factory=dict, max_length=20)


def strip_markup(text: str) -> str:
    """Text with script/style bodies and tags removed, dangerous URL schemes defused, the rest escaped."""
    text = _SCRIPT.sub("", text)
    text = _TAG.sub("", text)
    text = _SCHEME.sub(r"\1-blocked:", text)
    return html.escape(text, quote=False)


def sanitise(text: str | None, limit: int = 1000) -> str | None:
    """Untrusted client text, safe to store, show and log."""
    if text is None:
        return None
    return neutralise(redact(strip_markup(text))).strip()[:limit]


def stack_functions(stack: str | None) -> list[str]:
    """The first function names of a JavaScript stack (line and column numbers ignored)."""
    if not stack:
        return []
    names = [(m.group(1) or m.group(2)).strip() for m in _STACK_FUNCTION.finditer(stack)]
    return [sanitise(name, 100) or "?" for name in names[:MAX_FRAMES]]


def _url_path(url: str | None) -> str | None:
    # Only the path groups and is stored: query strings and fragments carry tokens and personal data.
    if not url:
        return None
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    return sanitise(path or "/", 300)


def build_client_event(report: ClientErrorReport, *, request_id: str, user_id: int | None) -> ErrorEventData:
    """The sanitised event for a client report."""
    context: dict[str, Any] = {
        str(sanitise(k, 64)): (sanitise(v, 500) if isinstance(v, str) else v) for k, v in report.context.items()
    }
    for key in ("user_agent", "release"):
        value = getattr(report, key)
        if value:
            context[key] = sanitise(value, 512)
    if report.stack:
        context["stack"] = sanitise(report.stack, 4000)
    return from_client_report(
        message=sanitise(report.message) or "",
        error_type=sanitise(report.error_type, 128),
        code=report.code,
        status_code=report.status,
        frames=stack_functions(report.stack),
        url_path=_url_path(report.url),
        request_id=report.request_id or request_id,
        user_id=user_id,
        context=context,
    )
