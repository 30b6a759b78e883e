"""Assertions about the error contract, shared by the tests."""

from __future__ import annotations

import re
from typing import Any

from backend.app.error_catalog import lookup
from backend.app.request_id import REQUEST_ID_PATTERN

ENVELOPE_FIELDS = {"code", "message", "details", "timestamp", "recoverable", "status", "request_id", "doc_url"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# What must never appear in an error body: tracebacks, source paths, SQL, framework internals.
LEAK_PATTERNS = [
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r'File "[^"]+", line \d+'),
    re.compile(r"/(?:work|home|root|usr|tmp|opt|var)/[\w./-]+"),
    re.compile(r"\b(?:SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b", re.IGNORECASE),
    re.compile(r"sqlalchemy|psycopg|sqlite3\.", re.IGNORECASE),
]


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is our JSON envelope with every field, the right status and a catalog code."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json", response.mimetype
    rid = response.headers.get("X-Request-ID")
    assert rid and REQUEST_ID_PATTERN.fullmatch(rid)
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    missing = ENVELOPE_FIELDS - set(error)
    assert not missing, f"envelope lacks {missing}: {error}"
    assert error["status"] == status
    assert error["request_id"] == rid
    assert TIMESTAMP.match(error["timestamp"]), error["timestamp"]
    assert isinstance(error["recoverable"], bool)
    assert isinstance(error["details"], dict)
    assert error["doc_url"] == f"/api/errors/catalog#{error['code']}"
    entry = lookup(error["code"])
    assert entry is not None, f"code {error['code']} is not in the catalog"
    assert entry.status == status, (error["code"], entry.status, status)
    if code is not None:
        assert error["code"] == code, error
    if "retry_after" in error:
        assert isinstance(error["retry_after"], int) and error["retry_after"] >= 0
        assert response.headers.get("Retry-After") == str(error["retry_after"])
    # The request ID is the client's own (validated) value echoed back; it is not a leak.
    assert_no_leak(response.get_data(as_text=True).replace(f'"{rid}"', '""'))
    return error


def assert_no_leak(text: str, *secrets: str) -> None:
    """No traceback, path, SQL or any of `secrets` in `text`."""
    for pattern in LEAK_PATTERNS:
        assert not pattern.search(text), f"leak matching {pattern.pattern!r} in {text[:400]!r}"
    for secret in secrets:
        if secret:
            assert secret not in text, f"secret {secret[:4]}… leaked"
