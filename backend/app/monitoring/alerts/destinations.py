"""Where alerts go: one breaker per destination, signed webhook bodies, and no webhooks into private networks.

- `breaker_name(channel)`: `alerts:<type>:<10 hex of sha256(url)>`, so a webhook answering 500 opens its
  own breaker and PagerDuty (another destination) keeps paging. Email has no breaker of its own here: it
  goes through the email service, which has the `email` breaker and an outbox.
- `signature_header(secret, body, t)`: `X-Oriel-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`
  (Stripe's scheme); `verify_signature` is what a receiver does (docs/RELIABILITY.md shows it in full).
- `check_url(url, allow_private)`: resolves the host and refuses it when any address is loopback,
  link-local, private, multicast, reserved or unspecified, unless `ALERT_WEBHOOK_ALLOW_PRIVATE`. Checked
  when a rule is configured and again before every send, so a name re-pointed at 127.0.0.1 or the cloud
  metadata address (DNS rebinding) after it was configured is refused then.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ...errors import ValidationError
from ...resilience.breaker import INTERNAL_PREFIX

SIGNATURE_HEADER = "X-Oriel-Signature"
DEFAULT_TOLERANCE_SECONDS = 300

Resolver = Callable[[str, int], list[str]]


class WebhookDestinationError(ValidationError):
    """The webhook URL points at an address alerts may not be sent to (loopback, link-local, private)."""

    code = "WEBHOOK_DESTINATION_REFUSED"


class WebhookHostUnresolvedError(WebhookDestinationError):
    """The webhook host does not resolve (now): refused when configured, retried later when sending."""

    code = "WEBHOOK_HOST_UNRESOLVED"
    recoverable = True


def new_secret() -> str:
    """A fresh per-rule signing secret."""
    return "whsec_" + secrets.token_hex(24)


def destination(channel: dict[str, Any]) -> str:
    """What the channel sends to: the URL, or the email address."""
    if channel["type"] == "email":
        return str(channel["to"])
    if channel["type"] == "pagerduty":
        return str(channel.get("url") or "")
    return str(channel["url"])


def breaker_name(channel: dict[str, Any]) -> str | None:
    """The breaker of this channel's destination (None for email: the email service guards itself)."""
    if channel["type"] == "email":
        return None
    from .delivery import DEFAULT_PAGERDUTY_URL  # the default lives with the sender

    url = destination(channel) or DEFAULT_PAGERDUTY_URL
    return f"{INTERNAL_PREFIX}:{channel['type']}:{hashlib.sha256(url.encode()).hexdigest()[:10]}"


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-Oriel-Signature` value for `body`: `t=<unix>,v1=<hex>`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: str, body: bytes, header: str, *, tolerance: float = DEFAULT_TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """What a receiver checks: a `v1` HMAC of `t.body` matches and `t` is within `tolerance` seconds of now."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False  # an old, replayed message
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, given) for given in parts.get("v1", []))


def _resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, *, allow_private: bool, resolve: Resolver = _resolve, field: str = "url") -> None:
    """Refuse a webhook URL whose host resolves to any non-public address (unless private ones are allowed)."""
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise WebhookDestinationError("The webhook URL has no host.", field=field)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(host, port)
    except (OSError, ValueError) as exc:
        raise WebhookHostUnresolvedError(f"The webhook host {host} does not resolve.", field=field) from exc
    refused = sorted({a for a in addresses if _forbidden(a)})
    if refused or not addresses:
        raise WebhookDestinationError(
            f"The webhook host {host} resolves to a loopback, link-local or private address; alerts are not "
            "sent there unless ALERT_WEBHOOK_ALLOW_PRIVATE is true.",
            field=field,
            details={"host": host, "addresses": refused},
        )
