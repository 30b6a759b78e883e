"""Request and response models shared by the API blueprints and the OpenAPI document."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, EmailStr, Field


class StrictModel(BaseModel):
    """Rejects unknown fields so typos are reported, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RegisterRequest(StrictModel):
    """New account."""

    email: EmailStr = Field(max_length=254)
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


class CatalogEntryOut(BaseModel):
    """One error code of the catalog."""

    code: str
    status: int
    meaning: str
    recoverable: bool


class CatalogOut(BaseModel):
    """The error catalog."""

    errors: list[CatalogEntryOut]


class HealthCheckOut(BaseModel):
    """Basic health."""

    status: str
    timestamp: str
    checks: dict[str, str]
