"""Request and response models of the auth blueprint (register, verify-admin, login, tokens, me)."""

from __future__ import annotations

from pydantic import BaseModel, EmailStr, Field

from ..edge.validation import StrictModel


class RegisterRequest(StrictModel):
    """New account."""

    email: EmailStr = Field(max_length=254)
    password: str = Field(min_length=8, max_length=128)


class VerifyAdminRequest(StrictModel):
    """The emailed admin verification token and the password the mailbox owner chooses."""

    token: str = Field(min_length=1, max_length=1000)
    password: str = Field(min_length=8, max_length=128)


class LoginRequest(StrictModel):
    """Credentials."""

    email: EmailStr = Field(max_length=254)
    password: str = Field(min_length=1, max_length=128)


class UserOut(BaseModel):
    """The public view of a user."""

    id: int
    email: str
    is_admin: bool
    created_at: str | None


class UserEnvelope(BaseModel):
    """A user wrapped in `user`."""

    user: UserOut


class TokenPair(BaseModel):
    """Access and refresh tokens."""

    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int


class AccessToken(BaseModel):
    """A fresh access token."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class Message(BaseModel):
    """A plain acknowledgement."""

    message: str
