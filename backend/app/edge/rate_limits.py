"""Rate limiting of our own API with Flask-Limiter, one limiter per app.

Views declare which configured limit applies with `@rate_limited("RATELIMIT_LOGIN")`, opt out with
`@never_rate_limited` (load-balancer probes and the metrics scrape, which one address polls all day),
and may add a limit keyed by something other than the address with `@rate_limited(..., key=...)`.
`init_rate_limits` builds the app's own `Limiter` and applies the limits. A module-level Limiter would
keep the first app's storage options, prefix and defaults for ever (it merges later configs into the
first), which is wrong for tests and for any process that builds more than one app.

The client address is `request.remote_addr`: the socket's peer, or with `TRUSTED_PROXIES` > 0 the
address werkzeug's `ProxyFix` took from the last hops of `X-Forwarded-For` (see `ingress.py`).

The default limit (every view without a limit of its own) is checked by `DefaultLimit`, not by
Flask-Limiter's request hook: that hook resolves every limit of every request through its generic
machinery (blueprint and exemption scopes, parsing the limit string again, a context object looked up
seven times), about 110 µs a request here, more than the rest of our request stack together. The
default limit is one parsed item per view, so `DefaultLimit` hits it with the same `limits` strategy,
storage and keys Flask-Limiter would use (the rate-limit status endpoint reads the same windows), and
falls back to memory while Redis is unreachable, as Flask-Limiter does. Flask-Limiter still checks
the views' own limits (login, registration, error reports: its decorator wrappers) and knows every
limit for the status endpoint.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import redis
from flask import Flask, Response, current_app, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from flask_limiter.util import get_remote_address
from limits import RateLimitItem, parse_many
from limits.errors import StorageError as LimitsStorageError
from limits.strategies import STRATEGIES, RateLimiter

from ..error_handlers import error_response
from ..errors import RateLimitError
from ..redis_client import fail_fast_options
from .rate_limit_storage import SweptMemoryStorage
from .rejection_log import init_rejection_log, record_rejection

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtraLimit:
    """A limit keyed by `key()` (not the address), counted only for responses `deduct_when` accepts."""

    config_key: str
    key: Callable[[], str]
    deduct_when: Callable[[Response], bool] | None = None


def rate_limited(config_key: str, *, key: Callable[[], str] | None = None, deduct_when: Any = None) -> Callable[[F], F]:
    """Limit a view by the limit string in `app.config[config_key]` (e.g. "10 per minute").

    Without `key` the limit is per client address; with it, per whatever `key()` returns (an account),
    and with `deduct_when` only the responses it accepts count (failed logins, not every login).
    """

    def decorate(view: F) -> F:
        if key is None:
            view._rate_limit_key = config_key  # type: ignore[attr-defined]
        else:
            extra = [*getattr(view, "_rate_limit_extra", ()), ExtraLimit(config_key, key, deduct_when)]
            view._rate_limit_extra = extra  # type: ignore[attr-defined]
        return view

    return decorate


def never_rate_limited(view: F) -> F:
    """Exempt a view from every limit, the default one included (probes, the metrics scrape)."""
    view._rate_limit_exempt = True  # type: ignore[attr-defined]
    return view


def get_limiter(app: Flask | None = None) -> Limiter:
    """The limiter of `app` (default: the current app)."""
    return (app or current_app).extensions["rate_limiter"]


def init_rate_limits(app: Flask) -> None:
    """Build the app's limiter (Redis with REDIS_URL, memory otherwise), its 429 handler, and the declared limits."""
    cfg = app.config
    app.register_error_handler(RateLimitExceeded, handle_rate_limit)  # Flask-Limiter's breach, in our envelope
    options: dict[str, Any] = {}
    if cfg.get("REDIS_URL"):
        options = fail_fast_options(0.25)  # a dead Redis must cost milliseconds, not seconds
    limiter = Limiter(
        key_func=get_remote_address,
        default_limits=[lambda: current_app.config["RATELIMIT_DEFAULT"]],
        storage_uri=cfg.get("REDIS_URL") or f"{SweptMemoryStorage.STORAGE_SCHEME[0]}://",
        storage_options=options,
        key_prefix=cfg.get("RATELIMIT_KEY_PREFIX", "oriel"),
        # O(1) a hit (two counters a key): a moving window keeps one entry per counted request, up to the limit,
        # for every client and view, and shifts that list on every hit.
        strategy=cfg.get("RATELIMIT_STRATEGY", "sliding-window-counter"),
        # Flask-Limiter would stamp Retry-After on every response, 200s included; our 429 handler sets it.
        headers_enabled=False,
        in_memory_fallback_enabled=True,
    )
    limiter.init_app(app)
    default = DefaultLimit(app, limiter)
    # Views with the default limit only are DefaultLimit's, and exempt views nobody's: Flask-Limiter's request
    # hooks are not called for them at all (its filter as well, should a hook be added that this misses).
    limiter.request_filter(default.skips_current_request)
    _skip_limiter_hooks(app, limiter, default.skips_current_request, remove=not cfg.get("RATELIMIT_ENABLED", True))
    if cfg.get("RATELIMIT_ENABLED", True):
        app.before_request(default.check)
    app.extensions["default_rate_limit"] = default
    for endpoint, view in list(app.view_functions.items()):
        if getattr(view, "_rate_limit_exempt", False):
            app.view_functions[endpoint] = limiter.exempt(view)
            continue
        wrapped = view
        for extra in getattr(view, "_rate_limit_extra", ()):
            wrapped = limiter.limit(
                lambda name=extra.config_key: current_app.config[name],
                key_func=extra.key,
                deduct_when=extra.deduct_when,
                scope=extra.config_key,  # its own counter, beside the per-address one
            )(wrapped)
        key = getattr(view, "_rate_limit_key", None)
        if key is not None:
            wrapped = limiter.limit(lambda key=key: current_app.config[key])(wrapped)
        app.view_functions[endpoint] = wrapped
    app.extensions["rate_limiter"] = limiter
    init_rejection_log(app)  # 429s and rejected tokens are logged through it, in aggregate


def _skip_limiter_hooks(app: Flask, limiter: Limiter, skip: Callable[[], bool], *, remove: bool = False) -> None:
    """Wrap Flask-Limiter's request hooks so that they return at once when `skip()` says it has nothing to do.

    With rate limits off (`remove`) the hooks are taken out: disabled, Flask-Limiter does nothing in them.

    Its views' own limits are checked by its decorator wrappers, not by these hooks; for the other views the
    hooks only resolve limits that do not apply (about 60 µs a request). Found by owner (a bound method's
    `__self__`, a partial's first argument), so a renamed hook is still found; a test checks each one is.
    """

    def wrap(hook: Callable[..., Any], passthrough: bool) -> Callable[..., Any]:
        def skipping(*args: Any) -> Any:
            if skip():
                return args[0] if passthrough else None  # an after_request hook hands the response on
            return hook(*args)

        return skipping

    # Its before_request hook only applies default, application and meta limits: the default one is DefaultLimit's
    # and there are no others, so it goes. The after_request hook makes the conditional deductions (failed logins)
    # and the teardown clears its per-request context: those stay for the views with limits of their own.
    for registry, passthrough, always_remove in (
        (app.before_request_funcs, False, True),
        (app.after_request_funcs, True, False),
        (app.teardown_request_funcs, False, False),
    ):
        hooks = registry.get(None, [])
        for index, hook in reversed(list(enumerate(hooks))):
            # A bound method, or a partial whose first argument is the limiter (its after_request hook).
            owner = hook.args[0] if isinstance(hook, partial) and hook.args else getattr(hook, "__self__", None)
            if owner is limiter:
                if remove or always_remove:
                    del hooks[index]
                else:
                    hooks[index] = wrap(hook, passthrough)


def rate_limit_error(limit: str | None, retry_after: int, *, account: str | None = None) -> RateLimitError:
    """The 429 for a breached limit, its rejection recorded (in aggregate: rejection_log.py)."""
    client = request.remote_addr
    record_rejection(
        current_app._get_current_object(),  # type: ignore[attr-defined]
        "login_throttled" if account is not None else "rate_limit_exceeded",
        "Too many failed logins for one account" if account is not None else "Rate limit exceeded",
        (client, limit, request.endpoint, account),
        limit=limit,
        endpoint=request.endpoint,
        remote_addr=client,
        account=account,
    )
    return RateLimitError(
        "Too many requests. Retry after the time in `retry_after`.",
        details={"limit": limit} if limit else {},
        retry_after=retry_after,
    )


def handle_rate_limit(exc: RateLimitExceeded) -> Response:
    """Flask-Limiter's breach → 429 RATE_LIMITED with `retry_after`, logged in aggregate (rejection_log)."""
    current = get_limiter().current_limit
    retry_after = max(1, math.ceil(current.window.reset_time - time.time())) if current is not None else 1
    limit = getattr(exc, "limit", None)
    # A limit keyed by something else than the address (an account) names it; the address is in the line anyway.
    account = limit.key_func() if limit is not None and limit.key_func is not get_remote_address else None
    return error_response(
        rate_limit_error(str(limit.limit) if limit is not None else None, retry_after, account=account)
    )


#: What a dead Redis raises through `limits` (its own error, or redis-py's connection and timeout errors).
# (OSError covers the builtin ConnectionError and TimeoutError; redis-py's errors derive from none of these.)
STORAGE_ERRORS: tuple[type[BaseException], ...] = (LimitsStorageError, OSError, redis.RedisError)


OWNED, EXEMPT, OWN = "owned", "exempt", "own"


class DefaultLimit:
    """The default limit of every view without its own: one `limits` hit per request (see the module doc)."""

    #: Seconds a process counts in memory after Redis failed, before it tries Redis again.
    RETRY_STORAGE_SECONDS = 5.0

    def __init__(self, app: Flask, limiter: Limiter) -> None:
        cfg = app.config
        self.app = app
        self.limiter = limiter
        self.items: list[RateLimitItem] = parse_many(cfg["RATELIMIT_DEFAULT"])
        self.texts = [str(item) for item in self.items]
        self.prefix = cfg.get("RATELIMIT_KEY_PREFIX", "oriel")
        # endpoint -> OWNED (the default limit only), EXEMPT or OWN (limits of its own: Flask-Limiter's)
        self._kinds: dict[str, str] = {}
        self._fallback: RateLimiter = STRATEGIES[cfg.get("RATELIMIT_STRATEGY", "sliding-window-counter")](
            SweptMemoryStorage()
        )
        self._storage_back_at = 0.0
        self._lock = threading.Lock()

    def _kind(self, endpoint: str) -> str:
        kind = self._kinds.get(endpoint)
        if kind is None:  # first request to this view (views added after start-up are seen here too)
            view = self.app.view_functions.get(endpoint)
            if view is None or getattr(view, "_rate_limit_exempt", False) or endpoint.rsplit(".", 1)[-1] == "static":
                kind = EXEMPT
            elif getattr(view, "_rate_limit_key", None) or getattr(view, "_rate_limit_extra", None):
                kind = OWN
            else:
                kind = OWNED
            self._kinds[endpoint] = kind
        return kind

    def skips_current_request(self) -> bool:
        """Whether Flask-Limiter has nothing to do here: a view this class limits, an exempt one, or no view."""
        endpoint = request.endpoint
        return endpoint is None or self._kind(endpoint) != OWN

    def _strategy(self) -> RateLimiter:
        if self._storage_back_at and time.monotonic() < self._storage_back_at:
            return self._fallback
        # Flask-Limiter's own choice: the configured storage, or its memory fallback while it finds Redis dead.
        return self.limiter.limiter

    def _storage_failed(self, exc: BaseException) -> None:
        with self._lock:
            first = not self._storage_back_at or time.monotonic() >= self._storage_back_at
            self._storage_back_at = time.monotonic() + self.RETRY_STORAGE_SECONDS
        if first:
            logger.warning("Rate limit storage unreachable (%s): counting in memory for now", type(exc).__name__)

    def check(self) -> None:
        """Count this request against the default limit of its view; RateLimitError when it is over."""
        endpoint = request.endpoint
        if endpoint is None or self._kind(endpoint) != OWNED:
            return
        args = (self.prefix, request.remote_addr or "127.0.0.1", endpoint)
        strategy = self._strategy()
        for item, text in zip(self.items, self.texts, strict=True):
            try:
                allowed = strategy.hit(item, *args)
            except STORAGE_ERRORS as exc:
                self._storage_failed(exc)
                strategy = self._fallback
                allowed = strategy.hit(item, *args)
            if not allowed:
                try:
                    reset = strategy.get_window_stats(item, *args).reset_time
                except STORAGE_ERRORS:
                    reset = time.time() + 1
                raise rate_limit_error(text, max(1, math.ceil(reset - time.time())))


def shared_storage_warning(app: Flask, processes: int) -> str | None:
    """The warning for `processes` serving processes that each keep their own limits, or None.

    Without REDIS_URL every process counts in its own memory, so a client gets `processes` times its
    limit. gunicorn's first worker calls this once at start (gunicorn.conf.py), and logs what it says.
    """
    cfg = app.config
    if processes <= 1 or not cfg.get("RATELIMIT_ENABLED", True) or cfg.get("REDIS_URL"):
        return None
    return (
        f"Rate limits are kept in each process's memory (no REDIS_URL) and {processes} processes serve: "
        f"a client gets up to {processes} times each limit. Set REDIS_URL to share them."
    )
