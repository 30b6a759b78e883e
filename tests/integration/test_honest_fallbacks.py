"""#13 points 1 and 2 (fallback side): a fallback serves only for a failure of the dependency itself.

A programming error inside a guarded call is a 500 with its traceback in errors.log, never a
`degraded: true` answer; a permanent refusal (our credentials refused, our request rejected) gets no
fallback either, so nothing is kept in a local copy that could never sync. The classifier's two
further facts, `misconfigured` and `ambiguous`, are checked against the real SDK exceptions here.
"""

from __future__ import annotations

import http.client
import urllib.error
from collections.abc import Callable
from typing import Any

import pytest
import requests
import stripe
from flask import Flask, jsonify
from python_http_client import exceptions as sendgrid_errors

from backend.app.resilience.classifier import ErrorKind, classify
from backend.app.resilience.recovery import CircuitOpenError, degraded_services, get_breaker, with_error_recovery
from backend.app.resilience.retry import RetryPolicy, call_with_retry
from tests.harness.app import read_log
from tests.harness.contract import assert_error

FAST = {"RETRY_SLEEP_ENABLED": False}


def _requests_http(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(response=response)


def _sendgrid_http(status: int) -> BaseException:
    return sendgrid_errors.HTTPError(urllib.error.HTTPError("u", status, "x", {}, None))  # type: ignore[arg-type]


def _guarded_route(app: Flask, failure: BaseException, fallback_calls: list[Any]) -> None:
    def keep_locally(exc: BaseException) -> str:
        fallback_calls.append(exc)
        return "kept locally"

    @with_error_recovery("storage", "upload", max_retries=2, idempotent=True, fallback=keep_locally)
    def upload() -> str:
        raise failure

    def view() -> Any:
        return jsonify(result=upload(), degraded=bool(degraded_services()))

    app.add_url_rule("/test/upload", "test_upload", view)


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), KeyError("bucket"), AttributeError("no attr")])
def test_point1_a_programming_error_in_a_guarded_call_is_a_500_with_its_traceback_never_degraded(
    make_app: Callable[..., Flask], bug: BaseException
) -> None:
    app = make_app(**FAST)
    served: list[Any] = []
    _guarded_route(app, bug, served)

    response = app.test_client().get("/test/upload")

    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert "degraded" not in response.get_data(as_text=True)
    assert served == []  # the fallback never ran
    lines = [line for line in read_log(app, "errors.log") if line.get("request_id") == error["request_id"]]
    assert lines and type(bug).__name__ in lines[0]["traceback"]
    assert "Traceback (most recent call last)" in lines[0]["traceback"]
    counters = app.extensions["resilience"].counters().get("storage", {})
    assert counters.get("fallback", 0) == 0
    with app.app_context():
        assert get_breaker("storage").state.value == "closed"  # a bug is not an outage


def test_point1_the_fallback_still_serves_a_transient_failure_and_an_open_breaker(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(**FAST, CIRCUIT_BREAKERS={"storage": {"min_calls": 3}})
    served: list[Any] = []
    _guarded_route(app, requests.ConnectionError("refused"), served)
    client = app.test_client()

    first = client.get("/test/upload")
    assert first.status_code == 200 and first.get_json() == {"result": "kept locally", "degraded": True}
    rejected = client.get("/test/upload")  # 3 failed attempts opened the breaker: rejected, still served
    assert rejected.get_json()["degraded"] is True
    assert isinstance(served[-1], CircuitOpenError)


@pytest.mark.parametrize(
    ("failure", "code", "status"),
    [
        (_requests_http(403), "SERVICE_MISCONFIGURED", 503),
        (_sendgrid_http(401), "SERVICE_MISCONFIGURED", 503),
        (_requests_http(400), "UPSTREAM_REJECTED", 500),  # our request was wrong: not the client's fault
    ],
)
def test_point2_a_permanent_refusal_gets_no_fallback_but_its_real_error(
    make_app: Callable[..., Flask], failure: BaseException, code: str, status: int
) -> None:
    app = make_app(**FAST)
    served: list[Any] = []
    _guarded_route(app, failure, served)

    response = app.test_client().get("/test/upload")

    error = assert_error(response, status, code)
    assert error["recoverable"] is False
    assert served == []


def _urllib3_wrapped(inner: BaseException) -> requests.ConnectionError:
    from urllib3.exceptions import MaxRetryError

    return requests.ConnectionError(MaxRetryError(None, "/v3/mail/send", reason=inner))


def test_the_classifier_says_which_refusals_are_configuration_faults() -> None:
    misconfigured = [
        stripe.AuthenticationError("bad key"),
        stripe.PermissionError("no"),
        _sendgrid_http(401),
        _sendgrid_http(403),
    ]
    for exc in misconfigured:
        verdict = classify(exc)
        assert (verdict.kind, verdict.misconfigured) == (ErrorKind.PERMANENT, True), exc
    for exc in (stripe.CardError("declined", "card", "card_declined"), _sendgrid_http(400), _sendgrid_http(404)):
        assert classify(exc).misconfigured is False, exc


def test_the_classifier_says_which_failures_may_have_reached_the_peer() -> None:
    from urllib3.exceptions import NewConnectionError, ProtocolError

    ambiguous = [
        TimeoutError("timed out"),  # urllib's getresponse, after the request went out
        ConnectionResetError("reset by peer"),
        http.client.RemoteDisconnected("closed"),
        http.client.IncompleteRead(b"par"),
        requests.ReadTimeout("read timed out"),
        _urllib3_wrapped(ProtocolError("Connection aborted.", ConnectionResetError())),
        stripe.APIConnectionError("unknown"),
    ]
    for exc in ambiguous:
        verdict = classify(exc)
        assert verdict.kind is ErrorKind.TRANSIENT and verdict.ambiguous, (exc, verdict)
    not_sent = [
        urllib.error.URLError(ConnectionRefusedError(111, "refused")),
        urllib.error.URLError(TimeoutError("connect timed out")),
        ConnectionRefusedError(111, "refused"),
        requests.ConnectTimeout("connect timed out"),
        _urllib3_wrapped(NewConnectionError(None, "refused")),
        _sendgrid_http(500),
    ]
    for exc in not_sent:
        verdict = classify(exc)
        assert verdict.kind is ErrorKind.TRANSIENT and not verdict.ambiguous, (exc, verdict)


def test_a_call_the_peer_cannot_deduplicate_is_retried_after_a_refusal_but_never_after_an_ambiguous_failure() -> None:
    policy = RetryPolicy(max_attempts=4, idempotent=True, retry_ambiguous=False)
    attempts: list[int] = []

    def refused_then_ok() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise urllib.error.URLError(ConnectionRefusedError(111, "refused"))
        return "sent"

    assert call_with_retry(refused_then_ok, policy=policy, sleep=lambda _s: None) == "sent"
    assert len(attempts) == 3

    attempts.clear()

    def times_out() -> str:
        attempts.append(1)
        raise TimeoutError("timed out")

    with pytest.raises(TimeoutError):
        call_with_retry(times_out, policy=policy, sleep=lambda _s: None)
    assert len(attempts) == 1  # once: a second send could deliver it twice


def test_an_injected_connection_failure_is_a_refusal_not_an_ambiguous_outcome() -> None:
    """Fault injection's "fail" mode stands for a refused connection: retried like one, never a possible duplicate."""
    from backend.app.resilience.faults import InjectedConnectionError

    verdict = classify(InjectedConnectionError("injected fault: email refused the connection"))
    assert verdict.kind is ErrorKind.TRANSIENT and not verdict.ambiguous
