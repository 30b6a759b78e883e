"""#13 point 9: `recoverable` in the envelope and the classifier's verdict agree for every code in the catalog.

The browser client retries what the envelope calls recoverable; the retry layer, the breakers and the
job queue retry what the classifier calls transient or throttled. If the two disagreed, a client would
hammer what the server will not retry, or the server would retry what it tells the client is final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.exceptions import default_exceptions

from backend.app import errors
from backend.app.edge.idempotency import IdempotencyInProgressError
from backend.app.error_catalog import entries, lookup
from backend.app.error_handlers import from_http_exception
from backend.app.errors import APIError, DatabaseError, ExternalServiceError, PaymentError, StorageError
from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models.job import DEAD, RETRYING, Job
from backend.app.resilience.classifier import ErrorKind, classify, is_breaker_failure
from backend.app.resilience.recovery import get_breaker
from backend.app.resilience.retry import RetryPolicy
from tests.harness.app import bearer, login
from tests.harness.contract import assert_error
from tests.harness.peers.stripe_peer import StripePeer


def _subclasses(cls: type[APIError]) -> Iterator[type[APIError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_point9_every_catalog_code_is_recoverable_exactly_when_the_classifier_would_retry_it(app: Flask) -> None:
    # `app` makes sure every module that declares codes (adapters, blueprints) has registered them.
    checked = 0
    for entry in entries():
        error = APIError(code=entry.code)  # status and recoverability come from the catalog
        assert (error.status_code, error.recoverable) == (entry.status, entry.recoverable), entry
        verdict = classify(error)
        assert verdict.retryable is entry.recoverable, (entry.code, entry.recoverable, verdict)
        checked += 1
    assert checked >= 60


def test_point9_every_error_class_agrees_with_its_own_default_code() -> None:
    for cls in [errors.APIError, *_subclasses(errors.APIError)]:
        error = cls()
        assert classify(error).retryable is error.recoverable is lookup(cls.code).recoverable, cls


@pytest.mark.parametrize("status", sorted(s for s in default_exceptions if s >= 400))
def test_point9_generic_http_errors_agree_too(status: int) -> None:
    error = from_http_exception(default_exceptions[status]())
    assert classify(error).retryable is error.recoverable is lookup(error.code).recoverable, error


def test_point9_a_retryable_answer_about_the_request_never_trips_a_breaker() -> None:
    in_progress = APIError(code="IDEMPOTENCY_REQUEST_IN_PROGRESS")
    assert classify(in_progress).retryable and not is_breaker_failure(in_progress)
    assert is_breaker_failure(APIError(code="RATE_LIMITED"))  # a 429 does say "slow down"
    assert is_breaker_failure(APIError(code="EXTERNAL_SERVICE_UNAVAILABLE"))
    assert not is_breaker_failure(APIError(code="PAYMENT_DECLINED"))


def test_point9_stripe_refusing_our_request_is_a_5xx_not_a_402_payment_required(
    make_app: Callable[..., Flask], stripe_peer: StripePeer
) -> None:
    app = make_app(
        RETRY_SLEEP_ENABLED=False,
        STRIPE_API_KEY=stripe_peer.api_key,
        STRIPE_WEBHOOK_SECRET=stripe_peer.webhook_secret,
        STRIPE_API_BASE=stripe_peer.url,
        STRIPE_TIMEOUT=2,
    )
    client = app.test_client()
    token = login(client)["access_token"]
    stripe_peer.fail_next(400, "Invalid currency: usdx", type="invalid_request_error", param="currency")

    response = client.post("/api/payments/checkout", json={"pack": "starter"}, headers=bearer(token))

    error = assert_error(response, 500, "STRIPE_ERROR")
    assert error["recoverable"] is False  # resending the same request meets the same refusal
    assert "not your fault" in error["message"]
    assert "usdx" not in response.get_data(as_text=True)  # Stripe's text about our request stays in the log
    assert stripe_peer.sessions == {}
    assert len(stripe_peer.creates()) == 1  # never retried: the same request meets the same refusal
    with app.app_context():
        assert get_breaker("stripe").state.value == "closed"  # Stripe answered: no failure for the breaker


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # The catalog's word, and an instance's own override of it, are both the verdict.
        (PaymentError("Declined", "PAYMENT_DECLINED"), ErrorKind.PERMANENT),
        (PaymentError("Declined", "PAYMENT_DECLINED", recoverable=True), ErrorKind.TRANSIENT),
        (ExternalServiceError("Not configured", recoverable=False), ErrorKind.PERMANENT),
        (IdempotencyInProgressError(retry_after=3), ErrorKind.TRANSIENT),
        (APIError(code="RATE_LIMITED", retry_after=3), ErrorKind.THROTTLED),
        (APIError(code="CIRCUIT_OPEN", retry_after=3), ErrorKind.THROTTLED),
        (ExternalServiceError(code="SERVICE_MISCONFIGURED"), ErrorKind.PERMANENT),
    ],
    ids=["declined", "declined-override", "503-not-recoverable", "409-in-progress", "429", "circuit-open", "misconf"],
)
def test_point9_an_errors_recoverable_flag_is_its_verdict(error: APIError, kind: ErrorKind) -> None:
    verdict = classify(error)
    assert verdict.kind is kind
    assert verdict.retryable is error.recoverable
    # A refusal of our credentials passed on by an inner guarded call is still a configuration fault (point 2).
    assert verdict.misconfigured is (error.code == "SERVICE_MISCONFIGURED")
    if kind is not ErrorKind.PERMANENT:
        assert verdict.retry_after == error.retry_after  # the wait the envelope announces is the one retries honour


def test_point9_no_4xx_but_429_ever_trips_a_breaker(app: Flask) -> None:
    """A 4xx is an answer about the request from a service that is up, recoverable or not."""
    assert app.extensions["resilience"] is not None  # every module that declares codes has registered them
    for entry in entries():
        error = APIError(code=entry.code)
        if 400 <= entry.status < 500:
            assert is_breaker_failure(error) is (entry.status == 429), entry
        elif entry.code != "CIRCUIT_OPEN":
            assert is_breaker_failure(error) is entry.recoverable, entry  # a 5xx counts when it may heal


def test_point9_peer_4xx_answers_never_trip_a_breaker_even_when_retryable() -> None:
    import requests

    def http_error(status: int) -> requests.HTTPError:
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(response=response)

    assert classify(http_error(408)).retryable is True  # worth another try...
    assert is_breaker_failure(http_error(408)) is False  # ...but the peer answered
    assert is_breaker_failure(http_error(429)) is True
    assert is_breaker_failure(http_error(503)) is True


# -- the job queue acts on the same verdict -------------------------------------------------------------------

T0 = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)


@pytest.fixture
def failing_kind() -> Iterator[Callable[[APIError], list[int]]]:
    """Register `test.point9` failing every attempt with one error; the attempts it ran."""
    registered: list[str] = []

    def register(error: APIError) -> list[int]:
        calls: list[int] = []

        def handler(ctx: JobContext) -> None:
            calls.append(ctx.attempt)
            raise error

        policy = RetryPolicy(max_attempts=4, base_delay=1)
        REGISTRY.register(JobKind("test.point9", handler, policy=policy), replace=True)
        registered.append("test.point9")
        return calls

    yield register
    for name in registered:
        REGISTRY.unregister(name)


def _drive(app: Flask, job_id: int) -> tuple[Job, list[float]]:
    """Run each attempt of the job at its due time (a fake clock); the final record and the delays."""
    now = [T0]
    delays: list[float] = []
    options = WorkerOptions(install_signals=False, schedule=False, poll_seconds=0.02, burst=True, max_jobs=1)
    for _ in range(10):
        Worker(app, options, clock=lambda: now[0], rng=lambda lo, hi: hi).run()
        with app.app_context():
            job = db.session.execute(select(Job).where(Job.id == job_id)).scalar_one()
            db.session.expunge(job)
        if job.status != RETRYING:
            return job, delays
        due = job.next_attempt_at.replace(tzinfo=UTC) if job.next_attempt_at.tzinfo is None else job.next_attempt_at
        delays.append((due - now[0]).total_seconds())
        now[0] = due
    raise AssertionError("the job never finished")


@pytest.mark.parametrize(
    ("error", "attempts", "kinds"),
    [
        (StorageError("Storage is down"), 4, {"transient"}),  # recoverable 503: retried to the last attempt
        (IdempotencyInProgressError(retry_after=30), 4, {"transient"}),  # waits its 30 s
        (DatabaseError("Broken query"), 2, {"permanent"}),  # non-recoverable 500: one retry at most
        (PaymentError("Declined", "PAYMENT_DECLINED"), 2, {"permanent"}),
    ],
    ids=["503-recoverable", "409-in-progress", "500-not-recoverable", "402-declined"],
)
def test_point9_jobs_retry_what_the_envelope_calls_recoverable(
    app: Flask, failing_kind: Callable[[APIError], list[int]], error: APIError, attempts: int, kinds: set[str]
) -> None:
    calls = failing_kind(error)
    with app.app_context():
        job_id = enqueue("test.point9", {}, now=T0).id
    job, delays = _drive(app, job_id)
    assert calls == list(range(1, attempts + 1))
    assert job.status == DEAD
    assert {e["kind"] for e in job.errors} == kinds
    assert {e["code"] for e in job.errors} == {error.code}
    if error.retry_after is not None:
        assert delays and min(delays) >= error.retry_after  # the Retry-After the envelope announces is honoured
