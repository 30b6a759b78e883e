"""Password hashing with Argon2id (a slow, memory-hard hash)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

# A hash of a random password, verified against when the email is unknown so that a login for a
# missing account costs as much as one for a real account (no user enumeration by timing).
_DUMMY_PASSWORD = "not-a-real-password-but-long-enough"


def _hasher() -> PasswordHasher:
    cfg = current_app.config
    ph = current_app.extensions.get("password_hasher")
    if ph is None:
        ph = PasswordHasher(time_cost=cfg["PASSWORD_HASH_TIME_COST"], memory_cost=cfg["PASSWORD_HASH_MEMORY_COST"])
        current_app.extensions["password_hasher"] = ph
        current_app.extensions["password_dummy_hash"] = ph.hash(_DUMMY_PASSWORD)
    return ph


def hash_password(password: str) -> str:
    """An Argon2id hash of `password`."""
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; with no hash, spend the same time and say no."""
    ph = _hasher()
    target = password_hash or current_app.extensions["password_dummy_hash"]
    try:
        ok = ph.verify(target, password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None
