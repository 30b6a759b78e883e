"""Auth views: register, login, refresh, logout and the current user."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, current_app, request
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    current_user,
    get_jwt,
    jwt_required,
)
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ...log.events import log_security_event
from ..edge.openapi import documented
from ..edge.rate_limits import rate_limited
from ..edge.validation import load_json, parse_json
from ..errors import AdminVerificationError, AuthenticationError, ConflictError
from ..extensions import db
from ..models import User
from . import bp
from .admins import grant_admin, is_admin, is_listed, redeem, replace_password, send_verification
from .decorators import login_required
from .passwords import hash_password, verify_password
from .schemas import AccessToken, LoginRequest, Message, RegisterRequest, TokenPair, UserEnvelope, VerifyAdminRequest
from .tokens import revoke


def _user_body(user: User) -> dict[str, Any]:
    return {"user": user.to_dict(is_admin=is_admin(user))}


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
    if is_listed(email):
        # A listed address is not proof: the account stays a plain user until the mailbox (or an operator) says so.
        send_verification(user)
    return _user_body(user), 201


@bp.post("/api/auth/verify-admin")
@documented(
    "Redeem an emailed admin verification link: sets the account's password, grants admin rights",
    tag="auth",
    request=VerifyAdminRequest,
    responses={200: UserEnvelope},
    errors=(400,),
)
@rate_limited("RATELIMIT_LOGIN")
def verify_admin() -> dict[str, Any]:
    """Prove an ADMIN_EMAILS address by its emailed token; the password chosen here replaces the registrant's."""
    body = parse_json(VerifyAdminRequest)
    try:
        user = redeem(body.token)
    except AdminVerificationError:
        log_security_event("admin_verification_rejected", "Admin verification token refused")
        raise
    replace_password(user, hash_password(body.password))  # tokens of whoever registered stop working
    grant_admin(user, via="email")
    db.session.commit()
    return _user_body(user)


def _expires_in(key: str) -> int:
    return int(current_app.config[key].total_seconds())


def _login_account() -> str:
    """The account a login names (its email, lower-cased), for the per-account throttle; "-" when unreadable."""
    try:
        body = load_json(request.get_data(cache=True))  # cached: the view parses the same bytes
    except (ValueError, UnicodeDecodeError):
        return "-"  # a body that is not JSON fails with 400 and never counts against an account
    email = body.get("email") if isinstance(body, dict) else None
    return email.strip().lower()[:254] if isinstance(email, str) and email.strip() else "-"


def _login_failed(response: Response) -> bool:
    return response.status_code == 401


@bp.post("/api/auth/login")
@documented("Log in and receive tokens", tag="auth", request=LoginRequest, responses={200: TokenPair})
@rate_limited("RATELIMIT_LOGIN")
# Failed logins per account from any address, so many addresses cannot brute-force one account.
@rate_limited("RATELIMIT_LOGIN_ACCOUNT", key=_login_account, deduct_when=_login_failed)
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
