"""Resilience utilities: the error classifier, retries, retry budgets and circuit breakers.

Import the public API from `backend.app.utils.error_recovery` (the seed's module name).
"""
