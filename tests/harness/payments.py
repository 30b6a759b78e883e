"""An app whose Stripe is the local peer (or a fault proxy in front of it), with the test's credit packs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from tests.harness.peers.stripe_peer import StripePeer

PACKS = {"starter": (5, 500), "studio": (100, 6000)}


def payments_app(make_app: Callable[..., Flask], api_base: str, **extra: Any) -> Flask:
    """An app whose Stripe is `api_base` (the peer, or a fault proxy in front of it)."""
    settings: dict[str, Any] = {
        "RETRY_SLEEP_ENABLED": False,
        "STRIPE_API_KEY": StripePeer.api_key,
        "STRIPE_WEBHOOK_SECRET": StripePeer.webhook_secret,
        "STRIPE_API_BASE": api_base,
        "STRIPE_TIMEOUT": 0.5,
        "RENDER_PACKS": PACKS,
    }
    settings.update(extra)
    return make_app(**settings)
