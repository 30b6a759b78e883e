"""The resilience layer: what every call to an external service goes through.

classifier (retry verdicts), retry (policy, backoff, the loop), budget (retry budgets), breaker (+ breaker_store,
breaker_redis, shared_overrides: the state every process shares), state (each app's breakers, budgets and
listeners), recovery (`with_error_recovery`), faults (fault injection), database_breaker (the database's own).
It imports only the errors and logging layers below it; services, jobs and monitoring import it.

Layer: resilience; may import log, base, errors (tests/unit/test_layers.py).
"""
