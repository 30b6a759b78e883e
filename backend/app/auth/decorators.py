"""Access control for views: `login_required` and `admin_required`."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import current_app, request
from flask_jwt_extended import current_user, verify_jwt_in_request

from ...logging_config import log_security_event
from ..errors import AuthorizationError

F = TypeVar("F", bound=Callable[..., Any])


def is_admin_email(email: str | None) -> bool:
    """Whether `email` is listed in ADMIN_EMAILS (read from the config on every call)."""
    return bool(email) and email.lower() in current_app.config["ADMIN_EMAILS"]


def login_required(view: F) -> F:
    """Require a valid access token."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verify_jwt_in_request()
        return view(*args, **kwargs)

    return cast(F, wrapper)


def admin_required(view: F) -> F:
    """Require a valid access token whose user is an admin right now."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verify_jwt_in_request()
        if not is_admin_email(current_user.email):
            log_security_event(
                "authorization_denied",
                "Non-admin called an admin endpoint",
                user_id=current_user.id,
                endpoint=request.endpoint,
            )
            raise AuthorizationError("This endpoint is for administrators only.", code="ADMIN_REQUIRED")
        return view(*args, **kwargs)

    return cast(F, wrapper)
