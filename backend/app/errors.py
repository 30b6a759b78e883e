"""The API error hierarchy (errors as data) and `init_error_handlers`.

Each class declares its HTTP status, default code and recoverability as class attributes, and
registers every code it can carry in the error catalog. Views raise these; only the handlers in
`error_handlers` turn them into responses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from flask import Flask

from .error_catalog import lookup, register_code


class APIError(Exception):
    """An unexpected server error; the base of every error the API returns."""

    status_code: ClassVar[int] = 500
    code: str = "INTERNAL_ERROR"
    recoverable: bool = False
    # Further codes instances of this class may carry: code → (meaning, recoverable).
    extra_codes: ClassVar[Mapping[str, tuple[str, bool]]] = {}

    def __init__(
        self,
        message: str | None = None,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        recoverable: bool | None = None,
        *,
        field: str | None = None,
        status_code: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.message = message or _first_line(type(self).__doc__) or "An error occurred."
        super().__init__(self.message)
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = dict(details or {})
        if field is not None:
            self.details.setdefault("fields", {})[field] = self.message
        if status_code is not None:
            self.status_code = status_code  # type: ignore[misc] - instance override is intended
        elif code is not None and (entry := lookup(code)) is not None:
            self.status_code = entry.status  # type: ignore[misc] - a registered code knows its status
        if recoverable is not None:
            self.recoverable = recoverable
        elif code is not None and (entry := lookup(code)) is not None:
            self.recoverable = entry.recoverable
        self.retry_after = retry_after

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_class_codes(cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status_code}, message={self.message!r})"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text and text.strip() else ""


def _register_class_codes(cls: type[APIError]) -> None:
    register_code(cls.code, cls.status_code, _first_line(cls.__doc__), cls.recoverable)
    for code, (meaning, recoverable) in cls.__dict__.get("extra_codes", {}).items():
        register_code(code, cls.status_code, meaning, recoverable)


_register_class_codes(APIError)


class BadRequestError(APIError):
    """The request could not be understood."""

    status_code = 400
    code = "BAD_REQUEST"


class MalformedJSONError(BadRequestError):
    """The request body is not valid JSON."""

    code = "MALFORMED_JSON"


class AdminVerificationError(BadRequestError):
    """The admin verification token is invalid, expired or for another account."""

    code = "ADMIN_VERIFICATION_INVALID"


class NotFoundError(APIError):
    """The requested resource does not exist."""

    status_code = 404
    code = "NOT_FOUND"


class ConflictError(APIError):
    """The request conflicts with the current state of the resource."""

    status_code = 409
    code = "CONFLICT"
    extra_codes = {"EMAIL_TAKEN": ("An account with this email address already exists.", False)}


class UnsupportedMediaTypeError(APIError):
    """The request body has a content type this endpoint does not accept."""

    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class AuthenticationError(APIError):
    """Authentication is required or failed."""

    status_code = 401
    code = "AUTHENTICATION_FAILED"
    extra_codes = {"INVALID_CREDENTIALS": ("The email or password is wrong.", False)}


class AuthorizationError(APIError):
    """The authenticated user may not do this."""

    status_code = 403
    code = "PERMISSION_DENIED"
    extra_codes = {"ADMIN_REQUIRED": ("This endpoint is for administrators only.", False)}


class TokenError(AuthenticationError):
    """The access token is invalid."""

    code = "TOKEN_INVALID"
    extra_codes = {
        "TOKEN_MISSING": ("No access token was sent in the Authorization header.", False),
        "TOKEN_EXPIRED": ("The token has expired; refresh it or log in again.", False),
        "TOKEN_REVOKED": ("The token has been revoked (logged out); log in again.", False),
        "TOKEN_WRONG_TYPE": ("A refresh token was sent where an access token is needed, or the reverse.", False),
        "TOKEN_USER_UNKNOWN": ("The token's user no longer exists.", False),
    }


class PaymentError(APIError):
    """The payment could not be completed."""

    status_code = 402
    code = "PAYMENT_FAILED"
    extra_codes = {
        # Not recoverable: the same request is declined again; the user must change the card (the message says so).
        "PAYMENT_DECLINED": ("The card or payment method was declined; use another one.", False),
        "INSUFFICIENT_CREDITS": ("No render credits are left; buy a pack first.", False),
        "CREDITS_IN_DEBT": (
            "The account owes credits (a pack was refunded or disputed after they were spent); "
            "buying a pack settles the debt first, then renders start again.",
            False,
        ),
    }


class StripeError(PaymentError):
    """The payment provider refused this server's request; the client did nothing wrong."""

    # Not a 402: our request to Stripe was wrong (a bug or a setting), so it is our failure. A 500, not a 502:
    # clients and proxies retry a 502, and the same request would be refused again.
    status_code = 500
    code = "STRIPE_ERROR"


class FileError(APIError):
    """The uploaded file could not be handled."""

    status_code = 400
    code = "FILE_ERROR"
    extra_codes = {"FILE_MISSING": ("No file was sent in the multipart field `file`.", False)}


class FileValidationError(FileError):
    """The uploaded file is not audio this service can render."""

    code = "FILE_INVALID"
    extra_codes = {"UNSUPPORTED_AUDIO_FORMAT": ("The file is not a supported audio format.", False)}


class FileSizeError(FileError):
    """The uploaded file is larger than the upload limit."""

    status_code = 413
    code = "FILE_TOO_LARGE"


class RenderingError(APIError):
    """The video could not be rendered."""

    status_code = 500
    code = "RENDERING_FAILED"
    extra_codes = {"FFMPEG_ERROR": ("FFmpeg exited with an error while encoding.", False)}


class RenderingTimeoutError(RenderingError):
    """The render took longer than its time limit."""

    code = "RENDERING_TIMEOUT"
    recoverable = True


class RenderingResourceError(RenderingError):
    """Not enough disk, memory or render slots to start the render now."""

    status_code = 503
    code = "RENDERING_RESOURCES_EXHAUSTED"
    recoverable = True


class ExternalServiceError(APIError):
    """An external service is unavailable; retry later."""

    status_code = 503
    code = "EXTERNAL_SERVICE_UNAVAILABLE"
    recoverable = True
    extra_codes = {
        "SERVICE_NOT_CONFIGURED": ("The service this operation needs is not configured on this server.", False),
        "SERVICE_MISCONFIGURED": (
            "The service this operation needs refused this server's credentials or permissions; "
            "an operator must fix the configuration.",
            False,
        ),
        "CIRCUIT_OPEN": ("The service is failing and calls are paused; retry after `retry_after` seconds.", True),
    }


class CircuitOpenError(ExternalServiceError):
    """The service is failing and calls are paused; retry after `retry_after` seconds."""

    code = "CIRCUIT_OPEN"


class UpstreamRejectedError(ExternalServiceError):
    """An external service refused this server's request as invalid; the client did nothing wrong."""

    status_code = 500  # our request was wrong: not a 502/503, which clients retry
    code = "UPSTREAM_REJECTED"
    recoverable = False


class StorageError(ExternalServiceError):
    """File storage is unavailable; retry later."""

    code = "STORAGE_UNAVAILABLE"


class LocalFileMissingError(StorageError):
    """A file kept in local fallback storage for the bucket is gone: nothing is left to upload (failed-work inbox)."""

    status_code = 500
    code = "LOCAL_FILE_MISSING"
    recoverable = False
    extra_codes = {
        "LOCAL_FILE_UNREADABLE": ("A file kept in local fallback storage for the bucket cannot be read.", False),
    }


class EmailError(ExternalServiceError):
    """The email service is unavailable; retry later."""

    code = "EMAIL_UNAVAILABLE"
    extra_codes = {
        "EMAIL_MESSAGE_INVALID": (
            "The email cannot be built for SendGrid (an address that does not parse, say); it is kept as failed.",
            False,
        ),
    }


class DatabaseError(APIError):
    """A database operation failed."""

    status_code = 500
    code = "DATABASE_ERROR"


class DatabaseUnavailableError(DatabaseError):
    """The database cannot be reached; retry later."""

    status_code = 503
    code = "DATABASE_UNAVAILABLE"
    recoverable = True


class ValidationError(APIError):
    """The request has invalid fields; see `details.fields`."""

    status_code = 422
    code = "VALIDATION_ERROR"


class IdempotencyKeyReusedError(ValidationError):
    """This Idempotency-Key was already used for a different request; use a new key."""

    code = "IDEMPOTENCY_KEY_REUSED"


class RateLimitError(APIError):
    """Too many requests; retry after `retry_after` seconds."""

    status_code = 429
    code = "RATE_LIMITED"
    recoverable = True


def init_error_handlers(app: Flask) -> None:
    """Register the handlers that turn every error into the JSON envelope."""
    from .error_handlers import register  # handlers need Flask request machinery; errors do not

    register(app)
