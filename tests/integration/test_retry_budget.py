"""Retry budgets: retries stay a fraction of calls over a sliding window; exhaustion is counted."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from backend.app.resilience.budget import BudgetConfig, RetryBudget
from backend.app.resilience.recovery import with_error_recovery


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_retries_are_capped_at_the_ratio_of_calls() -> None:
    budget = RetryBudget("svc", BudgetConfig(ratio=0.2, window_seconds=10, min_retries_per_second=0), Clock())
    for _ in range(100):
        budget.record_call()
    granted = sum(budget.try_spend() for _ in range(50))
    assert granted == 20
    assert budget.exhausted == 30
    assert budget.snapshot()["retries_remaining"] == 0


def test_a_quiet_service_still_gets_the_minimum_allowance() -> None:
    budget = RetryBudget("svc", BudgetConfig(ratio=0.2, window_seconds=10, min_retries_per_second=0.5), Clock())
    assert sum(budget.try_spend() for _ in range(10)) == 5


def test_the_window_slides_so_old_calls_and_retries_are_forgotten() -> None:
    clock = Clock()
    budget = RetryBudget("svc", BudgetConfig(ratio=0.5, window_seconds=10, min_retries_per_second=0), clock)
    for _ in range(10):
        budget.record_call()
    assert sum(budget.try_spend() for _ in range(10)) == 5
    clock.now += 11  # the window has moved past those calls and retries
    assert budget.try_spend() is False
    for _ in range(4):
        budget.record_call()
    assert sum(budget.try_spend() for _ in range(10)) == 2
    assert budget.snapshot()["calls_in_window"] == 4


@pytest.fixture
def budget_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(
        RETRY_SLEEP_ENABLED=False,
        RETRY_BUDGET_RATIO=0.2,
        RETRY_BUDGET_MIN_PER_SECOND=0.0,
        CIRCUIT_BREAKERS={"flaky": {"min_calls": 10_000}},  # keep the breaker out of this test
    )


def test_with_error_recovery_spends_the_budget_instead_of_multiplying_an_outage(budget_app: Flask) -> None:
    attempts = [0]

    @with_error_recovery("flaky", "read", max_retries=3, idempotent=True)
    def read() -> None:
        attempts[0] += 1
        raise TimeoutError("down")

    with budget_app.app_context():
        for _ in range(50):
            with pytest.raises(Exception, match="flaky service"):
                read()
        resilience = budget_app.extensions["resilience"]
        counters = resilience.counters()["flaky"]
        budget = resilience.budgets.get("flaky").snapshot()
    # Without a budget: 50 x 4 = 200 attempts. With it: 50 first attempts + at most 20% retries.
    assert 50 < attempts[0] <= 60
    assert counters["budget_exhausted"] >= 40
    assert budget["retries_in_window"] == attempts[0] - 50
