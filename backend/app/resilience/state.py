"""The app's resilience state: breakers, retry budgets, retry defaults, counters; built in create_app.

`init_resilience(app)` reads the config and stores one `Resilience` in `app.extensions["resilience"]`
(and its `BreakerRegistry` in `app.extensions["breakers"]`). Code outside an app context (a script,
a unit test) gets a process default built lazily with in-memory state; `reset_default_resilience()`
drops it.

Settings (all optional):
- `REDIS_URL`: breaker state shared by every process through Redis (else in memory, per process).
- `CIRCUIT_BREAKER_STORAGE`: "auto" (default: Redis when `REDIS_URL` is set) or "memory".
  In memory, admin actions (reset, force-open, disable) still reach every process: they are written to the
  app database and re-read every `OVERRIDES_REFRESH_SECONDS` (1.0) by each process (`shared_overrides`).
- `CIRCUIT_BREAKER_KEY_PREFIX` (default "oriel:"), `CIRCUIT_BREAKER_REDIS_TIMEOUT` (seconds, 0.25),
  `CIRCUIT_BREAKER_REDIS_PROBE_INTERVAL` (seconds between Redis probes during an outage, 2.0).
- `CIRCUIT_BREAKERS`: `{"stripe": {"min_calls": 10}, "*": {...}}`, fields of `BreakerConfig`. Without an
  explicit `slow_call_seconds`, a service's slow-call threshold is half its adapter's timeout
  (`STRIPE_TIMEOUT`, `GCS_TIMEOUT`, `SENDGRID_TIMEOUT`, the database's connect timeout), so a peer that
  answers just before timing out still trips its breaker; an explicit one at or above it is warned about.
- `RETRY_SLEEP_ENABLED` (default True; tests set False so retries do not sleep),
  `RETRY_BASE_DELAY` (0.2), `RETRY_MAX_DELAY` (5.0), `RETRY_DEADLINE` (20.0).
- `RETRY_BUDGET_RATIO` (0.2), `RETRY_BUDGET_WINDOW` (10.0), `RETRY_BUDGET_MIN_PER_SECOND` (0.5).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from flask import Flask, current_app, g, has_app_context
from sqlalchemy import Engine

from .breaker import SERVICE_DEFAULTS, BreakerRegistry, CircuitBreaker
from .breaker_store import BreakerStore, MemoryBreakerStore
from .budget import BudgetConfig, BudgetRegistry
from .retry import CALL_DEFAULTS, RetryPolicy, no_sleep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryEvent:
    """One guarded call, as told to recovery listeners (metrics)."""

    service: str
    operation: str
    outcome: str  # "ok", "error", "fallback" or "rejected" (open breaker)
    attempts: int
    duration: float  # seconds
    error: BaseException | None = None


class Resilience:
    """Breakers, budgets, retry defaults and counters of one app (or of the process default)."""

    def __init__(
        self,
        breakers: BreakerRegistry,
        budgets: BudgetRegistry | None = None,
        *,
        retry_defaults: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | Any = random,
    ) -> None:
        self.breakers = breakers
        self.budgets = budgets or BudgetRegistry()
        self.retry_defaults = retry_defaults or CALL_DEFAULTS
        self.sleep = sleep
        self.clock = clock
        self.rng = rng
        self.listeners: list[Callable[[RecoveryEvent], None]] = []
        self._counters: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, service: str, event: str, n: int = 1) -> None:
        """Increment a counter (fallbacks served, budget exhaustions, rejections...)."""
        with self._lock:
            self._counters[(service, event)] += n

    def counters(self) -> dict[str, dict[str, int]]:
        """Counters by service, then event."""
        with self._lock:
            items = list(self._counters.items())
        result: dict[str, dict[str, int]] = {}
        for (service, event), value in items:
            result.setdefault(service, {})[event] = value
        return result

    def notify(self, event: RecoveryEvent) -> None:
        """Tell every listener about a call; a failing listener is logged, never raised."""
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # monitoring never breaks a call
                logger.exception("Recovery listener %r failed", listener)

    def snapshot(self) -> dict[str, Any]:
        """Breakers, budgets and counters for the monitoring endpoints."""
        return {
            "storage": self.breakers.storage,
            "breakers": self.breakers.snapshot(),
            "budgets": {name: b.snapshot() for name, b in sorted(self.budgets.all().items())},
            "counters": self.counters(),
        }


#: Each guarded service's adapter timeout: its config key and default (seconds).
ADAPTER_TIMEOUTS: Mapping[str, tuple[str, float]] = {
    "stripe": ("STRIPE_TIMEOUT", 10.0),
    "storage": ("GCS_TIMEOUT", 10.0),
    "email": ("SENDGRID_TIMEOUT", 5.0),
}
SLOW_FRACTION = 0.5  # of the timeout: slower than this is "slow", well before "failed"


def adapter_timeouts(config: Mapping[str, Any]) -> dict[str, float]:
    """The timeout, in seconds, of every service whose calls have one (the database: its connect timeout)."""
    timeouts = {name: float(config.get(key, default)) for name, (key, default) in ADAPTER_TIMEOUTS.items()}
    connect_args = (config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}).get("connect_args") or {}
    if "connect_timeout" in connect_args:  # PostgreSQL; SQLite opens a local file (its `timeout` waits for locks)
        timeouts["database"] = float(connect_args["connect_timeout"])
    return timeouts


def slow_call_defaults(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-service breaker defaults with each slow-call threshold below the service's own timeout.

    Warns (once, at start) about an explicit `CIRCUIT_BREAKERS` threshold at or above the timeout: such a
    breaker would only ever see the timeouts, never the slowness that precedes them.
    """
    defaults = {name: dict(values) for name, values in SERVICE_DEFAULTS.items()}
    overrides = config.get("CIRCUIT_BREAKERS") or {}
    for name, timeout in adapter_timeouts(config).items():
        defaults.setdefault(name, {})["slow_call_seconds"] = round(timeout * SLOW_FRACTION, 3)
        explicit = {**overrides.get("*", {}), **overrides.get(name, {})}.get("slow_call_seconds")
        if explicit is not None and float(explicit) >= timeout:
            logger.warning(
                "CIRCUIT_BREAKERS sets %s slow_call_seconds=%s, not below its %s s timeout: slow calls never trip it",
                name,
                explicit,
                timeout,
            )
    return defaults


def build_resilience(config: Mapping[str, Any], store: BreakerStore | None = None) -> Resilience:
    """A `Resilience` from config values (see the module docstring)."""
    if store is None:
        store = _store_from_config(config)
    breakers = BreakerRegistry(
        store, overrides=config.get("CIRCUIT_BREAKERS") or {}, service_defaults=slow_call_defaults(config)
    )
    budgets = BudgetRegistry(
        BudgetConfig(
            ratio=float(config.get("RETRY_BUDGET_RATIO", 0.2)),
            window_seconds=float(config.get("RETRY_BUDGET_WINDOW", 10.0)),
            min_retries_per_second=float(config.get("RETRY_BUDGET_MIN_PER_SECOND", 0.5)),
        )
    )
    defaults = replace(
        CALL_DEFAULTS,
        base_delay=float(config.get("RETRY_BASE_DELAY", 0.2)),
        max_delay=float(config.get("RETRY_MAX_DELAY", 5.0)),
        deadline=float(config.get("RETRY_DEADLINE", 20.0)),
    )
    sleep = time.sleep if config.get("RETRY_SLEEP_ENABLED", True) else no_sleep
    return Resilience(breakers, budgets, retry_defaults=defaults, sleep=sleep)


def _store_from_config(config: Mapping[str, Any]) -> BreakerStore:
    url = config.get("REDIS_URL")
    if not url or (config.get("CIRCUIT_BREAKER_STORAGE") or "auto") == "memory":
        return MemoryBreakerStore()
    from ..redis_client import make_redis_client
    from .breaker_redis import RedisBreakerStore  # redis only when configured

    client = make_redis_client(url, timeout=float(config.get("CIRCUIT_BREAKER_REDIS_TIMEOUT", 0.25)))
    return RedisBreakerStore(
        client,
        prefix=config.get("CIRCUIT_BREAKER_KEY_PREFIX") or "oriel:",
        probe_interval=float(config.get("CIRCUIT_BREAKER_REDIS_PROBE_INTERVAL", 2.0)),
    )


def init_resilience(app: Flask) -> Resilience:
    """Build the app's breakers and budgets and store them in `app.extensions`."""
    store = _store_from_config(app.config)
    if isinstance(store, MemoryBreakerStore):
        store = _shared_overrides(app, store)
    resilience = build_resilience(app.config, store)
    app.extensions["resilience"] = resilience
    app.extensions["breakers"] = resilience.breakers
    logger.debug("Resilience ready: breaker storage %s", resilience.breakers.storage)
    return resilience


def _shared_overrides(app: Flask, store: MemoryBreakerStore) -> BreakerStore:
    """Without Redis, admin actions reach every process through the app database (when others can open it)."""
    from .shared_overrides import OverrideTable, SharedOverrideStore, database_is_shared

    if not database_is_shared(app.config.get("SQLALCHEMY_DATABASE_URI")):
        return store  # a database in memory: this process is the whole deployment
    return SharedOverrideStore(
        OverrideTable(app_engine(app)),
        refresh_seconds=float(app.config.get("OVERRIDES_REFRESH_SECONDS", 1.0)),
        local=store,
    )


def app_engine(app: Flask) -> Callable[[], Engine]:
    """The app's database engine, looked up once on first use (no app context needed by the caller)."""
    engines: list[Engine] = []

    def engine() -> Engine:
        if not engines:
            from ..extensions import db

            with app.app_context():
                engines.append(db.engine)
        return engines[0]

    return engine


_default: Resilience | None = None
_default_lock = threading.Lock()


def current_resilience() -> Resilience:
    """The current app's `Resilience`, or the process default outside an app context."""
    if has_app_context():
        resilience = current_app.extensions.get("resilience")
        if resilience is not None:
            return resilience
    global _default
    with _default_lock:
        if _default is None:
            _default = build_resilience({})
        return _default


def reset_default_resilience() -> None:
    """Forget the process default (tests)."""
    global _default
    with _default_lock:
        _default = None


def get_breaker(name: str) -> CircuitBreaker:
    """The breaker of one service (of the current app)."""
    return current_resilience().breakers.get(name)


def all_breakers() -> dict[str, CircuitBreaker]:
    """Every breaker of the current app, by service name."""
    return current_resilience().breakers.all()


_degraded_outside_app: ContextVar[frozenset[str]] = ContextVar("degraded_services", default=frozenset())


def mark_degraded(service: str) -> None:
    """Record that a fallback served `service` in the current request (or job)."""
    if has_app_context():
        g.setdefault("_degraded_services", set()).add(service)
    else:
        _degraded_outside_app.set(_degraded_outside_app.get() | {service})


def degraded_services() -> list[str]:
    """Services a fallback stood in for during this request; views put `"degraded": true` when non-empty."""
    if has_app_context():
        return sorted(g.get("_degraded_services", ()))
    return sorted(_degraded_outside_app.get())
