"""#13 point 9: `recoverable` in the envelope and the classifier's verdict agree for every code in the catalog.

The browser client retries what the envelope calls recoverable; the retry layer, the breakers and the
job queue retry what the classifier calls transient or throttled. If the two disagreed, a client would
hammer what the server will not retry, or the server would retry what it tells the client is final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from werkzeug.exceptions import default_exceptions

from backend.app import errors
from backend.app.error_catalog import entries, lookup
from backend.app.error_handlers import from_http_exception
from backend.app.errors import APIError
from backend.app.utils.classifier import classify, is_breaker_failure
from tests.conftest import bearer, login
from tests.contract import assert_error
from tests.peers.stripe_peer import StripePeer


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
