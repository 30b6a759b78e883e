"""Auth views: register, login, refresh, logout and the current user."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, request
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    current_user,
    get_jwt,
    jwt_required,
)
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ...logging_config import log_security_event
from ..errors import AuthenticationError, ConflictError
from ..extensions import db
from ..models import User
from ..openapi import documented
from ..rate_limits import rate_limited
from ..schemas import AccessToken, LoginRequest, Message, RegisterRequest, TokenPair, UserEnvelope
from ..validation import parse_json
from . import bp
from .decorators import is_admin_email, login_required
from .passwords import hash_password, verify_password
from .tokens import revoke


def _user_body(user: User) -> dict[str, Any]:
    return {"user": user.to_dict(is_admin=is_admin_email(user.email))}


@bp.post("/api/auth/register")
@documented("Create an account", tag="auth", request=RegisterRequest, responses={201: UserEnvelope}, errors=(409,))
@rate_limited("RATELIMIT_REGISTER")
def register() -> tuple[dict[str, Any], int]:
    """Create an account with an email and a password."""
    body = parse_json(RegisterRequest)
    email = body.email.lower()
    if db.session.scalar(select(User.id).where(func.lower(User.email) == email)) is not None:
        raise ConflictError("An account with this email address already exists.", code="EMAIL_TAKEN", field="email")
    user = User(email=email, password_hash=hash_password(body.password))
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError as exc:  # a concurrent registration won the race
        db.session.rollback()
        raise ConflictError(
            "An account with this email address already exists.", code="EMAIL_TAKEN", field="email"
        ) from exc
    log_security_event("account_created", "Account created", level=logging.INFO, user_id=user.id)
    return _user_body(user), 201


def _expires_in(key: str) -> int:
    return int(current_app.config[key].total_seconds())


@bp.post("/api/auth/login")
@documented("Log in and receive tokens", tag="auth", request=LoginRequest, responses={200: TokenPair})
@rate_limited("RATELIMIT_LOGIN")
def login() -> dict[str, Any]:
    """Exchange an email and password for an access and a refresh token."""
    body = parse_json(LoginRequest)
    email = body.email.lower()
    user = db.session.scalar(select(User).where(func.lower(User.email) == email))
    if not verify_password(user.password_hash if user else None, body.password):
        log_security_event("login_failed", "Login failed", email=email, remote_addr=request.remote_addr)
        raise AuthenticationError("The email or password is wrong.", code="INVALID_CREDENTIALS")
    assert user is not None  # verify_password is False without a user
    log_security_event("login_succeeded", "Login succeeded", level=logging.INFO, user_id=user.id)
    return {
        "access_token": create_access_token(identity=user),
        "refresh_token": create_refresh_token(identity=user),
        "token_type": "Bearer",
        "expires_in": _expires_in("JWT_ACCESS_TOKEN_EXPIRES"),
    }


@bp.post("/api/auth/refresh")
@documented("Get a new access token with a refresh token", tag="auth", responses={200: AccessToken}, auth="refresh")
@jwt_required(refresh=True)
def refresh() -> dict[str, Any]:
    """A new access token for the refresh token's user."""
    return {
        "access_token": create_access_token(identity=current_user),
        "token_type": "Bearer",
        "expires_in": _expires_in("JWT_ACCESS_TOKEN_EXPIRES"),
    }


@bp.post("/api/auth/logout")
@documented("Revoke the token sent (access or refresh)", tag="auth", responses={200: Message}, auth="user")
@jwt_required(verify_type=False)
def logout() -> dict[str, str]:
    """Revoke the token used for this request."""
    claims = get_jwt()
    revoke(claims)
    log_security_event(
        "logout", "Token revoked", level=logging.INFO, user_id=current_user.id, token_type=claims.get("type")
    )
    return {"message": "Token revoked."}


@bp.get("/api/me")
@documented("The current user", tag="auth", responses={200: UserEnvelope}, auth="user")
@login_required
def me() -> dict[str, Any]:
    """The authenticated user."""
    return _user_body(current_user)
