"""Who is an admin: an account whose address is in ADMIN_EMAILS *and* that proved it owns that right.

Registering a listed address proves nothing (anyone can type it), so a fresh account is a plain user.
The proof is one of:
- `flask users create-admin EMAIL`: someone with shell access on the server created or promoted it;
- the emailed link, when SendGrid and PUBLIC_BASE_URL are configured: registering a listed address mails
  a signed, expiring token to it. Redeeming the token (`POST /api/auth/verify-admin` with a new password,
  or the dashboard's form at `/admin/#verify=<token>`) sets the account's password to the one the mailbox
  owner chose and refuses every token issued before: whoever registered the address loses the account,
  so clicking an unexpected link never hands admin rights to a stranger. Without PUBLIC_BASE_URL no link
  is sent (a link built from the request's Host header could point at an attacker's server).

Removing an address from ADMIN_EMAILS still takes the rights away on the next request.
"""

from __future__ import annotations

import logging
import time

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from ...log.events import log_security_event
from ..errors import AdminVerificationError
from ..extensions import db
from ..models import User
from ..timeutil import utcnow

logger = logging.getLogger(__name__)

SALT = "oriel-admin-verification"
#: How long an emailed verification link stays valid (ADMIN_VERIFICATION_MAX_AGE_SECONDS).
DEFAULT_MAX_AGE = 24 * 3600


def is_listed(email: str | None) -> bool:
    """Whether `email` is in ADMIN_EMAILS (read from the config on every call)."""
    return bool(email) and email.lower() in current_app.config["ADMIN_EMAILS"]


def is_admin(user: User | None) -> bool:
    """Whether `user` is an admin right now: listed in ADMIN_EMAILS and proven."""
    return user is not None and user.admin_verified_at is not None and is_listed(user.email)


def grant_admin(user: User, *, via: str) -> None:
    """Record the proof (`via`: "cli" or "email") and say so in security.log; the caller commits."""
    user.admin_verified_at = utcnow()
    user.admin_verified_via = via
    log_security_event("admin_granted", "Admin rights granted", level=logging.WARNING, user_id=user.id, via=via)


def replace_password(user: User, password_hash: str) -> None:
    """Set a new password and refuse every token issued before now; the caller commits."""
    user.password_hash = password_hash
    user.credentials_changed_at = utcnow()


def issued_before_credentials_changed(user: User | None, issued_at: int | float | None) -> bool:
    """Whether a token issued at `issued_at` (JWT `iat`, seconds) predates the user's last credential change."""
    if user is None or user.credentials_changed_at is None or issued_at is None:
        return False
    changed = user.credentials_changed_at
    stamp = changed.timestamp() if changed.tzinfo is not None else changed.replace(tzinfo=utcnow().tzinfo).timestamp()
    return float(issued_at) < int(stamp)  # `iat` is whole seconds


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def verification_token(user: User) -> str:
    """A signed token naming the account and its address (expires after ADMIN_VERIFICATION_MAX_AGE_SECONDS)."""
    return str(_serializer().dumps({"uid": user.id, "email": user.email.lower()}))


def redeem(token: str) -> User:
    """The listed, not yet proven account a valid token names; AdminVerificationError otherwise."""
    max_age = int(current_app.config.get("ADMIN_VERIFICATION_MAX_AGE_SECONDS", DEFAULT_MAX_AGE))
    try:
        data = _serializer().loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise AdminVerificationError("This verification link has expired; register again or ask an operator.") from exc
    except BadSignature as exc:
        raise AdminVerificationError("This verification link is not valid.") from exc
    user = (
        db.session.get(User, data.get("uid")) if isinstance(data, dict) and isinstance(data.get("uid"), int) else None
    )
    if user is None or user.email.lower() != data.get("email") or not is_listed(user.email):
        raise AdminVerificationError("This verification link is not valid.")
    if user.admin_verified_at is not None:
        raise AdminVerificationError("This account is already verified; log in.")
    return user


def send_verification(user: User) -> bool:
    """Mail the verification link to a listed address when email and PUBLIC_BASE_URL allow; whether it was queued."""
    from ..services import get_email

    base = current_app.config.get("PUBLIC_BASE_URL")
    email = get_email()
    if not base or not email.configured:
        logger.info("Admin verification not mailed (needs SendGrid and PUBLIC_BASE_URL): use flask users create-admin")
        return False
    # In the fragment: a browser never sends it to a server, so the token is in no access log on the way.
    link = f"{base.rstrip('/')}/admin/#verify={verification_token(user)}"
    text = "\n\n".join(
        [
            "Someone registered an administrator account with this address.",
            "If it was you, open the link below within 24 hours and choose your password there: "
            "the password typed at registration stops working, so nobody else can use this account.",
            f"Verify: {link}",
            "If it was not you, ignore this email; the account stays a plain user.",
        ]
    )
    # One mail an hour per account at most: the outbox de-duplicates on the key.
    email.send(
        user.email,
        "Verify your administrator account",
        text,
        dedup_key=f"admin-verify:{user.id}:{int(time.time() // 3600)}",
    )
    log_security_event("admin_verification_sent", "Admin verification mailed", level=logging.INFO, user_id=user.id)
    return True
