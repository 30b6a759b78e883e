"""Keep secrets out of logs and neutralise log injection.

`redact()` masks secrets by shape (bearer tokens, JWTs, Stripe and SendGrid keys, card numbers,
passwords in URLs, `password=`-style pairs, Authorization and Cookie headers) and by value (secrets
registered from the running configuration). `neutralise()` escapes CR, LF and other control
characters in user-supplied text so one call can never forge a second log line.

Every log record goes through here on the request thread, so each pattern runs only when a cheap
substring test says it could match: most lines (paths, IDs, plain messages) cost a few substring
searches instead of a dozen regex scans.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
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
        "proxy_authorization",
        "cookie",
        "set_cookie",
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
        "x_api_key",
    }
)
# Key names ending like this are secrets too (`x-auth-token`, `smtp_password`, `aws_secret`).
SECRET_SUFFIXES = ("password", "passwd", "secret", "_token", "api_key", "apikey", "private_key", "access_key")
# Every secret key contains one of these; a text without any of them needs no key=value scan.
_KEY_HINTS = ("pass", "pwd", "secret", "token", "key", "auth", "cookie", "jwt", "card", "cvc", "cvv", "database_url")


@lru_cache(maxsize=2048)
def is_secret_key(name: str) -> bool:
    """Whether a field, header or parameter called `name` holds a secret."""
    normal = name.lower().replace("-", "_")
    return normal in SECRET_KEYS or normal.endswith(SECRET_SUFFIXES)


def _mask_pair(match: re.Match[str]) -> str:
    if match.group(3).startswith(MASK[:-1]) or not is_secret_key(match.group(2)):
        return match.group(0)
    return match.group(1) + MASK


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


_WORD_AT_END = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)[\"']?\s*$")


def _has_secret_pair(text: str, low: str) -> bool:
    """Whether a secret-named key is followed by `:` or `=` (a regex scan is ten times slower)."""
    if not any(h in low for h in _KEY_HINTS):
        return False
    for sep in ":=":
        i = text.find(sep)
        while i > 0:
            match = _WORD_AT_END.search(text, max(0, i - 64), i)
            if match is not None and is_secret_key(match.group(1)):
                return True
            i = text.find(sep, i + 1)
    return False


Screen = Callable[[str, str], bool]  # (text, lower-cased text) -> may the pattern match?
_HEADER_LINE = re.compile(r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie)([\"']?\s*[:=]\s*)[^\r\n]+")
_CARD_SCREEN = re.compile(r"\d(?:[ -]?\d){12}")
_RULES: list[tuple[Screen, re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # Authorization and Cookie headers rendered as text: everything after the name.
    (
        lambda t, low: ("authorization" in low or "cookie" in low) and _has_secret_pair(t, low),
        _HEADER_LINE,
        r"\1\2" + MASK,
    ),
    # Bearer xxx / Basic xxx anywhere.
    (
        lambda t, low: "bearer" in low or "basic" in low,
        re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
        r"\1 " + MASK,
    ),
    # JSON Web Tokens anywhere.
    (lambda t, low: "eyJ" in t, re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    # Stripe secret/restricted/publishable keys, webhook secrets, SendGrid keys.
    (lambda t, low: "_test_" in t or "_live_" in t, re.compile(r"\b(sk|rk|pk)_(test|live)_[A-Za-z0-9]{6,}"), MASK),
    (lambda t, low: "whsec_" in t, re.compile(r"\bwhsec_[A-Za-z0-9+/=]{6,}"), MASK),
    (lambda t, low: "SG." in t, re.compile(r"\bSG\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),
    # user:password@ in URLs (database URLs, proxies).
    (
        lambda t, low: "://" in t and "@" in t,
        re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@/\s]+@"),
        r"\1:" + MASK + "@",
    ),
    # key=value, key: value and "key": "value" pairs whose key names a secret.
    (
        _has_secret_pair,
        re.compile(r"([\"']?\b([A-Za-z][A-Za-z0-9_.-]*)\b[\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;}\]]+)"),
        _mask_pair,
    ),
    # 13-19 digit card numbers, with optional spaces or dashes between groups; checked with Luhn.
    (lambda t, low: _CARD_SCREEN.search(t) is not None, re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), _mask_card),
]
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")

_known_secrets: set[str] = set()
# Log values repeat (paths, endpoints, messages, codes): remember the cleaned form of short ones.
_clean_cache: dict[str, str] = {}
_CACHE_MAX_ENTRIES = 4096
_CACHE_MAX_LENGTH = 256
# Bumped whenever the secrets change, so that other caches of cleaned values know to start over.
_generation = 0


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these exact values everywhere (configured keys, passwords known to the process)."""
    global _generation
    for value in values:
        if value and len(value) >= 6:
            _known_secrets.add(value)
    _clean_cache.clear()  # cached results predate the new secrets
    _generation += 1


def secrets_generation() -> int:
    """A number that changes whenever secrets are registered (callers caching cleaned text compare it)."""
    return _generation


def redact(text: str) -> str:
    """Mask every secret this module recognises in `text`."""
    if not text:
        return text
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    low = text.lower()
    for screen, pattern, replacement in _RULES:
        if screen(text, low):
            text = pattern.sub(replacement, text)
            low = text.lower()
    return text


def neutralise(text: str) -> str:
    """Escape CR, LF and control characters so user input cannot forge log lines."""
    if text.isprintable() or not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def clean_text(text: str) -> str:
    """Redact, then neutralise: what every free-text log value goes through."""
    cached = _clean_cache.get(text)
    if cached is not None:
        return cached
    cleaned = neutralise(redact(text))
    if len(text) <= _CACHE_MAX_LENGTH:
        if len(_clean_cache) >= _CACHE_MAX_ENTRIES:
            _clean_cache.clear()  # cheaper than LRU bookkeeping on every hit
        _clean_cache[text] = cleaned
    return cleaned


def redact_value(key: str, value: Any, _depth: int = 0) -> Any:
    """Redact a structured value: secret-named keys are masked whole, strings by `redact`."""
    if type(value) is str:  # the common case first: most log fields are plain strings
        return MASK if key and is_secret_key(key) else clean_text(value)
    if value is None or isinstance(value, bool):
        return value
    if key and is_secret_key(key):
        return MASK
    if isinstance(value, float) or (isinstance(value, int) and abs(value) < 10**12):
        return value  # too short to be a card number
    if isinstance(value, str):
        return clean_text(value)
    if _depth > 4:
        return MASK
    if isinstance(value, Mapping):
        return {clean_text(str(k)): redact_value(str(k), v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_value("", v, _depth + 1) for v in value]
    return clean_text(str(value))
