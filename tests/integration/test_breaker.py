"""Circuit breakers: the same behaviour tests against the in-memory store and the Redis store."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from backend.app.errors import ValidationError
from backend.app.redis_client import make_redis_client
from backend.app.resilience.breaker import BreakerListener, BreakerRegistry, CircuitBreaker, CircuitOpenError
from backend.app.resilience.breaker_redis import RedisBreakerStore
from backend.app.resilience.breaker_store import BreakerConfig, BreakerState, BreakerStore, MemoryBreakerStore


class Clock:
    """Wall clock under test control."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Recorder(BreakerListener):
    """Collects transitions and rejections."""

    def __init__(self) -> None:
        self.transitions: list[tuple[str, str, str | None]] = []
        self.rejected = 0

    def state_changed(self, breaker: Any, old: BreakerState, new: BreakerState, reason: str, actor: Any) -> None:
        self.transitions.append((old.value, new.value, actor))

    def call_rejected(self, breaker: Any, state: BreakerState) -> None:
        self.rejected += 1


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[BreakerStore]:
    if request.param == "memory":
        yield MemoryBreakerStore()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisBreakerStore(make_redis_client(url), prefix=f"test:{uuid.uuid4().hex}:")
    yield redis_store
    redis_store.delete_all()
    assert redis_store.storage == "redis"  # no test here may have fallen back silently


CONFIG = BreakerConfig(failure_rate_threshold=0.5, min_calls=5, window_seconds=60, recovery_timeout=30)


def make(store: BreakerStore, config: BreakerConfig = CONFIG) -> tuple[CircuitBreaker, Clock, Recorder]:
    clock, recorder = Clock(), Recorder()
    breaker = CircuitBreaker("svc", config, store, clock=clock, listeners=[recorder])
    return breaker, clock, recorder


def fail(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = breaker.acquire()
        breaker.record(permit, failure=True, duration=0.01)


def succeed(breaker: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = breaker.acquire()
        breaker.record(permit, failure=False, duration=0.01)


def test_opens_once_the_window_holds_min_calls_at_the_failure_rate_not_before(store: BreakerStore) -> None:
    breaker, _, recorder = make(store)
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED  # 100% failures, but only 4 calls
    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    assert recorder.transitions == [("closed", "open", None)]


def test_a_failure_rate_below_the_threshold_keeps_it_closed(store: BreakerStore) -> None:
    breaker, _, _ = make(store)
    succeed(breaker, 6)
    fail(breaker, 5)
    snap = breaker.snapshot()
    assert (snap["state"], snap["calls_in_window"], snap["failures_in_window"]) == ("closed", 11, 5)
    assert snap["failure_rate"] == pytest.approx(5 / 11, abs=1e-3)
    fail(breaker)  # 6 of 12: reaches 50%
    assert breaker.state is BreakerState.OPEN


def test_failures_that_slid_out_of_the_window_are_forgotten(store: BreakerStore) -> None:
    breaker, clock, _ = make(store)
    fail(breaker, 4)
    clock.now += 61
    fail(breaker)
    snap = breaker.snapshot()
    assert snap["state"] == "closed" and snap["calls_in_window"] == 1


def test_an_open_breaker_fails_fast_with_503_circuit_open_and_seconds_until_half_open(store: BreakerStore) -> None:
    breaker, clock, recorder = make(store)
    fail(breaker, 5)
    clock.now += 10.2
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    err = info.value
    assert (err.status_code, err.code, err.retry_after, err.recoverable) == (503, "CIRCUIT_OPEN", 20, True)
    assert err.details == {"service": "svc", "state": "open"}
    assert recorder.rejected == 1
    snap = breaker.snapshot()
    assert snap["retry_after"] == pytest.approx(19.8) and snap["opened_at"] == pytest.approx(clock.now - 10.2)


def test_after_the_recovery_timeout_one_trial_closes_it_on_success(store: BreakerStore) -> None:
    breaker, clock, recorder = make(store)
    fail(breaker, 5)
    clock.now += 30
    permit = breaker.acquire()
    assert permit.trial and breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()  # the single trial slot is taken
    assert info.value.details["state"] == "half_open"
    breaker.record(permit, failure=False, duration=0.01)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["calls_in_window"] == 0  # a fresh window after closing
    assert [t[:2] for t in recorder.transitions] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_trial_reopens_it_for_a_full_recovery_timeout(store: BreakerStore) -> None:
    breaker, clock, _ = make(store)
    fail(breaker, 5)
    clock.now += 31
    permit = breaker.acquire()
    breaker.record(permit, failure=True, duration=0.01)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == 30


def test_half_open_admits_only_n_concurrent_trial_calls(store: BreakerStore) -> None:
    config = BreakerConfig(min_calls=5, recovery_timeout=30, half_open_max_calls=3)
    breaker, clock, _ = make(store, config)
    fail(breaker, 5)
    clock.now += 30
    inside, release = threading.Semaphore(0), threading.Event()
    results: list[str] = []
    lock = threading.Lock()

    def trial() -> str:
        inside.release()
        assert release.wait(10)
        return "served"

    def worker() -> None:
        try:
            outcome = breaker.call(trial)
        except CircuitOpenError:
            outcome = "rejected"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        assert inside.acquire(timeout=10)  # three trial calls are running at once...
    assert not inside.acquire(timeout=0.3)  # ...and no fourth gets in while they run
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == ["rejected"] * 7 + ["served"] * 3
    assert breaker.state is BreakerState.CLOSED  # three successful trials close it


def test_slow_calls_count_as_failures_even_when_they_succeed(store: BreakerStore) -> None:
    breaker, _, _ = make(store, BreakerConfig(min_calls=5, slow_call_seconds=0.5))
    for _ in range(4):
        permit = breaker.acquire()
        breaker.record(permit, failure=False, duration=0.9)
    snap = breaker.snapshot()
    assert (snap["state"], snap["slow_in_window"], snap["failures_in_window"]) == ("closed", 4, 4)
    permit = breaker.acquire()
    breaker.record(permit, failure=False, duration=0.5)
    assert breaker.state is BreakerState.OPEN


def test_permanent_errors_prove_the_service_answered_and_never_trip_it(store: BreakerStore) -> None:
    breaker, _, _ = make(store)
    declined = stripe.CardError("Declined", None, "card_declined", http_status=402)
    for exc in [declined, ValidationError("bad")] * 5:
        with pytest.raises(type(exc)):
            breaker.call(_raiser(exc))
    assert breaker.state is BreakerState.CLOSED
    for _ in range(5):
        with pytest.raises(TimeoutError):
            breaker.call(_raiser(TimeoutError()))
    assert breaker.state is BreakerState.CLOSED  # 5 failures in 15 calls is 33%
    for _ in range(5):
        with pytest.raises(TimeoutError):
            breaker.call(_raiser(TimeoutError()))
    assert breaker.state is BreakerState.OPEN


def _raiser(exc: BaseException) -> Any:
    def fn() -> None:
        raise exc

    return fn


def test_force_open_disable_and_reset(store: BreakerStore) -> None:
    breaker, _, recorder = make(store)
    breaker.force_open(actor="admin@example.com")
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.details["state"] == "forced_open"
    breaker.disable(actor="admin@example.com")
    fail(breaker, 20)
    assert breaker.state is BreakerState.DISABLED  # counts nothing, lets everything through
    breaker.reset(actor="admin@example.com")
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 5)
    breaker.reset(actor="admin@example.com")
    succeed(breaker)
    assert breaker.snapshot()["calls_in_window"] == 1  # reset starts a fresh window
    assert recorder.transitions[:3] == [
        ("closed", "forced_open", "admin@example.com"),
        ("forced_open", "disabled", "admin@example.com"),
        ("disabled", "closed", "admin@example.com"),
    ]


def test_a_late_trial_result_from_before_a_reset_cannot_move_the_new_state(store: BreakerStore) -> None:
    breaker, clock, _ = make(store)
    fail(breaker, 5)
    clock.now += 30
    stale = breaker.acquire()
    breaker.reset(actor="admin")
    breaker.record(stale, failure=True, duration=0.01)
    snap = breaker.snapshot()
    assert snap["state"] == "closed" and snap["failures_in_window"] == 1  # counted, but no re-open


def test_trial_slots_of_callers_that_never_reported_are_reclaimed(store: BreakerStore) -> None:
    breaker, clock, _ = make(store, BreakerConfig(min_calls=5, recovery_timeout=30, trial_timeout=60))
    fail(breaker, 5)
    clock.now += 30
    breaker.acquire()  # this caller dies and never reports
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.now += 61
    assert breaker.acquire().trial


def test_concurrent_calls_through_a_closed_breaker_overlap() -> None:
    breaker = CircuitBreaker("svc", CONFIG, MemoryBreakerStore())
    barrier = threading.Barrier(8, timeout=5)
    results: list[int] = []

    def call() -> None:
        results.append(breaker.call(lambda: barrier.wait()))  # all 8 must be inside at once

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 8  # a lock around the call would have broken the barrier


def test_registry_applies_service_defaults_and_overrides_and_shares_listeners() -> None:
    registry = BreakerRegistry(overrides={"*": {"recovery_timeout": 10}, "stripe": {"min_calls": 20}}, listeners=[])
    assert set(registry.all()) == {"stripe", "storage", "email", "rendering", "database"}
    assert registry.get("stripe").config.min_calls == 20
    assert registry.get("stripe").config.recovery_timeout == 10
    assert registry.get("database").config.slow_call_seconds == 1.5  # below the 3 s connect timeout (#13 point 8)
    assert registry.get("rendering").config.slow_call_seconds is None
    recorder = Recorder()
    registry.add_listener(recorder)  # reaches breakers created before and after
    fail(registry.get("email"), 5)
    fail(registry.get("newservice"), 5)
    assert [t[:2] for t in recorder.transitions] == [("closed", "open"), ("closed", "open")]


def test_a_failing_listener_never_breaks_a_call() -> None:
    class Broken(BreakerListener):
        def call_recorded(self, breaker: Any, outcome: Any, duration: float) -> None:
            raise RuntimeError("metrics down")

    breaker = CircuitBreaker("svc", CONFIG, MemoryBreakerStore(), listeners=[Broken()])
    assert breaker.call(lambda: 42) == 42
