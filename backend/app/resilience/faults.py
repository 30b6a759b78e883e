"""Fault injection for tests and staging (seed 003's chaos monkey, made safe).

An admin adds a rule: make service X fail (connection refused), slow down (sleep, then call) or
answer with a given HTTP status, at a given rate, for a bounded time. `call_with_recovery` wraps
each guarded call with `wrap(service, operation, fn)`, so an injected fault goes through exactly
what a real one would: the breaker counts it, the classifier judges it, retries and fallbacks run.

Safety: rules can only be added when `FAULT_INJECTION_ENABLED` is set, never in the production
config (`ENV_NAME == "production"`), whatever the flag says; every rule expires (at most an
hour); delays are capped at 30 s. Rules reach every process that makes the call (web workers and the
job worker that renders): with `REDIS_URL` they are kept in Redis (one key per service, expiring with
the rule), otherwise in the app database (`shared_overrides`); every process re-reads them at most every
`OVERRIDES_REFRESH_SECONDS` (1), and the API says where they are shared and how soon they apply. Only a
database in memory (one process by construction) keeps them in the answering process alone.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from flask import Flask, current_app, has_app_context
from sqlalchemy.exc import SQLAlchemyError

from ..errors import AuthorizationError, ExternalServiceError
from .shared_overrides import FAULT, OverrideTable, database_is_shared
from .state import app_engine

logger = logging.getLogger(__name__)

T = TypeVar("T")
EXTENSION = "fault_injection"
MAX_DELAY_SECONDS = 30.0
MAX_DURATION_SECONDS = 3600.0
Mode = Literal["fail", "slow", "status"]


class FaultInjectionDisabledError(AuthorizationError):
    """Fault injection is turned off on this server (always in production)."""

    code = "FAULT_INJECTION_DISABLED"


@dataclass(frozen=True)
class FaultRule:
    """One injected fault: which service (and optionally operation), how, how often, until when."""

    service: str
    mode: Mode
    rate: float = 1.0
    delay_seconds: float = 0.0
    status: int = 503
    operation: str | None = None
    expires_at: float = 0.0  # wall clock

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready form with the seconds left."""
        data = asdict(self)
        data["expires_in_seconds"] = max(0, round(self.expires_at - now, 1))
        return data


class InjectedConnectionError(ConnectionRefusedError):
    """A connection failure injected on purpose: a refused connection (nothing sent, so never ambiguous)."""


def _http_error(status: int, service: str) -> Exception:
    import requests  # a real HTTPError with a real Response, so the classifier judges it like any other

    response = requests.Response()
    response.status_code = status
    response.reason = "Injected fault"
    if status == 429:
        response.headers["Retry-After"] = "1"
    return requests.HTTPError(f"{status} injected fault for {service}", response=response)


class RedisFaultStore:
    """Rules shared by every process through Redis: `<prefix>fault:<service>` holds the rule as JSON."""

    def __init__(self, client: Any, prefix: str = "oriel:") -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, service: str) -> str:
        return f"{self.prefix}fault:{service}"

    def put(self, rule: FaultRule, now: float) -> None:
        """Store the rule until it expires."""
        import redis

        ttl_ms = max(1, int((rule.expires_at - now) * 1000))
        try:
            self.client.set(self._key(rule.service), json.dumps(asdict(rule)), px=ttl_ms)
        except redis.RedisError as exc:
            raise ExternalServiceError("Fault rules cannot be stored: Redis is unavailable.") from exc

    def delete(self, services: list[str]) -> int:
        """Remove the rules of `services`; how many existed."""
        import redis

        if not services:
            return 0
        try:
            return int(self.client.delete(*[self._key(s) for s in services]))
        except redis.RedisError as exc:
            raise ExternalServiceError("Fault rules cannot be removed: Redis is unavailable.") from exc

    def load(self, services: list[str]) -> dict[str, FaultRule]:
        """The live rules of `services` (ConnectionError when Redis is unavailable)."""
        import redis

        if not services:
            return {}
        try:
            values = self.client.mget([self._key(s) for s in services])
        except redis.RedisError as exc:
            raise ConnectionError("Redis is unavailable") from exc
        rules = {}
        for service, raw in zip(services, values, strict=True):
            if raw:
                rules[service] = FaultRule(**json.loads(raw))
        return rules


class DatabaseFaultStore:
    """Rules shared by every process through the app database (`shared_overrides`, kind "fault"): no Redis."""

    def __init__(self, table: OverrideTable) -> None:
        self.table = table

    def put(self, rule: FaultRule, now: float) -> None:
        """Store the rule (raises `AdminActionNotAppliedError` when the database refuses)."""
        self.table.put(FAULT, rule.service, asdict(rule), now, expires_at=rule.expires_at)

    def delete(self, services: list[str]) -> int:
        """Remove the rules of `services`; how many existed."""
        return self.table.delete(FAULT, services)

    def load(self, services: list[str]) -> dict[str, FaultRule]:
        """The live rules of `services` (ConnectionError when the database does not answer)."""
        try:
            items = self.table.read(FAULT, now=time.time())
        except SQLAlchemyError as exc:
            raise ConnectionError("the database is unavailable") from exc
        wanted = set(services)
        return {item.name: FaultRule(**item.value) for item in items if item.name in wanted}


class FaultInjector:
    """The rules of one app, consulted on every guarded call (a dict lookup when there are none)."""

    def __init__(
        self,
        *,
        enabled: bool,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        store: RedisFaultStore | DatabaseFaultStore | None = None,
        services: Callable[[], list[str]] = list,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.enabled = enabled
        self.store = store
        self._services = services
        self._refresh_seconds = refresh_seconds
        self._loaded_at = float("-inf")
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        self._rules: dict[str, FaultRule] = {}
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {}

    def add(self, rule: FaultRule) -> FaultRule:
        """Add (or replace) the rule for the rule's service."""
        if not self.enabled:
            raise FaultInjectionDisabledError("Fault injection is disabled on this server.")
        if self.store is not None:
            self.store.put(rule, self._clock())
        with self._lock:
            self._rules[rule.service] = rule
        logger.warning("Fault injection on %s: %s at rate %s", rule.service, rule.mode, rule.rate)
        return rule

    def clear(self, service: str | None = None) -> int:
        """Remove one service's rule, or every rule; how many were removed."""
        with self._lock:
            if service is None:
                removed = len(self._rules)
                self._rules.clear()
            else:
                removed = 1 if self._rules.pop(service, None) is not None else 0
        if self.store is not None:
            removed = self.store.delete(self._services() if service is None else [service])
        return removed

    @property
    def scope(self) -> str:
        """Where rules apply: every process sharing the store, or this process only."""
        return "shared" if self.store is not None else "process"

    @property
    def shared_through(self) -> str:
        """The store every process reads rules from: 'redis', 'database' or 'process' (none)."""
        if isinstance(self.store, RedisFaultStore):
            return "redis"
        return "database" if self.store is not None else "process"

    @property
    def refresh_seconds(self) -> float:
        """How soon every other process applies a change (0 when only this process has the rules)."""
        return self._refresh_seconds if self.store is not None else 0.0

    def _refresh(self) -> None:
        # Shared rules are re-read at most once per `refresh_seconds`; a Redis outage keeps the last copy.
        if self.store is None or self._clock() - self._loaded_at < self._refresh_seconds:
            return
        self._loaded_at = self._clock()
        try:
            loaded = self.store.load(self._services())
        except (ConnectionError, TimeoutError, OSError) as exc:
            logger.warning("Fault rules not refreshed from Redis: %s", type(exc).__name__)
            return
        with self._lock:
            self._rules = loaded

    def rules(self) -> list[dict[str, Any]]:
        """Every live rule (expired ones are dropped)."""
        self._loaded_at = float("-inf")
        self._refresh()
        now = self._clock()
        with self._lock:
            for name in [n for n, r in self._rules.items() if r.expires_at <= now]:
                del self._rules[name]
            return [rule.as_dict(now) for rule in self._rules.values()]

    def _rule_for(self, service: str, operation: str) -> FaultRule | None:
        rule = self._rules.get(service)
        if rule is None or (rule.operation is not None and rule.operation != operation):
            return None
        if rule.expires_at <= self._clock():
            with self._lock:
                self._rules.pop(service, None)  # expired (Redis drops its copy by itself)
            return None
        return rule if self._rng.random() < rule.rate else None

    def wrap(self, service: str, operation: str, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn`, or `fn` with the service's fault in front of it when a rule fires for this call."""
        self._refresh()
        if not self._rules:
            return fn
        rule = self._rule_for(service, operation)
        if rule is None:
            return fn

        def faulty(*args: Any, **kwargs: Any) -> T:
            with self._lock:
                self.injected[service] = self.injected.get(service, 0) + 1
            if rule.mode == "slow":
                self._sleep(rule.delay_seconds)
                return fn(*args, **kwargs)
            if rule.mode == "status":
                raise _http_error(rule.status, service)
            raise InjectedConnectionError(f"injected fault: {service} refused the connection")

        return faulty


def fault_injection_allowed(app: Flask) -> bool:
    """Enabled by FAULT_INJECTION_ENABLED, and never in the production config."""
    return bool(app.config.get("FAULT_INJECTION_ENABLED")) and app.config.get("ENV_NAME") != "production"


def init_fault_injection(app: Flask) -> FaultInjector:
    """Attach the app's injector (inert when fault injection is not allowed)."""
    seed = app.config.get("FAULT_INJECTION_SEED")
    enabled = fault_injection_allowed(app)
    store: RedisFaultStore | DatabaseFaultStore | None = None
    if enabled and app.config.get("REDIS_URL"):
        from ..redis_client import make_redis_client  # redis only when configured

        client = make_redis_client(app.config["REDIS_URL"], timeout=0.25)
        store = RedisFaultStore(client, prefix=app.config.get("CIRCUIT_BREAKER_KEY_PREFIX") or "oriel:")
    elif enabled and database_is_shared(app.config.get("SQLALCHEMY_DATABASE_URI")):
        # The job worker that renders is another process: without Redis the rules reach it through the database.
        store = DatabaseFaultStore(OverrideTable(app_engine(app)))
    breakers = app.extensions["breakers"]
    injector = FaultInjector(
        enabled=enabled,
        rng=random.Random(seed) if seed is not None else None,
        store=store,
        services=lambda: sorted(breakers.all()),
        refresh_seconds=float(app.config.get("OVERRIDES_REFRESH_SECONDS", 1.0)),
    )
    app.extensions[EXTENSION] = injector
    return injector


def current_injector() -> FaultInjector | None:
    """The current app's injector, if any (None outside an app context)."""
    if not has_app_context():
        return None
    return current_app.extensions.get(EXTENSION)


def wrap(service: str, operation: str, fn: Callable[..., T]) -> Callable[..., T]:
    """What `call_with_recovery` calls: `fn` unchanged unless a rule fires for this call."""
    injector = current_injector()
    if injector is None or not injector.enabled:
        return fn
    return injector.wrap(service, operation, fn)


def make_rule(
    service: str,
    mode: Mode,
    *,
    rate: float,
    delay_seconds: float,
    status: int,
    operation: str | None,
    duration_seconds: float,
    clock: Callable[[], float] = time.time,
) -> FaultRule:
    """A rule with its limits applied (delay and duration capped)."""
    return FaultRule(
        service=service,
        mode=mode,
        rate=min(1.0, max(0.0, rate)),
        delay_seconds=min(MAX_DELAY_SECONDS, max(0.0, delay_seconds)),
        status=status,
        operation=operation,
        expires_at=clock() + min(MAX_DURATION_SECONDS, max(1.0, duration_seconds)),
    )
