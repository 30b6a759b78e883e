"""Request and response models of the payments blueprint (checkout, webhook, credits)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..edge.validation import StrictModel


class CheckoutRequest(StrictModel):
    """Which render-credit pack to buy."""

    pack: str = Field(min_length=1, max_length=50, examples=["starter"])


class CheckoutOut(BaseModel):
    """Where to send the user to pay: Stripe Checkout's URL and the session id."""

    checkout_url: str
    session_id: str


class WebhookAck(BaseModel):
    """The webhook's acknowledgement: whether the event was new and what it granted or took back."""

    received: bool
    duplicate: bool | None = None
    credits_granted: int | None = None
    debt_settled: int | None = None
    credits_clawed_back: int | None = None
    debt_added: int | None = None
    unapplied: str | None = Field(None, description="Why the event could not be applied (kept for an admin)")
    recorded: str | None = None
    ignored: str | None = None


class CreditsOut(BaseModel):
    """The user's render credits, and the credits they owe after a refund or dispute of spent credits."""

    balance: int
    debt: int = Field(description="Credits owed; renders are refused (402 CREDITS_IN_DEBT) until a pack settles it")
