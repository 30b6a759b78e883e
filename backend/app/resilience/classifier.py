"""One classifier for every failure: PERMANENT, TRANSIENT or THROTTLED (with a retry-after).

The retry layer, the circuit breakers, the HTTP handlers and the job queue all ask this module,
so a failure is judged once and the same way everywhere. HTTP status policy (seed 002):

- 400, 401, 403, 404, 409, 410, 422 and every other 4xx: PERMANENT (retrying sends the same bad request);
- 408, every 5xx, connection refused/reset, DNS failures and timeouts: TRANSIENT;
- 429: THROTTLED, honouring `Retry-After` (delta-seconds or an HTTP date).

A provider's explicit verdict wins over the status: Stripe's `Stripe-Should-Retry` header.
Our own errors (`APIError`) carry their verdict: `recoverable` (what the envelope tells clients) is
TRANSIENT (THROTTLED for 429 and an open breaker), not recoverable is PERMANENT, whatever the status;
so the envelope, the retry layer and the job queue agree on every code in the catalog.

Two further facts ride on a verdict, for the callers that must treat them differently:

- `misconfigured`: the peer refused this server's credentials or permissions (401, 403, 407, Stripe's
  AuthenticationError/PermissionError, google-auth credential errors). Permanent, and not the
  caller's fault: an operator must fix a key or a permission (the service shows `misconfigured`).
- `ambiguous`: the request may have reached the peer and been acted on, but no answer came back (a
  read timeout, a connection reset or closed after sending). Transient, yet repeating it may do the
  work twice: only a peer that de-duplicates (an idempotency key) may be retried at once. A refused
  connection, a connect timeout or an HTTP error status is never ambiguous: nothing was done.

Exceptions this module does not recognise: the OSError family (I/O, sockets) is TRANSIENT except
the file-system errors that cannot heal by waiting (missing file, permission); everything else
(TypeError, ValueError, KeyError... programming errors) is PERMANENT, so a bug is never retried.

SDK modules are looked up in `sys.modules` rather than imported: if an SDK was never imported,
none of its exceptions can exist, and classifying stays cheap.
"""

from __future__ import annotations

import email.utils
import http.client
import math
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..db_errors import is_unreachable
from ..errors import APIError, CircuitOpenError


class ErrorKind(Enum):
    """What waiting can do for a failure."""

    PERMANENT = "permanent"  # the same call will fail again: do not retry, do not trip a breaker
    TRANSIENT = "transient"  # may succeed if tried again after a backoff
    THROTTLED = "throttled"  # the peer asked us to slow down, possibly saying for how long


@dataclass(frozen=True)
class Classification:
    """The verdict on one failure."""

    kind: ErrorKind
    retry_after: float | None = None
    reason: str = ""
    status: int | None = None
    misconfigured: bool = False  # our credentials or permissions were refused (see the module docstring)
    ambiguous: bool = False  # the peer may have acted on the request (see the module docstring)

    @property
    def retryable(self) -> bool:
        """Whether a retry can succeed (transient or throttled)."""
        return self.kind is not ErrorKind.PERMANENT


PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 410, 411, 413, 414, 415, 422})
TRANSIENT_CLIENT_STATUSES = frozenset({408, 425})
#: Statuses that refuse who we are (credentials, permissions, proxy authentication): an operator must act.
MISCONFIGURED_STATUSES = frozenset({401, 403, 407})

# File-system errors that waiting cannot fix.
_PERMANENT_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def parse_retry_after(value: Any, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return max(0.0, float(value)) if math.isfinite(value) else None
    text = str(value).strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return max(0.0, seconds) if math.isfinite(seconds) else None


def header(headers: Any, name: str) -> Any:
    """A header from any mapping-like object (dict, CaseInsensitiveDict, http.client.HTTPMessage)."""
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    value = getter(name)
    if value is None and isinstance(headers, Mapping):
        lowered = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == lowered), None)
    return value


def classify_status(status: int | None, headers: Any = None, *, reason: str = "") -> Classification:
    """The verdict for an HTTP status (and its headers, for `Retry-After`)."""
    label = reason or f"http {status}"
    if status is None:
        return Classification(ErrorKind.TRANSIENT, None, reason or "no response", None)
    if status == 429:
        return Classification(ErrorKind.THROTTLED, parse_retry_after(header(headers, "Retry-After")), label, status)
    if status >= 500 or status in TRANSIENT_CLIENT_STATUSES:
        # A 503 may also say when to come back; keep it so the wait honours it.
        return Classification(ErrorKind.TRANSIENT, parse_retry_after(header(headers, "Retry-After")), label, status)
    return Classification(ErrorKind.PERMANENT, None, label, status, misconfigured=status in MISCONFIGURED_STATUSES)


def _api_error(exc: APIError) -> Classification:
    """Our own errors already say whether a retry can help: `recoverable` IS the verdict.

    The envelope's `recoverable` ("the same request may succeed later") and the retry layers (HTTP
    clients, `call_with_retry`, the job queue) then never disagree, whatever the status: a 409 for a key
    still in progress is retried after its `retry_after`, a non-recoverable 503 (not configured) is not.
    Whether a failure also trips a breaker is a separate question (`is_breaker_failure`).
    """
    status = exc.status_code
    reason = f"{type(exc).__name__} {exc.code}"
    if not exc.recoverable:
        # A refused key or permission, passed on by an inner guarded call, stays a configuration fault.
        misconfigured = exc.code == "SERVICE_MISCONFIGURED"
        return Classification(ErrorKind.PERMANENT, None, reason, status, misconfigured=misconfigured)
    if status == 429 or exc.code == CircuitOpenError.code:
        # Asked to slow down, or a paused dependency: come back after `retry_after`.
        return Classification(ErrorKind.THROTTLED, exc.retry_after, reason, status)
    return Classification(ErrorKind.TRANSIENT, exc.retry_after, reason, status)


def _stripe(exc: BaseException, stripe: Any) -> Classification | None:
    if not isinstance(exc, stripe.StripeError):
        return None
    name = type(exc).__name__
    status = getattr(exc, "http_status", None)
    headers = getattr(exc, "headers", None)
    should_retry = header(headers, "Stripe-Should-Retry")
    if isinstance(exc, stripe.APIConnectionError):
        # The SDK does not say whether the request went out; every Stripe write carries our idempotency key.
        return Classification(ErrorKind.TRANSIENT, None, f"stripe {name}", status, ambiguous=True)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return Classification(ErrorKind.PERMANENT, None, f"stripe {name}", status, misconfigured=True)
    if isinstance(exc, stripe.CardError | stripe.IdempotencyError | stripe.SignatureVerificationError):
        # Declines need the user; a reused key needs a new request.
        return Classification(ErrorKind.PERMANENT, None, f"stripe {name}", status)
    if should_retry is not None and str(should_retry).lower() == "false":
        return Classification(ErrorKind.PERMANENT, None, f"stripe {name} (Stripe-Should-Retry: false)", status)
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        retry_after = parse_retry_after(header(headers, "Retry-After"))
        return Classification(ErrorKind.THROTTLED, retry_after, f"stripe {name}", status or 429)
    if should_retry is not None and str(should_retry).lower() == "true":
        return Classification(ErrorKind.TRANSIENT, None, f"stripe {name} (Stripe-Should-Retry: true)", status)
    if status is None:
        # stripe.APIError without a status: the response was unusable (truncated, not JSON).
        return Classification(ErrorKind.TRANSIENT, None, f"stripe {name} without status", None)
    return classify_status(status, headers, reason=f"stripe {name} {status}")


def _google_api(exc: BaseException, gexc: Any) -> Classification | None:
    if isinstance(exc, gexc.RetryError):
        # The SDK's own retry loop gave up on errors it considered transient.
        return Classification(ErrorKind.TRANSIENT, None, "google RetryError (SDK retries exhausted)", None)
    if not isinstance(exc, gexc.GoogleAPICallError):
        return None
    status = exc.code if isinstance(exc.code, int) else None
    response = getattr(exc, "response", None)
    return classify_status(status, getattr(response, "headers", None), reason=f"google {type(exc).__name__} {status}")


def _google_auth(exc: BaseException, gauth: Any) -> Classification | None:
    if not isinstance(exc, gauth.GoogleAuthError):
        return None
    name = type(exc).__name__
    if isinstance(exc, gauth.TransportError | gauth.TimeoutError) or getattr(exc, "retryable", False):
        return Classification(ErrorKind.TRANSIENT, None, f"google-auth {name}", None)
    # google-cloud-storage surfaces a 401 from the bucket as InvalidOperation: google-auth refreshes the
    # credentials only after a 401 (DEFAULT_REFRESH_STATUS_CODES), and anonymous ones cannot be refreshed.
    status = 401 if isinstance(exc, gauth.InvalidOperation) and "cannot be refreshed" in str(exc) else None
    return Classification(ErrorKind.PERMANENT, None, f"google-auth {name} (credentials)", status, misconfigured=True)


def _sendgrid(exc: BaseException, phc: Any) -> Classification | None:
    if not isinstance(exc, phc.HTTPError):
        return None
    status = getattr(exc, "status_code", None)
    return classify_status(status, getattr(exc, "headers", None), reason=f"sendgrid {type(exc).__name__} {status}")


def _requests(exc: BaseException, rexc: Any) -> Classification | None:
    if not isinstance(exc, rexc.RequestException):
        return None
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    if isinstance(exc, rexc.HTTPError) and response is not None:
        return classify_status(response.status_code, response.headers, reason=f"requests {name} {response.status_code}")
    if isinstance(exc, rexc.ConnectionError | rexc.Timeout | rexc.ChunkedEncodingError | rexc.ContentDecodingError):
        ambiguous = _requests_ambiguous(exc, rexc)
        return Classification(ErrorKind.TRANSIENT, None, f"requests {name}", None, ambiguous=ambiguous)
    # InvalidURL, MissingSchema, InvalidHeader, TooManyRedirects: the request itself is wrong.
    return Classification(ErrorKind.PERMANENT, None, f"requests {name}", None)


def _requests_ambiguous(exc: BaseException, rexc: Any) -> bool:
    """Whether a requests failure may have happened after the request reached the peer."""
    if isinstance(exc, rexc.ConnectTimeout):
        return False  # never connected
    if isinstance(exc, rexc.Timeout | rexc.ChunkedEncodingError | rexc.ContentDecodingError):
        return True  # sent, then the answer stalled or broke off
    inner = exc.args[0] if exc.args else None
    uexc = sys.modules.get("urllib3.exceptions")
    if uexc is not None and isinstance(inner, BaseException):
        return _urllib3_ambiguous(inner, uexc)
    return True  # unknown: assume the peer may have acted


def _urllib3_ambiguous(exc: BaseException, uexc: Any) -> bool:
    if isinstance(exc, uexc.MaxRetryError):
        return exc.reason is None or _urllib3_ambiguous(exc.reason, uexc)
    # Never connected: False. Read timeouts, protocol errors (reset, closed mid-answer), anything unknown: True.
    return not isinstance(exc, uexc.NewConnectionError | uexc.ConnectTimeoutError)


def _urllib3(exc: BaseException, uexc: Any) -> Classification | None:
    if not isinstance(exc, uexc.HTTPError):
        return None
    name = type(exc).__name__
    if isinstance(exc, uexc.LocationValueError | uexc.LocationParseError):
        return Classification(ErrorKind.PERMANENT, None, f"urllib3 {name}", None)
    return Classification(ErrorKind.TRANSIENT, None, f"urllib3 {name}", None, ambiguous=_urllib3_ambiguous(exc, uexc))


def _sqlalchemy(exc: BaseException, saexc: Any) -> Classification | None:
    if not isinstance(exc, saexc.SQLAlchemyError):
        return None
    name = type(exc).__name__
    if isinstance(exc, saexc.IntegrityError):
        return Classification(ErrorKind.PERMANENT, None, f"sqlalchemy {name}", None)
    if is_unreachable(exc):
        return Classification(ErrorKind.TRANSIENT, None, f"sqlalchemy {name} (database unreachable)", None)
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    if sqlstate.startswith("40"):
        # 40001 serialization failure, 40P01 deadlock: the transaction may be run again.
        return Classification(ErrorKind.TRANSIENT, None, f"sqlalchemy {name} (sqlstate {sqlstate})", None)
    return Classification(ErrorKind.PERMANENT, None, f"sqlalchemy {name}", None)


def _builtin(exc: BaseException) -> Classification:
    name = type(exc).__name__
    if isinstance(exc, urllib.error.HTTPError):
        return classify_status(exc.code, exc.headers, reason=f"urllib HTTPError {exc.code}")
    if isinstance(exc, urllib.error.URLError):
        # urllib wraps only what fails while connecting or sending: the peer never had the whole request.
        return Classification(ErrorKind.TRANSIENT, None, f"urllib URLError ({exc.reason})", None)
    if isinstance(exc, subprocess.TimeoutExpired):
        return Classification(ErrorKind.TRANSIENT, None, "subprocess timed out", None)
    if isinstance(exc, subprocess.CalledProcessError):
        return Classification(ErrorKind.PERMANENT, None, f"subprocess exited with {exc.returncode}", None)
    if isinstance(exc, ConnectionRefusedError | socket.gaierror | socket.herror):
        return Classification(ErrorKind.TRANSIENT, None, name, None)
    if isinstance(exc, TimeoutError | ConnectionError | http.client.HTTPException):
        # Raised bare while waiting for or reading the answer (urllib's getresponse, http.client): the
        # request went out, so the peer may have acted on it.
        return Classification(ErrorKind.TRANSIENT, None, name, None, ambiguous=True)
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return Classification(ErrorKind.PERMANENT, None, name, None)
    if isinstance(exc, OSError):
        return Classification(ErrorKind.TRANSIENT, None, f"{name} (I/O)", None)
    return Classification(ErrorKind.PERMANENT, None, f"{name} (unrecognised: treated as permanent)", None)


# (module that must already be imported, handler taking the exception and that module)
_SDK_HANDLERS: tuple[tuple[str, Callable[[BaseException, Any], Classification | None]], ...] = (
    ("stripe", _stripe),
    ("google.api_core.exceptions", _google_api),
    ("google.auth.exceptions", _google_auth),
    ("python_http_client.exceptions", _sendgrid),
    ("requests.exceptions", _requests),
    ("urllib3.exceptions", _urllib3),
    ("sqlalchemy.exc", _sqlalchemy),
)


def classify(exc: BaseException) -> Classification:
    """Classify any exception as PERMANENT, TRANSIENT or THROTTLED (see the module docstring)."""
    if isinstance(exc, APIError):
        return _api_error(exc)
    for module_name, handler in _SDK_HANDLERS:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        verdict = handler(exc, module)
        if verdict is not None:
            return verdict
    return _builtin(exc)


def is_breaker_failure(exc: BaseException) -> bool:
    """Whether a failure says the service is unhealthy (transient or throttled), so a breaker counts it.

    Permanent failures (a declined card, a validation error, a 404) prove the service answered:
    they never trip a breaker. Nor does any other 4xx but a 429, even a retryable one (a 408, a key
    still in progress): it is an answer about this request, from a service that is up (a slow answer
    still counts as a slow call). An open breaker's own rejection is not a new failure either.
    """
    if isinstance(exc, APIError) and exc.code == CircuitOpenError.code:  # also a relayed envelope with that code
        return False
    verdict = classify(exc)
    if verdict.status is not None and 400 <= verdict.status < 500 and verdict.status != 429:
        return False
    return verdict.kind is not ErrorKind.PERMANENT
