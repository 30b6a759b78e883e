"""`@with_error_recovery`: classification, circuit breaker, retries, retry budget and fallback in one decorator.

    @with_error_recovery("storage", "upload", max_retries=2, idempotent=True, fallback=save_locally)
    def upload(path: str, data: bytes) -> str: ...

Per call: the service's retry budget counts it; each attempt asks the service's breaker for
admission (an open breaker fails fast with 503 `CIRCUIT_OPEN` and `Retry-After`) and reports its
outcome; failures are classified once; TRANSIENT and THROTTLED ones are retried (full jitter,
`Retry-After` honoured, within `timeout` seconds in total) when the call is idempotent, as long
as the budget allows (`retry_ambiguous=False`: never after a failure the peer may have acted on).
When all that fails:

- with a `fallback`, and only for a failure of the dependency itself (classified TRANSIENT or
  THROTTLED, or an open breaker), it is called as `fallback(exc, *args, **kwargs)` with the
  original exception; the request is marked degraded (`degraded_services()`), a WARNING is logged
  and the event counted. Fallbacks must be real (a local copy, an outbox), never sample data.
  A programming error or a permanent refusal never gets the fallback: a local copy of a file the
  bucket refuses for good could never sync, and a bug answered as `degraded` would hide it.
- otherwise the error propagates as an `APIError`: our own errors unchanged; a refusal of our
  credentials or permissions (`Classification.misconfigured`) as 503 `SERVICE_MISCONFIGURED`, for
  every service alike; others through `translate(exc)` (adapters pass their own table) or, by
  default, `ExternalServiceError`, raised `from` the original. Builtin programming errors
  (TypeError, KeyError...) propagate unchanged: they are bugs and must reach the 500 handler with
  their traceback.

Idempotency: `idempotent=True` allows retries; `idempotent=None` (the default) allows them only
when the call passes a truthy `idempotency_key=` keyword argument, so a POST without a key is tried
once. The guarded function must not retry by itself: set the SDK's own retries to 0.

Every call is written to performance.log (service, operation, duration, attempts, outcome).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

from ...log.events import log_performance_metric
from ..errors import APIError, ExternalServiceError, UpstreamRejectedError
from .breaker import (
    KNOWN_SERVICES,
    BreakerListener,
    BreakerRegistry,
    CircuitBreaker,
    CircuitOpenError,
    LoggingListener,
)
from .breaker_store import BreakerConfig, BreakerState, Outcome
from .budget import BudgetConfig, RetryBudget
from .classifier import Classification, ErrorKind, classify, is_breaker_failure, parse_retry_after
from .faults import wrap as inject_fault
from .retry import RetryPolicy, RetryRecord, call_with_retry
from .state import (
    RecoveryEvent,
    Resilience,
    all_breakers,
    current_resilience,
    degraded_services,
    get_breaker,
    init_resilience,
    mark_degraded,
)

__all__ = [
    "KNOWN_SERVICES",
    "BreakerConfig",
    "BreakerListener",
    "BreakerRegistry",
    "BreakerState",
    "BudgetConfig",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "ErrorKind",
    "LoggingListener",
    "Outcome",
    "RecoveryEvent",
    "Resilience",
    "RetryBudget",
    "RetryPolicy",
    "all_breakers",
    "call_with_recovery",
    "classify",
    "current_resilience",
    "default_translate",
    "degraded_services",
    "get_breaker",
    "init_resilience",
    "is_breaker_failure",
    "mark_degraded",
    "misconfigured_error",
    "parse_retry_after",
    "with_error_recovery",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

Translator = Callable[[BaseException], APIError]
Fallback = Callable[..., Any]


def misconfigured_error(service: str, operation: str) -> ExternalServiceError:
    """503 SERVICE_MISCONFIGURED: `service` refused this server's credentials or permissions for good."""
    return ExternalServiceError(
        f"The {service} service refused this server's credentials or permissions; "
        "an operator must fix the configuration. Retrying will not help until then.",
        code="SERVICE_MISCONFIGURED",
        details={"service": service, "operation": operation},
    )


def serves_fallback(exc: BaseException, verdict: Classification | None) -> bool:
    """Whether a failure is the dependency's own (transient, throttled, or its breaker open): only then a fallback."""
    if isinstance(exc, CircuitOpenError):
        return True
    return (verdict if verdict is not None else classify(exc)).retryable


def default_translate(exc: BaseException, service: str, operation: str) -> BaseException:
    """Our error for a failure no adapter translated: `ExternalServiceError`, or the bug itself."""
    if isinstance(exc, APIError):
        return exc
    verdict = classify(exc)
    if type(exc).__module__ == "builtins" and not isinstance(exc, OSError):
        return exc  # TypeError, KeyError...: a bug, not an outage
    if not verdict.retryable:
        return UpstreamRejectedError(
            f"The {service} service refused this server's request; this is not your fault. Quote the request ID.",
            details={"service": service, "operation": operation},
        )
    retry_after = math.ceil(verdict.retry_after) if verdict.retry_after is not None else None
    return ExternalServiceError(
        f"The {service} service could not complete the request. Retry later.",
        details={"service": service, "operation": operation, "reason": verdict.kind.value},
        recoverable=verdict.retryable,
        retry_after=retry_after,
    )


def call_with_recovery(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    service: str,
    operation: str,
    max_retries: int = 3,
    fallback: Fallback | None = None,
    idempotent: bool | None = None,
    timeout: float | None = None,
    translate: Translator | None = None,
    retry_ambiguous: bool = True,
) -> T:
    """Run `fn(*args, **kwargs)` with the full recovery stack (what the decorator does per call)."""
    res = current_resilience()
    breaker = res.breakers.get(service)
    budget = res.budgets.get(service)
    allowed = idempotent if idempotent is not None else bool(kwargs.get("idempotency_key"))
    policy = replace(
        res.retry_defaults,
        max_attempts=max_retries + 1,  # the decorator counts retries, the policy attempts
        idempotent=allowed,
        retry_ambiguous=retry_ambiguous,
        deadline=timeout if timeout is not None else res.retry_defaults.deadline,
    )
    record = RetryRecord()
    budget.record_call()
    started = time.perf_counter()
    try:
        result = call_with_retry(
            # Each attempt asks the fault injector (tests, staging): a no-op unless a rule fires.
            lambda: breaker.call(inject_fault(service, operation, fn), *args, **kwargs),
            policy=policy,
            sleep=res.sleep,
            clock=res.clock,
            rng=res.rng,
            may_retry=lambda _exc, _verdict: budget.try_spend(),
            record=record,
        )
    except Exception as exc:
        duration = time.perf_counter() - started
        rejected = isinstance(exc, CircuitOpenError)
        if record.stop_reason == "budget_exhausted":
            res.count(service, "budget_exhausted")
        if rejected:
            res.count(service, "rejected")
        if fallback is not None and serves_fallback(exc, record.classification):
            return _serve_fallback(res, fallback, exc, args, kwargs, service, operation, record, duration, translate)
        _report(res, service, operation, "rejected" if rejected else "error", record, duration, exc)
        final = _final_error(exc, service, operation, translate)
        if final is exc:
            raise
        raise final from exc
    _report(res, service, operation, "ok", record, time.perf_counter() - started, None)
    return result


def _final_error(exc: Exception, service: str, operation: str, translate: Translator | None) -> BaseException:
    """The error a failed call raises (see the module docstring): ours, misconfigured, translated or the bug."""
    if isinstance(exc, APIError):
        return exc
    verdict = classify(exc)
    if verdict.misconfigured:
        # A key revoked or a permission missing: nothing heals by waiting, so page an operator.
        logger.critical(
            "%s refused this server's credentials or permissions in %s: %s (%s); fix the configuration",
            service,
            operation,
            type(exc).__name__,
            verdict.reason,
            extra={"service": service, "operation": operation, "error_code": "SERVICE_MISCONFIGURED"},
        )
        return misconfigured_error(service, operation)
    translated = translate(exc) if translate is not None else None
    return translated if translated is not None else default_translate(exc, service, operation)


def _serve_fallback(
    res: Resilience,
    fallback: Fallback,
    exc: Exception,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    service: str,
    operation: str,
    record: RetryRecord,
    duration: float,
    translate: Translator | None,
) -> Any:
    mark_degraded(service)
    res.count(service, "fallback")
    logger.warning(
        "Fallback serves %s.%s after %s attempt(s): %s (%s)",
        service,
        operation,
        record.attempts,
        type(exc).__name__,
        record.classification.reason if record.classification else "",
        extra={"service": service, "operation": operation, "degraded": True},
    )
    _report(res, service, operation, "fallback", record, duration, exc)
    try:
        return fallback(exc, *args, **kwargs)
    except Exception as fallback_exc:
        logger.error("Fallback for %s.%s failed too: %s", service, operation, type(fallback_exc).__name__)
        if isinstance(fallback_exc, APIError):
            raise
        if translate is not None:
            final: BaseException = translate(fallback_exc)
        else:
            final = default_translate(fallback_exc, service, operation)
        if final is fallback_exc:
            raise
        raise final from fallback_exc


def _report(
    res: Resilience,
    service: str,
    operation: str,
    outcome: str,
    record: RetryRecord,
    duration: float,
    exc: BaseException | None,
) -> None:
    verdict = record.classification
    log_performance_metric(
        "outbound_call",
        round(duration * 1000, 3),
        service=service,
        operation=operation,
        attempts=record.attempts,
        outcome=outcome,
        error_kind=verdict.kind.value if exc is not None and verdict is not None else None,
        exc_type=type(exc).__name__ if exc is not None else None,
        stop_reason=record.stop_reason if exc is not None else None,
    )
    res.notify(RecoveryEvent(service, operation, outcome, record.attempts, duration, exc))


def with_error_recovery(
    service: str,
    operation: str,
    max_retries: int = 3,
    fallback: Fallback | None = None,
    idempotent: bool | None = None,
    timeout: float | None = None,
    translate: Translator | None = None,
    retry_ambiguous: bool = True,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Guard a function with breaker, retries, retry budget and an optional fallback (module docstring)."""
    if max_retries < 0:
        raise ValueError("max_retries must be >= 0")

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return call_with_recovery(
                fn,
                args,
                kwargs,
                service=service,
                operation=operation,
                max_retries=max_retries,
                fallback=fallback,
                idempotent=idempotent,
                timeout=timeout,
                translate=translate,
                retry_ambiguous=retry_ambiguous,
            )

        guarded.recovery = {"service": service, "operation": operation}  # type: ignore[attr-defined]
        return guarded

    return decorate
