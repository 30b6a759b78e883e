"""The one classifier: real exception objects from every SDK family map to the seed-002 policy."""

from __future__ import annotations

import email.message
import email.utils
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import google.api_core.exceptions as gexc
import google.auth.exceptions as gauth
import pytest
import python_http_client.exceptions as phc
import requests
import sqlalchemy
import stripe
import urllib3.exceptions as u3
from sqlalchemy import exc as sa_exc

from backend.app.errors import (
    CircuitOpenError,
    DatabaseError,
    DatabaseUnavailableError,
    ExternalServiceError,
    PaymentError,
    RateLimitError,
    RenderingError,
    RenderingTimeoutError,
    StorageError,
    ValidationError,
)
from backend.app.resilience.classifier import ErrorKind, classify, is_breaker_failure, parse_retry_after

P, T, R = ErrorKind.PERMANENT, ErrorKind.TRANSIENT, ErrorKind.THROTTLED


def http_message(**headers: str) -> email.message.Message:
    """Headers as urllib and python_http_client carry them (http.client.HTTPMessage is a Message)."""
    msg = email.message.Message()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    return msg


def requests_response(status: int, **headers: str) -> requests.Response:
    """A real requests.Response with a status and headers."""
    response = requests.Response()
    response.status_code = status
    response.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return response


OUR_ERRORS: list[tuple[str, BaseException, ErrorKind]] = [
    ("validation", ValidationError("Email is required", field="email"), P),
    ("card declined (recoverable for the user, not by retrying)", PaymentError("Declined", "PAYMENT_DECLINED"), P),
    ("rate limited", RateLimitError(retry_after=5), R),
    ("external 503", ExternalServiceError(), T),
    ("storage 503", StorageError(), T),
    ("not configured", ExternalServiceError(code="SERVICE_NOT_CONFIGURED"), P),
    ("database unreachable", DatabaseUnavailableError(retry_after=5), T),
    ("database 500", DatabaseError(), P),
    ("render timeout", RenderingTimeoutError(), T),
    ("ffmpeg error", RenderingError("FFmpeg failed", "FFMPEG_ERROR"), P),
    ("open breaker", CircuitOpenError(retry_after=12), R),
]

STRIPE_ERRORS: list[tuple[str, BaseException, ErrorKind]] = [
    ("card", stripe.CardError("Declined", None, "card_declined", http_status=402), P),
    ("rate limit", stripe.RateLimitError("Slow down", http_status=429), R),
    ("connection", stripe.APIConnectionError("Could not connect"), T),
    ("authentication", stripe.AuthenticationError("Bad key", http_status=401), P),
    ("permission", stripe.PermissionError("Restricted key", http_status=403), P),
    ("invalid request 400", stripe.InvalidRequestError("Bad param", "amount", http_status=400), P),
    ("invalid request 404", stripe.InvalidRequestError("No such price", "price", http_status=404), P),
    ("api 500", stripe.APIError("Boom", http_status=500), T),
    ("api 503", stripe.APIError("Boom", http_status=503), T),
    ("api without status", stripe.APIError("Unparseable response"), T),
    ("idempotency", stripe.IdempotencyError("Key reused", http_status=400), P),
    ("signature", stripe.SignatureVerificationError("Bad signature", "t=1,v1=x"), P),
    ("409 lock, should retry", stripe.APIError("Lock", http_status=409, headers={"Stripe-Should-Retry": "true"}), T),
    ("500, should not retry", stripe.APIError("No", http_status=500, headers={"Stripe-Should-Retry": "false"}), P),
]

GOOGLE_ERRORS: list[tuple[str, BaseException, ErrorKind]] = [
    ("400", gexc.BadRequest("bad"), P),
    ("401", gexc.Unauthorized("who"), P),
    ("403", gexc.Forbidden("no"), P),
    ("404", gexc.NotFound("gone"), P),
    ("416", gexc.RequestRangeNotSatisfiable("range"), P),
    ("408", gexc.from_http_status(408, "slow"), T),
    ("429", gexc.TooManyRequests("slow down"), R),
    ("500", gexc.InternalServerError("boom"), T),
    ("502", gexc.BadGateway("gw"), T),
    ("503", gexc.ServiceUnavailable("down"), T),
    ("504 deadline", gexc.DeadlineExceeded("late"), T),
    ("sdk retries exhausted", gexc.RetryError("Deadline of 120s exceeded", cause=ConnectionError()), T),
    ("auth transport", gauth.TransportError("dns"), T),
    ("auth timeout", gauth.TimeoutError("slow"), T),
    ("auth refresh (bad credentials)", gauth.RefreshError("invalid_grant"), P),
    ("auth refresh retryable", gauth.RefreshError("temporarily unavailable", retryable=True), T),
    ("default credentials", gauth.DefaultCredentialsError("none found"), P),
]

SENDGRID_ERRORS: list[tuple[str, BaseException, ErrorKind]] = [
    ("400", phc.BadRequestsError(400, "Bad Request", b"{}", http_message()), P),
    ("401", phc.UnauthorizedError(401, "Unauthorized", b"{}", http_message()), P),
    ("403", phc.ForbiddenError(403, "Forbidden", b"{}", http_message()), P),
    ("413", phc.PayloadTooLargeError(413, "Too Large", b"{}", http_message()), P),
    ("429", phc.TooManyRequestsError(429, "Too Many", b"{}", http_message(Retry_After="3")), R),
    ("500", phc.InternalServerError(500, "Error", b"{}", http_message()), T),
    ("503", phc.ServiceUnavailableError(503, "Down", b"{}", http_message()), T),
    ("504", phc.GatewayTimeoutError(504, "Timeout", b"{}", http_message()), T),
]

HTTP_LIBRARY_ERRORS: list[tuple[str, BaseException, ErrorKind]] = [
    ("requests connection", requests.ConnectionError("refused"), T),
    ("requests timeout", requests.Timeout("slow"), T),
    ("requests connect timeout", requests.ConnectTimeout("slow"), T),
    ("requests read timeout", requests.ReadTimeout("slow"), T),
    ("requests http 404", requests.HTTPError(response=requests_response(404)), P),
    ("requests http 422", requests.HTTPError(response=requests_response(422)), P),
    ("requests http 408", requests.HTTPError(response=requests_response(408)), T),
    ("requests http 503", requests.HTTPError(response=requests_response(503)), T),
    ("requests http 429", requests.HTTPError(response=requests_response(429, Retry_After="2")), R),
    ("requests invalid url", requests.exceptions.InvalidURL("http://"), P),
    ("requests missing schema", requests.exceptions.MissingSchema("example.com"), P),
    ("urllib3 new connection", u3.NewConnectionError(None, "refused"), T),  # type: ignore[arg-type]
    ("urllib3 read timeout", u3.ReadTimeoutError(None, "/x", "timed out"), T),  # type: ignore[arg-type]
    ("urllib3 protocol", u3.ProtocolError("Connection aborted"), T),
    ("urllib3 max retries", u3.MaxRetryError(None, "/x"), T),  # type: ignore[arg-type]
    ("urllib3 bad location", u3.LocationParseError("::::"), P),
    ("urllib url error", urllib.error.URLError(ConnectionRefusedError(111, "refused")), T),
    ("urllib 404", urllib.error.HTTPError("http://x", 404, "Not Found", http_message(), None), P),
    ("urllib 503", urllib.error.HTTPError("http://x", 503, "Down", http_message(), None), T),
    ("urllib 429", urllib.error.HTTPError("http://x", 429, "Slow", http_message(Retry_After="4"), None), R),
]

BUILTIN_ERRORS: list[tuple[str, BaseException, ErrorKind]] = [
    ("timeout", TimeoutError("timed out"), T),
    ("refused", ConnectionRefusedError(111, "refused"), T),
    ("reset", ConnectionResetError(104, "reset"), T),
    ("broken pipe", BrokenPipeError(32, "pipe"), T),
    ("dns", socket.gaierror(-3, "Temporary failure in name resolution"), T),
    ("generic I/O", OSError(5, "Input/output error"), T),
    ("missing file", FileNotFoundError(2, "No such file"), P),
    ("permission", PermissionError(13, "denied"), P),
    ("subprocess timeout", subprocess.TimeoutExpired(["ffmpeg"], 5), T),
    ("subprocess exit", subprocess.CalledProcessError(1, ["ffmpeg"]), P),
    ("type error is a bug", TypeError("unsupported operand"), P),
    ("value error is a bug", ValueError("bad value"), P),
    ("key error is a bug", KeyError("missing"), P),
    ("runtime error", RuntimeError("boom"), P),
]

SQLALCHEMY_ERRORS: list[tuple[str, BaseException, ErrorKind]] = [
    ("integrity", sa_exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")), P),
    ("unreachable", sa_exc.OperationalError("SELECT 1", {}, Exception("could not connect to server")), T),
    ("locked sqlite", sa_exc.OperationalError("SELECT 1", {}, Exception("database is locked")), T),
    ("pool timeout", sa_exc.TimeoutError("QueuePool limit reached"), T),
    ("disconnect", sa_exc.DisconnectionError("gone"), T),
    ("bad sql", sa_exc.OperationalError("SELEC", {}, Exception("no such table: users")), P),
    ("programming", sa_exc.ProgrammingError("SELECT", {}, Exception("syntax error")), P),
]


def _cases(table: list[tuple[str, BaseException, ErrorKind]]) -> list[Any]:
    return [pytest.param(exc, kind, id=name) for name, exc, kind in table]


@pytest.mark.parametrize(
    ("exc", "kind"),
    _cases(OUR_ERRORS + STRIPE_ERRORS + GOOGLE_ERRORS + SENDGRID_ERRORS)
    + _cases(HTTP_LIBRARY_ERRORS + BUILTIN_ERRORS + SQLALCHEMY_ERRORS),
)
def test_every_family_is_classified_by_the_seed_002_policy(exc: BaseException, kind: ErrorKind) -> None:
    verdict = classify(exc)
    assert verdict.kind is kind, verdict
    assert verdict.reason


@pytest.mark.parametrize(
    ("exc", "seconds"),
    [
        pytest.param(stripe.RateLimitError("x", http_status=429, headers={"Retry-After": "7"}), 7.0, id="stripe"),
        pytest.param(
            phc.TooManyRequestsError(429, "x", b"", http_message(Retry_After="3")), 3.0, id="sendgrid-httpmessage"
        ),
        pytest.param(requests.HTTPError(response=requests_response(429, Retry_After="2")), 2.0, id="requests"),
        pytest.param(
            urllib.error.HTTPError("u", 429, "x", http_message(Retry_After="4"), None), 4.0, id="urllib-httpmessage"
        ),
        pytest.param(gexc.TooManyRequests("x", response=requests_response(429, Retry_After="9")), 9.0, id="google"),
        pytest.param(RateLimitError(retry_after=5), 5.0, id="ours"),
        pytest.param(CircuitOpenError(retry_after=12), 12.0, id="open-breaker"),
        pytest.param(requests.HTTPError(response=requests_response(503, Retry_After="6")), 6.0, id="503-with-hint"),
    ],
)
def test_throttled_errors_carry_the_peers_retry_after(exc: BaseException, seconds: float) -> None:
    assert classify(exc).retry_after == seconds


def test_429_without_retry_after_is_throttled_with_no_hint() -> None:
    verdict = classify(stripe.RateLimitError("x", http_status=429))
    assert (verdict.kind, verdict.retry_after) == (R, None)


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(30 + 0) == 30.0
    in_30s = email.utils.formatdate(now + 30, usegmt=True)
    assert 28.0 <= (parse_retry_after(in_30s, now=now) or 0) <= 30.0
    assert parse_retry_after(email.utils.formatdate(now - 300, usegmt=True), now=now) == 0.0
    for garbage in (None, "", "soon", "nan", "inf", float("inf")):
        assert parse_retry_after(garbage) is None


def test_retry_after_as_an_http_date_through_a_real_header() -> None:
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    exc = urllib.error.HTTPError("u", 429, "x", http_message(Retry_After=when), None)
    assert 57.0 <= (classify(exc).retry_after or 0) <= 60.0


def _raise(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an exception")


def test_errors_raised_by_real_clients_against_a_closed_port_are_transient() -> None:
    refused = [
        _raise(lambda: requests.get("http://127.0.0.1:1/", timeout=2)),
        _raise(lambda: urllib.request.urlopen("http://127.0.0.1:1/", timeout=2)),
        _raise(lambda: sqlalchemy.create_engine("postgresql+psycopg://u@127.0.0.1:1/x").connect()),
    ]
    for exc in refused:
        assert classify(exc).kind is T, (type(exc), exc)


def test_real_subprocess_failures() -> None:
    timed_out = _raise(lambda: subprocess.run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2))
    exited = _raise(lambda: subprocess.run([sys.executable, "-c", "raise SystemExit(3)"], check=True))
    assert classify(timed_out).kind is T
    assert classify(exited).kind is P


def test_a_real_sqlite_integrity_error_is_permanent() -> None:
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    with engine.begin() as conn:
        exc = _raise(lambda: conn.exec_driver_sql("INSERT INTO t VALUES (1)"))
    assert isinstance(exc, sa_exc.IntegrityError)
    assert classify(exc).kind is P


@pytest.mark.parametrize(
    ("exc", "trips"),
    [
        pytest.param(stripe.CardError("Declined", None, "card_declined", http_status=402), False, id="card-decline"),
        pytest.param(ValidationError("bad"), False, id="validation"),
        pytest.param(gexc.NotFound("gone"), False, id="404"),
        pytest.param(TypeError("bug"), False, id="bug"),
        pytest.param(CircuitOpenError(retry_after=3), False, id="open-breaker-rejection"),
        pytest.param(TimeoutError(), True, id="timeout"),
        pytest.param(requests.ConnectionError(), True, id="refused"),
        pytest.param(stripe.RateLimitError("x", http_status=429), True, id="throttled"),
        pytest.param(gexc.ServiceUnavailable("down"), True, id="503"),
    ],
)
def test_only_transient_and_throttled_failures_trip_breakers(exc: BaseException, trips: bool) -> None:
    assert is_breaker_failure(exc) is trips
