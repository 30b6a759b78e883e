"""Retries: attempts and waits per failure class, Retry-After, deadline, idempotency (captured sleeps)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import requests
import stripe

from backend.app.errors import CircuitOpenError, ValidationError
from backend.app.resilience.classifier import Classification, ErrorKind
from backend.app.resilience.retry import RetryPolicy, RetryRecord, call_with_retry, decide


class FakeTime:
    """A clock that only moves when the code under test sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(errors: list[BaseException], result: Any = "ok") -> tuple[Callable[[], Any], list[int]]:
    """A function that raises the given errors in order, then returns `result`; counts its calls."""
    calls = [0]

    def fn() -> Any:
        calls[0] += 1
        if calls[0] <= len(errors):
            raise errors[calls[0] - 1]
        return result

    return fn, calls


def run(fn: Callable[[], Any], policy: RetryPolicy, t: FakeTime, **kwargs: Any) -> tuple[Any, RetryRecord]:
    record = RetryRecord()
    try:
        value = call_with_retry(
            fn, policy=policy, sleep=t.sleep, clock=t.clock, rng=random.Random(7), record=record, **kwargs
        )
    except Exception as exc:
        value = exc
    return value, record


IDEMPOTENT = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0, deadline=60.0, idempotent=True)


def test_transient_failures_are_retried_with_full_jitter_backoff_until_success() -> None:
    t = FakeTime()
    fn, calls = failing([TimeoutError(), requests.ConnectionError(), stripe.APIConnectionError("x")])
    value, record = run(fn, IDEMPOTENT, t)
    assert value == "ok"
    assert calls[0] == record.attempts == 4
    assert len(t.sleeps) == 3
    for attempt, wait in enumerate(t.sleeps, start=1):
        assert 0.0 <= wait <= min(4.0, 0.5 * 2 ** (attempt - 1))
    assert record.waits == t.sleeps


def test_transient_failures_stop_after_max_retries_and_reraise_the_last_error_unchanged() -> None:
    t = FakeTime()
    last = TimeoutError("fourth")
    fn, calls = failing([TimeoutError(), TimeoutError(), TimeoutError(), last, TimeoutError()])
    value, record = run(fn, IDEMPOTENT, t)
    assert value is last
    assert calls[0] == 4 and len(t.sleeps) == 3
    assert record.stop_reason == "max_retries"


@pytest.mark.parametrize(
    "exc",
    [
        ValidationError("bad"),
        stripe.CardError("Declined", None, "card_declined", http_status=402),
        stripe.AuthenticationError("bad key", http_status=401),
        requests.HTTPError(response=type("R", (), {"status_code": 404, "headers": {}})()),
        TypeError("bug"),
    ],
    ids=["validation", "card", "auth", "404", "bug"],
)
def test_permanent_failures_are_tried_once(exc: BaseException) -> None:
    t = FakeTime()
    fn, calls = failing([exc])
    value, record = run(fn, IDEMPOTENT, t)
    assert value is exc
    assert calls[0] == 1 and t.sleeps == []
    assert record.stop_reason == "permanent"


def test_throttled_failures_wait_exactly_the_retry_after_even_beyond_the_backoff_cap() -> None:
    t = FakeTime()
    throttled = stripe.RateLimitError("slow down", http_status=429, headers={"Retry-After": "7"})
    fn, calls = failing([throttled, throttled])
    value, _ = run(fn, IDEMPOTENT, t)
    assert value == "ok" and calls[0] == 3
    assert t.sleeps == [7.0, 7.0]  # max_delay is 4: the peer's wish wins


def test_throttled_without_retry_after_backs_off_with_jitter() -> None:
    t = FakeTime()
    fn, _ = failing([stripe.RateLimitError("slow down", http_status=429)])
    value, _ = run(fn, IDEMPOTENT, t)
    assert value == "ok" and len(t.sleeps) == 1 and 0.0 <= t.sleeps[0] <= 0.5


def test_a_retry_after_past_the_deadline_stops_at_once_instead_of_sleeping_past_it() -> None:
    t = FakeTime()
    throttled = stripe.RateLimitError("slow down", http_status=429, headers={"Retry-After": "120"})
    fn, calls = failing([throttled])
    value, record = run(fn, IDEMPOTENT, t)
    assert value is throttled
    assert calls[0] == 1 and t.sleeps == []
    assert record.stop_reason == "deadline"


def test_the_total_deadline_bounds_attempts_and_waits() -> None:
    t = FakeTime()
    policy = RetryPolicy(max_attempts=51, base_delay=1.0, max_delay=1.0, deadline=5.0, idempotent=True)

    def slow_failure() -> None:
        t.now += 1.0  # each attempt takes 1 s of (fake) time
        raise TimeoutError()

    value, record = run(slow_failure, policy, t)
    assert isinstance(value, TimeoutError)
    assert record.stop_reason == "deadline"
    elapsed = t.now - 1000.0
    assert elapsed < 5.0 + 1.0  # never starts an attempt after the deadline
    assert record.attempts < 6


def test_non_idempotent_calls_are_not_retried() -> None:
    t = FakeTime()
    fn, calls = failing([TimeoutError()])
    value, record = run(fn, RetryPolicy(max_attempts=4, idempotent=False), t)
    assert isinstance(value, TimeoutError)
    assert calls[0] == 1 and record.stop_reason == "not_idempotent"


def test_an_open_breaker_is_not_retried() -> None:
    t = FakeTime()
    fn, calls = failing([CircuitOpenError(retry_after=3)])
    value, record = run(fn, IDEMPOTENT, t)
    assert isinstance(value, CircuitOpenError)
    assert calls[0] == 1 and t.sleeps == [] and record.stop_reason == "circuit_open"


def test_the_veto_is_asked_only_when_a_retry_would_happen() -> None:
    t = FakeTime()
    asked: list[str] = []

    def veto(exc: BaseException, _verdict: Any) -> bool:
        asked.append(type(exc).__name__)
        return len(asked) < 2

    fn, calls = failing([TimeoutError(), TimeoutError(), TimeoutError()])
    value, record = run(fn, IDEMPOTENT, t, may_retry=veto)
    assert isinstance(value, TimeoutError)
    assert calls[0] == 2 and record.stop_reason == "budget_exhausted"
    assert asked == ["TimeoutError", "TimeoutError"]

    t2 = FakeTime()
    asked.clear()
    fn, _ = failing([ValidationError("bad")])
    run(fn, IDEMPOTENT, t2, may_retry=veto)
    assert asked == []  # a permanent failure never spends budget


def test_backoff_ceiling_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.1, max_delay=1.0)
    rng = random.Random(1)
    transient = Classification(ErrorKind.TRANSIENT, None, "timeout")

    def backoff(attempt: int) -> float:
        return decide(transient, attempt, policy.max_attempts, policy, rng=rng.uniform).delay

    samples = {attempt: [backoff(attempt) for _ in range(300)] for attempt in (1, 2, 3, 4, 8)}
    assert max(samples[1]) <= 0.1 and max(samples[2]) <= 0.2 and max(samples[3]) <= 0.4
    assert max(samples[8]) <= 1.0 and max(samples[8]) > 0.8  # capped, and jitter spans the range
    assert min(samples[4]) < 0.1  # full jitter: can be near zero
