"""Access control for views: `login_required` and `admin_required`."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import request
from flask_jwt_extended import current_user, verify_jwt_in_request

from ...log.events import log_security_event
from ..errors import AuthorizationError
from .admins import is_admin

F = TypeVar("F", bound=Callable[..., Any])


def login_required(view: F) -> F:
    """Require a valid access token."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verify_jwt_in_request()
        return view(*args, **kwargs)

    return cast(F, wrapper)


def admin_required(view: F) -> F:
    """Require a valid access token whose user is an admin right now (listed and proven: admins.py)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verify_jwt_in_request()
        if not is_admin(current_user):
            log_security_event(
                "authorization_denied",
                "Non-admin called an admin endpoint",
                user_id=current_user.id,
                endpoint=request.endpoint,
            )
            raise AuthorizationError("This endpoint is for administrators only.", code="ADMIN_REQUIRED")
        return view(*args, **kwargs)

    return cast(F, wrapper)
