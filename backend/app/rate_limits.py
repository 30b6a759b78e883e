"""Rate limiting of our own API with Flask-Limiter, one limiter per app.

Views declare which configured limit applies with `@rate_limited("RATELIMIT_LOGIN")`; `init_rate_limits`
builds the app's own `Limiter` and applies the limits. A module-level Limiter would keep the first app's
storage options, prefix and defaults for ever (it merges later configs into the first), which is wrong
for tests and for any process that builds more than one app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

F = TypeVar("F", bound=Callable[..., Any])


def rate_limited(config_key: str) -> Callable[[F], F]:
    """Limit a view by the limit string in `app.config[config_key]` (e.g. "10 per minute")."""

    def decorate(view: F) -> F:
        view._rate_limit_key = config_key  # type: ignore[attr-defined]
        return view

    return decorate


def get_limiter(app: Flask | None = None) -> Limiter:
    """The limiter of `app` (default: the current app)."""
    return (app or current_app).extensions["rate_limiter"]


def init_rate_limits(app: Flask) -> None:
    """Build the app's limiter (Redis with REDIS_URL, memory otherwise) and apply the declared limits."""
    cfg = app.config
    options: dict[str, Any] = {}
    if cfg.get("REDIS_URL"):
        # Short timeouts and no client retries: a dead Redis must cost milliseconds, not seconds.
        options = {"socket_connect_timeout": 0.25, "socket_timeout": 0.25, "retry": None}
    limiter = Limiter(
        key_func=get_remote_address,
        default_limits=[lambda: current_app.config["RATELIMIT_DEFAULT"]],
        storage_uri=cfg.get("REDIS_URL") or "memory://",
        storage_options=options,
        key_prefix=cfg.get("RATELIMIT_KEY_PREFIX", "oriel"),
        strategy="moving-window",
        # Flask-Limiter would stamp Retry-After on every response, 200s included; our 429 handler sets it.
        headers_enabled=False,
        in_memory_fallback_enabled=True,
    )
    limiter.init_app(app)
    for endpoint, view in list(app.view_functions.items()):
        key = getattr(view, "_rate_limit_key", None)
        if key is not None:
            app.view_functions[endpoint] = limiter.limit(lambda key=key: current_app.config[key])(view)
    app.extensions["rate_limiter"] = limiter
