"""Retries: one policy and one backoff for calls to a service and for job attempts.

`decide` is the rule both follow, a pure function of the classification, the attempt count and an
injected random source (tests check the delays without sleeping):
- PERMANENT: at most `permanent_retries` retries (0 or 1): the same input fails the same way, but
  one retry absorbs a read-after-write race (seed 002's "not found" right after a create). Calls
  never retry one (`call_with_retry` stops first); jobs do once by default.
- TRANSIENT: exponential backoff with full jitter (`uniform(0, min(max_delay, base * 2**n))`, the
  AWS architecture blog's) until `max_attempts`; a `Retry-After` the peer sent (a 503) is a floor.
- THROTTLED: wait the peer's `Retry-After` (capped by `max_throttle_delay`); without one, back off
  like a transient error.

`call_with_retry` (tenacity underneath) adds what only a live call has: it retries only when the
call is safe to repeat (`idempotent=True`, which callers set for reads and for writes that carry an
idempotency key), never after a failure the peer may have acted on when `retry_ambiguous=False` (a
timeout after sending an email, which its owner replays later, visibly), never into an open
breaker, and within a total `deadline`: a wait that would cross it stops at once rather than sleep
past it.

Never stack these retries on an SDK's own: an adapter that uses this layer sets the SDK's retries
to zero (`stripe.max_network_retries = 0`, google `retry=None`; SendGrid has none), or the worst
case becomes the product of both loops (SPEC section 10: GCS hangs 110-120 s with its defaults).

Sleeping is injectable (`sleep=`); with `RETRY_SLEEP_ENABLED = False` the app passes a sleep that
returns at once, so tests exercise every retry path instantly. `clock=` drives the deadline.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tenacity

from ..errors import CircuitOpenError
from .classifier import Classification, ErrorKind, classify

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt may be tried again (seconds); the defaults are a job kind's."""

    max_attempts: int = 5  # attempts in all, the first included
    base_delay: float = 2.0  # first backoff ceiling, doubled per failure
    max_delay: float = 300.0  # cap on one backoff wait (a peer's Retry-After may exceed it)
    permanent_retries: int = 1  # retries of a PERMANENT failure (0 or 1)
    max_throttle_delay: float = 3600.0  # cap on a peer's Retry-After
    deadline: float | None = None  # a call's total seconds for every attempt and wait (jobs have none)
    idempotent: bool = False  # a call is repeated only then
    retry_ambiguous: bool = True  # False: never repeat a call the peer may already have acted on

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.permanent_retries not in (0, 1):
            raise ValueError("permanent errors get at most one retry (permanent_retries 0 or 1)")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")


# What a call inside `with_error_recovery` gets unless the app's config (RETRY_*) says otherwise.
CALL_DEFAULTS = RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=5.0, permanent_retries=0, deadline=20.0)


@dataclass(frozen=True)
class Decision:
    """Retry after `delay` seconds, or give up (`retry` false) with the reason."""

    retry: bool
    delay: float
    reason: str


def backoff_ceiling(policy: RetryPolicy, failures: int) -> float:
    """The upper bound of the jittered delay after the `failures`-th failure (1-based)."""
    exponent = min(max(failures - 1, 0), 62)  # 2**62 already dwarfs any max_delay; avoid huge ints
    return min(policy.max_delay, policy.base_delay * (2**exponent))


def decide(
    classification: Classification,
    attempts: int,
    max_attempts: int,
    policy: RetryPolicy,
    *,
    rng: Callable[[float, float], float] = random.uniform,
) -> Decision:
    """The decision after attempt number `attempts` (1-based) failed with `classification`."""
    if attempts >= max_attempts:
        return Decision(False, 0.0, f"attempt {attempts} of {max_attempts} failed: no attempts left")
    if classification.kind is ErrorKind.PERMANENT:
        if attempts > policy.permanent_retries:
            return Decision(False, 0.0, f"permanent error ({classification.reason}): not retried again")
        return Decision(True, policy.base_delay, f"permanent error ({classification.reason}): one retry")
    if classification.kind is ErrorKind.THROTTLED and classification.retry_after is not None:
        delay = min(classification.retry_after, policy.max_throttle_delay)
        return Decision(True, delay, f"throttled ({classification.reason}): waiting Retry-After {delay:g}s")
    delay = rng(0.0, backoff_ceiling(policy, attempts))
    if classification.retry_after is not None:
        # Honour the peer: never earlier than it asked, whatever our own cap says.
        delay = max(delay, min(classification.retry_after, policy.max_throttle_delay))
    return Decision(True, delay, f"{classification.kind.value} error ({classification.reason}): backoff {delay:.3f}s")


@dataclass
class RetryRecord:
    """What happened during one retried call (filled in as it runs)."""

    attempts: int = 0
    waits: list[float] = field(default_factory=list)
    classification: Classification | None = None
    stop_reason: str | None = None  # why retrying stopped after a failure


def call_with_retry(
    fn: Callable[..., T],
    /,
    *args: Any,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | Any = random,
    classifier: Callable[[BaseException], Classification] = classify,
    may_retry: Callable[[BaseException, Classification], bool] | None = None,
    record: RetryRecord | None = None,
    **kwargs: Any,
) -> T:
    """Call `fn(*args, **kwargs)`, retrying per `policy`; the last failure is re-raised unchanged.

    `may_retry` is a last veto consulted only when everything else would retry (the retry budget
    spends a token there, so a token is never spent on a retry that would not happen).
    """
    rec = record if record is not None else RetryRecord()
    started = clock()

    def retry_on(exc: BaseException) -> bool:
        verdict = classifier(exc)
        rec.classification = verdict
        if verdict.kind is ErrorKind.PERMANENT:
            rec.stop_reason = "permanent"
            return False
        if getattr(exc, "code", None) == CircuitOpenError.code:  # the class or a relayed envelope with its code
            rec.stop_reason = "circuit_open"  # a retry would be rejected the same way
            return False
        if not policy.idempotent:
            rec.stop_reason = "not_idempotent"
            return False
        if verdict.ambiguous and not policy.retry_ambiguous:
            rec.stop_reason = "ambiguous"  # the peer may have done it: repeating could do it twice
            return False
        return True

    def wait(state: tenacity.RetryCallState) -> float:
        assert rec.classification is not None  # set by retry_on, which tenacity runs first
        return decide(rec.classification, state.attempt_number, policy.max_attempts, policy, rng=rng.uniform).delay

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            rec.stop_reason = "max_retries"
            return True
        if policy.deadline is not None and clock() - started + state.upcoming_sleep >= policy.deadline:
            rec.stop_reason = "deadline"
            return True
        exc = state.outcome.exception() if state.outcome is not None else None
        verdict = rec.classification
        if may_retry is not None and exc is not None and verdict is not None and not may_retry(exc, verdict):
            rec.stop_reason = "budget_exhausted"
            return True
        return False

    def before_sleep(state: tenacity.RetryCallState) -> None:
        rec.waits.append(state.upcoming_sleep)
        rec.stop_reason = None
        exc = state.outcome.exception() if state.outcome is not None else None
        logger.info(
            "Retrying %s after %s (%s): attempt %s, waiting %.3fs",
            getattr(fn, "__qualname__", fn),
            type(exc).__name__,
            rec.classification.reason if rec.classification else "",
            state.attempt_number + 1,
            state.upcoming_sleep,
        )

    def attempt(*a: Any, **kw: Any) -> T:
        rec.attempts += 1
        return fn(*a, **kw)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_on),
        wait=wait,
        stop=stop,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(attempt, *args, **kwargs)


def no_sleep(_seconds: float) -> None:
    """A sleep that returns at once (`RETRY_SLEEP_ENABLED = False`)."""
