"""Circuit breakers per external service: failure rate over a sliding window, half-open trials.

A breaker never holds a lock while the guarded call runs (pybreaker does, which serialises every
call through one breaker): `acquire()` asks the store for admission, the call runs unlocked, and
`record()` reports its outcome. Slow calls (`slow_call_seconds`) count as failures, so a service
that hangs trips the breaker as surely as one that refuses. Permanent errors (a declined card, a
validation error) count as successes: the service answered (`classifier.is_breaker_failure`).

State lives in a store (`breaker_store`: memory; `breaker_redis`: shared by every process).
State changes go to listeners: `LoggingListener` writes every transition to app.log; the metrics
code adds its own with `BreakerRegistry.add_listener`. Admin actions (reset, force-open, disable)
are also written to security.log with the acting admin.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ...log.events import log_security_event
from ..errors import CircuitOpenError
from .breaker_store import (
    AdminActionNotAppliedError,
    Admission,
    BreakerConfig,
    BreakerState,
    BreakerStore,
    MemoryBreakerStore,
    Outcome,
)
from .classifier import is_breaker_failure

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Breakers every deployment has, so monitoring lists them before their first call.
KNOWN_SERVICES = ("stripe", "storage", "email", "rendering", "database")

#: Breakers that guard our own plumbing, not a user-facing feature: one per alert destination
#: (`alerts:<type>:<hash>`). Admins see them; the public health endpoints leave them out.
INTERNAL_PREFIX = "alerts"


def is_internal(name: str) -> bool:
    """Whether a breaker is internal (alert delivery) rather than a service users depend on."""
    return name == INTERNAL_PREFIX or name.startswith(INTERNAL_PREFIX + ":")


#: Per-service defaults on top of `BreakerConfig()`; `CIRCUIT_BREAKERS` in app config overrides them.
#: A slow call must be slower than normal yet faster than the adapter's timeout, or a peer that answers
#: just before timing out never trips its breaker: half of each adapter's default timeout (STRIPE_TIMEOUT
#: 10 s, GCS_TIMEOUT 10 s, SENDGRID_TIMEOUT 5 s, PostgreSQL connect_timeout 3 s). An app derives them from
#: its configured timeouts instead (`resilience.slow_call_defaults`).
#: The database recovers sooner than the default 60 s: while its breaker is open every request fails
#: (nothing is served without it), and a trial costs one connect of at most its 3 s connect timeout.
SERVICE_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "stripe": {"slow_call_seconds": 5.0},
    "storage": {"slow_call_seconds": 5.0},
    "email": {"slow_call_seconds": 2.5},
    "rendering": {},  # renders take minutes by design; their own timeout bounds them
    "database": {"slow_call_seconds": 1.5, "recovery_timeout": 10.0},
}


@dataclass(frozen=True)
class Permit:
    """Admission for one call: report its outcome with `CircuitBreaker.record`."""

    epoch: int
    trial: bool
    started: float


class BreakerListener:
    """Hooks for monitoring; override what you need. Exceptions raised here are logged and ignored."""

    def state_changed(
        self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState, reason: str, actor: str | None
    ) -> None:
        """A transition happened (by traffic, or by an admin when `actor` is set)."""

    def call_rejected(self, breaker: CircuitBreaker, state: BreakerState) -> None:
        """A call was refused without reaching the service."""

    def call_recorded(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
        """A guarded call finished."""

    def admin_action(self, breaker: CircuitBreaker, action: str, actor: str | None) -> None:
        """An admin reset, forced open or disabled the breaker (even when its state did not change)."""


class LoggingListener(BreakerListener):
    """Writes every state change to app.log (WARNING when it opens, INFO otherwise)."""

    def state_changed(
        self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState, reason: str, actor: str | None
    ) -> None:
        """Log the transition with the breaker's counts."""
        level = logging.WARNING if new in (BreakerState.OPEN, BreakerState.FORCED_OPEN) else logging.INFO
        logger.log(
            level,
            "Circuit breaker %s: %s -> %s (%s)",
            breaker.name,
            old.value,
            new.value,
            reason,
            extra={
                "breaker": breaker.name,
                "old_state": old.value,
                "new_state": new.value,
                "reason": reason,
                "actor": actor,
                "storage": breaker.storage,
            },
        )


class CircuitBreaker:
    """One service's breaker: `acquire()` → call → `record()`, or `call(fn, ...)` for both."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        store: BreakerStore,
        *,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        listeners: Iterable[BreakerListener] = (),
    ) -> None:
        self.name = name
        self.config = config
        self.store = store
        self._clock = clock  # wall clock: comparable across processes (Redis state)
        self._timer = timer  # monotonic: call durations
        # A list passed in is shared, so `BreakerRegistry.add_listener` reaches existing breakers.
        self.listeners = listeners if isinstance(listeners, list) else list(listeners)

    @property
    def storage(self) -> str:
        """Where the state lives now: 'memory', 'redis' or 'local-fallback'."""
        return self.store.storage

    @property
    def state(self) -> BreakerState:
        """The current state (one store read)."""
        return BreakerState(self.snapshot()["state"])

    def acquire(self) -> Permit:
        """Admit one call or raise `CircuitOpenError` (503, `retry_after` = seconds until trials)."""
        admission = self.store.acquire(self.name, self.config, self._clock())
        if admission.transition is not None:
            self._announce(*admission.transition, reason="recovery timeout elapsed", actor=None)
        if not admission.allowed:
            self._notify("call_rejected", admission.state)
            raise self._open_error(admission)
        return Permit(admission.epoch, admission.trial, self._timer())

    def record(self, permit: Permit, *, failure: bool, duration: float | None = None) -> Outcome:
        """Report how an admitted call ended; a slow call counts as a failure."""
        elapsed = self._timer() - permit.started if duration is None else duration
        slow = self.config.slow_call_seconds is not None and elapsed >= self.config.slow_call_seconds
        outcome = Outcome.SLOW if slow else (Outcome.FAILURE if failure else Outcome.SUCCESS)
        transition = self.store.record(self.name, self.config, self._clock(), outcome, permit.epoch, permit.trial)
        self._notify("call_recorded", outcome, elapsed)
        if transition is not None:
            old, new = transition
            if old is BreakerState.HALF_OPEN:
                reason = "trial call failed" if new is BreakerState.OPEN else "trial calls succeeded"
            else:
                reason = "failure rate reached the threshold" + (" (slow calls)" if slow else "")
            self._announce(old, new, reason=reason, actor=None)
        return outcome

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn` through the breaker (no lock is held while it runs)."""
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record(permit, failure=is_breaker_failure(exc))
            raise
        self.record(permit, failure=False)
        return result

    def reset(self, actor: str | None = None) -> None:
        """Admin: close the breaker with a fresh window (seen by every process on Redis)."""
        self._admin(BreakerState.CLOSED, "reset", actor)

    def force_open(self, actor: str | None = None) -> None:
        """Admin: reject every call until reset."""
        self._admin(BreakerState.FORCED_OPEN, "force_open", actor)

    def disable(self, actor: str | None = None) -> None:
        """Admin: let every call through and count nothing until reset."""
        self._admin(BreakerState.DISABLED, "disable", actor)

    def snapshot(self) -> dict[str, Any]:
        """State, failure rate, counts in the window, opened_at, retry_after and storage."""
        snap = self.store.snapshot(self.name, self.config, self._clock())
        snap["name"] = self.name
        snap["config"] = {
            "failure_rate_threshold": self.config.failure_rate_threshold,
            "min_calls": self.config.min_calls,
            "window_seconds": self.config.window_seconds,
            "recovery_timeout": self.config.recovery_timeout,
            "half_open_max_calls": self.config.half_open_max_calls,
            "slow_call_seconds": self.config.slow_call_seconds,
        }
        return snap

    def _admin(self, state: BreakerState, action: str, actor: str | None) -> None:
        try:
            transition = self.store.set_state(self.name, state, self._clock())
        except AdminActionNotAppliedError as exc:
            # Refused, not half-done: the store changed nothing anywhere. The attempt is an admin event too.
            log_security_event(
                f"circuit_breaker_{action}_refused",
                f"Circuit breaker {self.name}: {action} by {actor or 'system'} not applied: {exc.message}",
                level=logging.WARNING,
                breaker=self.name,
                action=action,
                actor=actor,
                storage=self.storage,
            )
            raise
        log_security_event(
            f"circuit_breaker_{action}",
            f"Circuit breaker {self.name}: {action} by {actor or 'system'}",
            level=logging.WARNING,
            breaker=self.name,
            action=action,
            actor=actor,
            new_state=state.value,
            storage=self.storage,
        )
        if transition is not None:
            self._announce(*transition, reason=f"admin {action}", actor=actor)
        self._notify("admin_action", action, actor)  # a reset of a closed breaker still clears its faults

    def _open_error(self, admission: Admission) -> CircuitOpenError:
        wait = admission.retry_after if admission.retry_after is not None else self.config.recovery_timeout
        return CircuitOpenError(
            f"The {self.name} service is temporarily unavailable. Retry after {max(1, math.ceil(wait))} seconds.",
            details={"service": self.name, "state": admission.state.value},
            retry_after=max(1, math.ceil(wait)),
        )

    def _announce(self, old: BreakerState, new: BreakerState, *, reason: str, actor: str | None) -> None:
        self._notify("state_changed", old, new, reason, actor)

    def _notify(self, hook: str, *args: Any) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, hook)(self, *args)
            except Exception:  # monitoring never breaks a call; the failure is logged with its traceback
                logger.exception("Breaker listener %r failed in %s", listener, hook)


class BreakerRegistry:
    """Every breaker of the app, one per service name, all on one store."""

    def __init__(
        self,
        store: BreakerStore | None = None,
        *,
        defaults: BreakerConfig | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        listeners: Iterable[BreakerListener] | None = None,
        services: Iterable[str] = KNOWN_SERVICES,
        service_defaults: Mapping[str, Mapping[str, Any]] = SERVICE_DEFAULTS,
    ) -> None:
        self.store: BreakerStore = store or MemoryBreakerStore()
        self.defaults = defaults or BreakerConfig()
        self.service_defaults = {k: dict(v) for k, v in service_defaults.items()}
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self._clock = clock
        self._timer = timer
        self.listeners: list[BreakerListener] = [LoggingListener()] if listeners is None else list(listeners)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        for name in services:
            self.get(name)

    @property
    def storage(self) -> str:
        """Where breaker state lives now."""
        return self.store.storage

    def propagation(self) -> dict[str, Any]:
        """Where an admin action on these breakers is shared, and how soon every process applies it."""
        through = self.store.shared_through
        within = float(getattr(self.store, "refresh_seconds", 0.0)) if through == "database" else 0.0
        return {"shared_through": through, "within_seconds": within}

    def config_for(self, name: str) -> BreakerConfig:
        """Defaults, then the service's built-in defaults, then `CIRCUIT_BREAKERS['*']` and `[name]`."""
        merged: dict[str, Any] = {**self.service_defaults.get(name, {}), **self.overrides.get("*", {})}
        merged.update(self.overrides.get(name, {}))
        return replace(self.defaults, **merged)

    def get(self, name: str) -> CircuitBreaker:
        """The breaker for a service, created on first use."""
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    breaker = CircuitBreaker(
                        name,
                        self.config_for(name),
                        self.store,
                        clock=self._clock,
                        timer=self._timer,
                        listeners=self.listeners,
                    )
                    self._breakers[name] = breaker
        return breaker

    def all(self) -> dict[str, CircuitBreaker]:
        """Every breaker, by name."""
        return dict(self._breakers)

    def add_listener(self, listener: BreakerListener) -> None:
        """Subscribe a listener to every breaker, present and future."""
        self.listeners.append(listener)  # breakers share this list object

    def reset_all(self, actor: str | None = None) -> None:
        """Admin: reset every breaker."""
        for breaker in self.all().values():
            breaker.reset(actor)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every breaker's snapshot, by name."""
        return {name: breaker.snapshot() for name, breaker in sorted(self.all().items())}
