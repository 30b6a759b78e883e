"""What to do after a job attempt fails: retry (after how long) or give up, by the one classifier.

- PERMANENT: at most one retry (`permanent_retries`, 0 or 1): the same input fails the same way,
  but one retry absorbs a read-after-write race (seed 002's "not found" right after a create).
- TRANSIENT: exponential backoff with full jitter (`uniform(0, min(max_delay, base * 2**n))`)
  until `max_attempts`; a `Retry-After` the peer sent (a 503) is a floor.
- THROTTLED: wait the peer's `Retry-After` (capped by `max_throttle_delay`); without one, back off
  like a transient error.

Every decision is a pure function of the classification, the attempt count and an injected random
source, so tests check the delays without sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..resilience.classifier import Classification, ErrorKind


@dataclass(frozen=True)
class RetryPolicy:
    """A kind's retry limits (seconds)."""

    max_attempts: int = 5
    base_delay: float = 2.0
    max_delay: float = 300.0
    permanent_retries: int = 1
    max_throttle_delay: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.permanent_retries not in (0, 1):
            raise ValueError("permanent errors get at most one retry (permanent_retries 0 or 1)")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")


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
        delay = max(delay, min(classification.retry_after, policy.max_throttle_delay))
    return Decision(True, delay, f"{classification.kind.value} error ({classification.reason}): backoff {delay:.3f}s")
