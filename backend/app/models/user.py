"""Users and revoked tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..timeutil import iso_offset, utcnow


class User(db.Model):  # type: ignore[name-defined]
    """An account: email, password hash and render credits."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When the account proved its right to an ADMIN_EMAILS address (`flask users create-admin`, or the emailed
    # link); None: a plain user whatever its address (backend/app/auth/admins.py).
    admin_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    admin_verified_via: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Tokens issued before this moment are refused (the password was replaced by whoever proved the address).
    credentials_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_dict(self, *, is_admin: bool = False) -> dict[str, object]:
        """The public view of the user."""
        return {
            "id": self.id,
            "email": self.email,
            "is_admin": is_admin,
            "created_at": iso_offset(self.created_at),
        }


class RevokedToken(db.Model):  # type: ignore[name-defined]
    """A JWT revoked before its expiry (logout); kept until it would have expired."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
