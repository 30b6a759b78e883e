"""Keep secrets out of logs and neutralise log injection.

`redact()` masks secrets by shape (bearer tokens, JWTs, Stripe and SendGrid keys, card numbers,
passwords in URLs, `password=`-style pairs) and by value (secrets registered from the running
configuration). `neutralise()` escapes CR, LF and other control characters in user-supplied text so
one call can never forge a second log line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"

# Keys whose values are secrets wherever they appear (extra fields, JSON bodies, query strings).
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "new_password",
        "old_password",
        "secret",
        "secret_key",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "api_key",
        "apikey",
        "key",
        "authorization",
        "cookie",
        "set-cookie",
        "jwt",
        "client_secret",
        "webhook_secret",
        "stripe_api_key",
        "sendgrid_api_key",
        "card",
        "card_number",
        "cvc",
        "cvv",
        "database_url",
        "jwt_secret_key",
        "stripe_webhook_secret",
        "private_key",
    }
)

_KEY_ALTERNATION = "|".join(sorted((re.escape(k) for k in SECRET_KEYS), key=len, reverse=True))
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization: Bearer xxx / Basic xxx, and Cookie headers rendered as text.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + MASK),
    (re.compile(r"(?i)\b(cookie|set-cookie)(\s*[:=]\s*)[^\r\n]+"), r"\1\2" + MASK),
    # JSON Web Tokens anywhere.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    # Stripe secret/restricted/webhook keys, SendGrid keys.
    (re.compile(r"\b(sk|rk|pk)_(test|live)_[A-Za-z0-9]{6,}"), MASK),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{6,}"), MASK),
    (re.compile(r"\bSG\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),
    # user:password@ in URLs (database URLs, proxies).
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@/\s]+@"), r"\1:" + MASK + "@"),
    # key=value, key: value and "key": "value" pairs for secret-named keys.
    (
        re.compile(r"(?i)([\"']?\b(?:" + _KEY_ALTERNATION + r")\b[\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;}\]]+)"),
        r"\1" + MASK,
    ),
]
# 13-19 digit card numbers, with optional spaces or dashes between groups; checked with Luhn.
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")

_known_secrets: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these exact values everywhere (configured keys, passwords known to the process)."""
    for value in values:
        if value and len(value) >= 6:
            _known_secrets.add(value)


def _luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return MASK if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group(0)


def redact(text: str) -> str:
    """Mask every secret this module recognises in `text`."""
    if not text:
        return text
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _CARD.sub(_mask_card, text)


def neutralise(text: str) -> str:
    """Escape CR, LF and control characters so user input cannot forge log lines."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def redact_value(key: str, value: Any, _depth: int = 0) -> Any:
    """Redact a structured value: secret-named keys are masked whole, strings by `redact`."""
    if key.lower() in SECRET_KEYS:
        return MASK
    if isinstance(value, str):
        return neutralise(redact(value))
    if _depth > 4:
        return value if isinstance(value, (int, float, bool, type(None))) else MASK
    if isinstance(value, Mapping):
        return {str(k): redact_value(str(k), v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_value("", v, _depth + 1) for v in value]
    if isinstance(value, (int, float, bool, type(None))):
        return value
    return neutralise(redact(str(value)))
