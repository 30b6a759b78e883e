"""flask-jwt-extended callbacks: user loading, revocation, and every token failure in our envelope.

The library calls these loaders from inside its own error handlers, so they return the response
built by `error_response` rather than raising.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response, current_app, request
from flask_jwt_extended import JWTManager

from ...log.context import bind_log_context
from ..edge.rejection_log import record_rejection
from ..error_handlers import error_response
from ..errors import TokenError
from ..extensions import db
from ..models import RevokedToken, User
from .admins import issued_before_credentials_changed


def _token_failure(code: str, message: str, reason: str | None = None) -> Response:
    # In aggregate per client and code: a flood of bad tokens costs a line per interval, not one per request.
    client = request.remote_addr
    record_rejection(
        current_app._get_current_object(),  # type: ignore[attr-defined]
        "token_rejected",
        message,
        (client, code),
        code=code,
        reason=reason,
        remote_addr=client,
    )
    return error_response(TokenError(message, code=code))


def init_jwt_callbacks(jwt: JWTManager) -> None:
    """Register the loaders on the JWT manager."""

    @jwt.user_identity_loader
    def identity(user: User | int | str) -> str:
        return str(user.id if isinstance(user, User) else user)

    @jwt.user_lookup_loader
    def load_user(_header: dict[str, Any], data: dict[str, Any]) -> User | None:
        try:
            user_id = int(data["sub"])
        except (KeyError, TypeError, ValueError):
            return None
        user = db.session.get(User, user_id)
        if user is not None:
            bind_log_context(user_id=user.id)
        return user

    @jwt.token_in_blocklist_loader
    def is_revoked(_header: dict[str, Any], data: dict[str, Any]) -> bool:
        jti = data.get("jti")
        if jti is None or db.session.get(RevokedToken, jti) is not None:
            return True
        # A token from before the account's password was replaced (admin verification) is revoked too. The user
        # read here is the one the user loader gets next, from the session's identity map: no second query.
        try:
            user = db.session.get(User, int(data["sub"]))
        except (KeyError, TypeError, ValueError):
            return False  # the user loader refuses it
        return issued_before_credentials_changed(user, data.get("iat"))

    @jwt.unauthorized_loader
    def missing(reason: str) -> Response:
        return _token_failure(
            "TOKEN_MISSING", "An access token is required; send it in the Authorization header.", reason
        )

    @jwt.invalid_token_loader
    def invalid(reason: str) -> Response:
        if "refresh token" in reason.lower() or "access token" in reason.lower():
            return _token_failure("TOKEN_WRONG_TYPE", "This endpoint needs a different token type.", reason)
        return _token_failure("TOKEN_INVALID", "The token is invalid.", reason)

    @jwt.expired_token_loader
    def expired(_header: dict[str, Any], _data: dict[str, Any]) -> Response:
        return _token_failure("TOKEN_EXPIRED", "The token has expired. Refresh it or log in again.")

    @jwt.revoked_token_loader
    def revoked(_header: dict[str, Any], _data: dict[str, Any]) -> Response:
        return _token_failure("TOKEN_REVOKED", "The token has been revoked. Log in again.")

    @jwt.user_lookup_error_loader
    def unknown_user(_header: dict[str, Any], _data: dict[str, Any]) -> Response:
        return _token_failure("TOKEN_USER_UNKNOWN", "The token's user no longer exists. Log in again.")

    @jwt.needs_fresh_token_loader
    def needs_fresh(_header: dict[str, Any], _data: dict[str, Any]) -> Response:
        return _token_failure("TOKEN_INVALID", "A fresh login is required for this action.")

    @jwt.token_verification_failed_loader
    def verification_failed(_header: dict[str, Any], _data: dict[str, Any]) -> Response:
        return _token_failure("TOKEN_INVALID", "The token failed verification.")


def revoke(data: dict[str, Any]) -> None:
    """Revoke the token whose decoded claims are `data` until it would have expired."""
    expires = datetime.fromtimestamp(int(data["exp"]), UTC)
    db.session.merge(RevokedToken(jti=data["jti"], user_id=int(data["sub"]), expires_at=expires))
    db.session.commit()
