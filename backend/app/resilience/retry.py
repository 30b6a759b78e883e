"""Retries with tenacity: full-jitter exponential backoff, a cap, a total deadline, `Retry-After`.

Only failures the classifier calls TRANSIENT or THROTTLED are retried, and only when the call is
safe to repeat: the policy says `idempotent=True`, which callers set for reads and for writes that
carry an idempotency key. A THROTTLED failure waits what the peer asked for (`Retry-After`);
if that wait would cross the deadline, we stop at once rather than sleep past it. A write the peer
cannot de-duplicate (an email) sets `retry_ambiguous=False`: it is repeated after failures that
prove nothing happened (refused, 5xx, 429), never after one that may have been acted on (a timeout
after sending), which its owner replays later, visibly.

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
    """How one call may be retried."""

    max_retries: int = 3  # retries after the first attempt
    base_delay: float = 0.2  # first backoff ceiling, doubled per retry
    max_delay: float = 5.0  # cap on one backoff wait (a peer's Retry-After may exceed it, within the deadline)
    deadline: float = 20.0  # total seconds for every attempt and wait
    idempotent: bool = False  # only then is a failed call repeated
    retry_ambiguous: bool = True  # False: never repeat a call the peer may already have acted on


@dataclass
class RetryRecord:
    """What happened during one retried call (filled in as it runs)."""

    attempts: int = 0
    waits: list[float] = field(default_factory=list)
    classification: Classification | None = None
    stop_reason: str | None = None  # why retrying stopped after a failure


def backoff(attempt: int, policy: RetryPolicy, rng: random.Random | Any = random) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
    return rng.uniform(0.0, ceiling)


def wait_for(verdict: Classification, attempt: int, policy: RetryPolicy, rng: random.Random | Any = random) -> float:
    """The wait before the next attempt: the peer's Retry-After when it gave one, else jittered backoff."""
    jittered = backoff(attempt, policy, rng)
    if verdict.retry_after is not None:
        # Honour the peer: never earlier than it asked, whatever our own cap says.
        return max(verdict.retry_after, jittered if verdict.kind is ErrorKind.TRANSIENT else 0.0)
    return jittered


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
        return wait_for(rec.classification, state.attempt_number, policy, rng)

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number > policy.max_retries:
            rec.stop_reason = "max_retries"
            return True
        if clock() - started + state.upcoming_sleep >= policy.deadline:
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
