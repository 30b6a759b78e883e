"""Payments views: start a Checkout, receive Stripe's webhook, read the credit balance and debt."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from flask import request
from flask_jwt_extended import current_user

from ..auth.decorators import login_required
from ..edge.idempotency import HEADER_DOC as IDEMPOTENCY_HEADER_DOC
from ..edge.idempotency import idempotent
from ..edge.idempotency import read_key as read_idempotency_key
from ..edge.openapi import documented
from ..edge.validation import parse_json
from ..services import credits, get_payments
from . import bp
from .events import process_event
from .schemas import CheckoutOut, CheckoutRequest, CreditsOut, WebhookAck

STRIPE_KEY_ROOM = 200  # of Stripe's 255 characters, what is left after "checkout:<user id>:"


@bp.post("/api/payments/checkout")
@documented(
    "Start a Stripe Checkout for a render-credit pack",
    tag="payments",
    request=CheckoutRequest,
    responses={201: CheckoutOut},
    auth="user",
    errors=(402, 409, 422, 503),
    headers=(IDEMPOTENCY_HEADER_DOC,),
)
@login_required
@idempotent
def checkout() -> tuple[dict[str, Any], int]:
    """Create a Checkout Session; the key (client's or fresh) is reused by every retry of this request."""
    body = parse_json(CheckoutRequest)
    # `@idempotent` replays a finished request with this key; Stripe's key (derived from the client's, so a
    # request that died before storing its answer meets the same session again) covers the call itself.
    # Per user; a client key too long for Stripe's 255 characters with the prefix is hashed.
    client_key = read_idempotency_key()
    if client_key is None:
        suffix = uuid.uuid4().hex
    elif len(client_key) <= STRIPE_KEY_ROOM:
        suffix = client_key
    else:
        suffix = "sha256-" + hashlib.sha256(client_key.encode()).hexdigest()
    key = f"checkout:{current_user.id}:{suffix}"
    session = get_payments().create_checkout_session(current_user, body.pack, idempotency_key=key)
    return {"checkout_url": session.checkout_url, "session_id": session.session_id}, 201


@bp.post("/api/payments/webhook")
@documented(
    "Stripe webhook: verified by signature, each event processed once",
    tag="payments",
    request_content="application/json",
    responses={200: WebhookAck},
    errors=(400, 503),
    headers=(("Stripe-Signature", "Stripe's signature of the raw body"),),
)
def webhook() -> dict[str, Any]:
    """Verify the event and process it once (grants, claw-backs; what cannot apply is kept and alerted, then 2xx)."""
    event = get_payments().construct_event(request.get_data(cache=False), request.headers.get("Stripe-Signature"))
    return process_event(event)


@bp.get("/api/payments/credits")
@documented("The current user's render credits", tag="payments", responses={200: CreditsOut}, auth="user")
@login_required
def credit_balance() -> dict[str, int]:
    """How many renders the user can still start, and what they owe (renders wait until it is paid off)."""
    state = credits.account(current_user.id)
    return {"balance": state.balance, "debt": state.debt}
