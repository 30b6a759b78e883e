"""Stripe: Checkout Sessions for render-credit packs, and webhook verification. No fallback: never faked.

The SDK is tamed as SPEC section 10 says: an explicit timeout (STRIPE_TIMEOUT; the default is 80 s),
`max_network_retries=0` (its own two retries would stack under ours), and OUR idempotency key per
logical operation passed on every attempt, so an outer retry replays the same request at Stripe
instead of creating a second session. `STRIPE_API_BASE` points the SDK at a local server.

Stripe exceptions are translated once, in `translate_stripe_error`:

| Stripe | we raise | status |
| --- | --- | --- |
| CardError | `PaymentError` PAYMENT_DECLINED (use another card) | 402 |
| AuthenticationError, PermissionError | SERVICE_MISCONFIGURED, logged CRITICAL (by `with_error_recovery`) | 503 |
| RateLimitError (after our retries) | `PaymentsUnavailableError` with `retry_after` | 503 |
| APIConnectionError, APIError 5xx (after retries) | `PaymentsUnavailableError` (recoverable) | 503 |
| IdempotencyError (a client key reused with other parameters) | `IdempotencyKeyReusedError` (one code app-wide) | 422 |
| InvalidRequestError | `StripeError` STRIPE_ERROR, logged ERROR (our request is wrong, not the client's) | 500 |

The retry layer classifies the raw Stripe exceptions (declines and auth problems are permanent and
never trip the `stripe` breaker; rate limits are throttled; connection problems transient).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import (
    APIError,
    BadRequestError,
    ExternalServiceError,
    IdempotencyKeyReusedError,
    PaymentError,
    StripeError,
    ValidationError,
)
from ..resilience.classifier import classify
from ..resilience.recovery import call_with_recovery, get_breaker

logger = logging.getLogger(__name__)

SERVICE = "stripe"
DEFAULT_PACKS: dict[str, tuple[int, int]] = {"starter": (5, 500), "creator": (20, 1500), "studio": (100, 6000)}


class PaymentsUnavailableError(ExternalServiceError):
    """Payments are unavailable right now; retry later."""

    code = "PAYMENTS_UNAVAILABLE"


class WebhookSignatureError(BadRequestError):
    """The webhook's Stripe-Signature does not match its payload."""

    code = "WEBHOOK_SIGNATURE_INVALID"
    extra_codes = {"WEBHOOK_PAYLOAD_INVALID": ("The webhook payload is not a valid Stripe event.", False)}


@dataclass(frozen=True)
class Pack:
    """A render-credit pack on sale."""

    name: str
    credits: int
    amount_cents: int


@dataclass(frozen=True)
class CheckoutSession:
    """What the client needs to send the user to Stripe Checkout."""

    checkout_url: str
    session_id: str


def not_configured(what: str) -> ExternalServiceError:
    """The 503 SERVICE_NOT_CONFIGURED error for a missing Stripe setting."""
    return ExternalServiceError(
        f"Payments are not configured on this server ({what} is not set).",
        code="SERVICE_NOT_CONFIGURED",
        details={"service": SERVICE},
    )


def translate_stripe_error(exc: BaseException) -> APIError:
    """Map a Stripe SDK exception to ours (the one table; see the module docstring)."""
    import stripe

    verdict = classify(exc)
    if isinstance(exc, stripe.CardError):
        reason = getattr(exc, "code", None) or "card_declined"
        details: dict[str, Any] = {"reason": reason}
        decline_code = getattr(getattr(exc, "error", None), "decline_code", None)
        if decline_code:
            details["decline_code"] = str(decline_code)
        return PaymentError("Your payment was declined. Try another card.", "PAYMENT_DECLINED", details)
    if isinstance(exc, stripe.IdempotencyError):
        return IdempotencyKeyReusedError(
            "This Idempotency-Key was already used for a different request; use a new key.",
            details={"service": SERVICE},
        )
    if isinstance(exc, stripe.InvalidRequestError):
        logger.error(
            "Stripe refused our request: %s (param %s, request %s)",
            getattr(exc, "code", None) or type(exc).__name__,
            getattr(exc, "param", None),
            getattr(exc, "request_id", None),
        )
        return StripeError(
            "The payment provider refused this server's request; this is not your fault. Quote the request ID.",
            details={"service": SERVICE},
        )
    retry_after = math.ceil(verdict.retry_after) if verdict.retry_after is not None else None
    return PaymentsUnavailableError(
        "Payments are unavailable right now. Retry later.",
        details={"service": SERVICE, "reason": verdict.kind.value},
        recoverable=verdict.retryable,
        retry_after=retry_after,
    )


def parse_packs(raw: Any) -> dict[str, Pack]:
    """Packs from config: `{"starter": (credits, cents)}` or `{"starter": {"credits": 5, "amount_cents": 500}}`."""
    if isinstance(raw, str):
        raw = json.loads(raw)
    packs: dict[str, Pack] = {}
    for name, value in dict(raw or DEFAULT_PACKS).items():
        credits, cents = (value["credits"], value["amount_cents"]) if isinstance(value, Mapping) else value
        packs[name] = Pack(name, int(credits), int(cents))
    return packs


class PaymentsService:
    """Create Checkout Sessions and verify webhooks; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str | None,
        webhook_secret: str | None = None,
        api_base: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        packs: Mapping[str, Pack] | None = None,
        currency: str = "usd",
        success_url: str = "http://localhost:5000/payments/success?session_id={CHECKOUT_SESSION_ID}",
        cancel_url: str = "http://localhost:5000/payments/cancelled",
    ) -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.api_base = api_base
        self.timeout = timeout
        self.max_retries = max_retries
        self.packs = dict(packs or parse_packs(None))
        self.currency = currency
        self.success_url = success_url
        self.cancel_url = cancel_url
        self._client: Any = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PaymentsService:
        """Build from app config (the SDK client is built on the first call)."""
        base = (config.get("PUBLIC_BASE_URL") or "http://localhost:5000").rstrip("/")
        return cls(
            api_key=config.get("STRIPE_API_KEY") or None,
            webhook_secret=config.get("STRIPE_WEBHOOK_SECRET") or None,
            api_base=config.get("STRIPE_API_BASE") or None,
            timeout=float(config.get("STRIPE_TIMEOUT", 10.0)),
            max_retries=int(config.get("STRIPE_MAX_RETRIES", 2)),
            packs=parse_packs(config.get("RENDER_PACKS")),
            currency=config.get("STRIPE_CURRENCY") or "usd",
            success_url=config.get("CHECKOUT_SUCCESS_URL")
            or f"{base}/payments/success?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=config.get("CHECKOUT_CANCEL_URL") or f"{base}/payments/cancelled",
        )

    @property
    def configured(self) -> bool:
        """Whether a Stripe API key is set."""
        return bool(self.api_key)

    def pack(self, name: str) -> Pack:
        """The pack called `name`, or a 422 naming the valid ones."""
        try:
            return self.packs[name]
        except KeyError:
            raise ValidationError(
                f"Unknown pack; choose one of: {', '.join(sorted(self.packs))}.", field="pack"
            ) from None

    def create_checkout_session(self, user: Any, pack: str, idempotency_key: str) -> CheckoutSession:
        """A Stripe Checkout Session selling `pack` to `user`; retried with the same `idempotency_key`."""
        chosen = self.pack(pack)
        if not self.configured:
            raise not_configured("STRIPE_API_KEY")
        params = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": self.currency,
                        "unit_amount": chosen.amount_cents,
                        "product_data": {"name": f"Oriel render credits: {chosen.name} ({chosen.credits})"},
                    },
                }
            ],
            "success_url": self.success_url,
            "cancel_url": self.cancel_url,
            "client_reference_id": str(user.id),
            "customer_email": user.email,
            "metadata": {"user_id": str(user.id), "pack": chosen.name, "credits": str(chosen.credits)},
        }
        session = call_with_recovery(
            self._create_session,
            (params,),
            {"idempotency_key": idempotency_key},
            service=SERVICE,
            operation="create_checkout_session",
            max_retries=self.max_retries,
            translate=translate_stripe_error,
        )
        return CheckoutSession(checkout_url=session["url"], session_id=session["id"])

    def construct_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The verified event of a webhook request; 400 on a bad signature or payload, 503 without a secret."""
        import stripe

        if not self.webhook_secret:
            raise not_configured("STRIPE_WEBHOOK_SECRET")
        try:
            event = stripe.Webhook.construct_event(payload, signature or "", self.webhook_secret)
        except stripe.SignatureVerificationError as exc:
            raise WebhookSignatureError("The Stripe-Signature header does not match the payload.") from exc
        except ValueError as exc:
            raise WebhookSignatureError(
                "The webhook payload is not valid JSON.", code="WEBHOOK_PAYLOAD_INVALID"
            ) from exc
        return event.to_dict() if hasattr(event, "to_dict") else dict(event)

    def status(self) -> dict[str, Any]:
        """Configured or not, and the breaker state (no network call)."""
        info: dict[str, Any] = {
            "service": SERVICE,
            "status": "configured" if self.configured else "not_configured",
            "configured": self.configured,
            "webhook_configured": bool(self.webhook_secret),
            "breaker": get_breaker(SERVICE).state.value,
            "packs": {p.name: {"credits": p.credits, "amount_cents": p.amount_cents} for p in self.packs.values()},
        }
        if not self.configured:
            info["reason"] = "STRIPE_API_KEY is not set"
        return info

    def _sdk(self) -> Any:
        if self._client is None:
            import stripe

            options: dict[str, Any] = {}
            if self.api_base:
                options["base_addresses"] = {"api": self.api_base}
            self._client = stripe.StripeClient(
                self.api_key,
                http_client=stripe.RequestsClient(timeout=self.timeout),
                max_network_retries=0,  # our layer retries, with our idempotency key
                **options,
            )
        return self._client

    def _create_session(self, params: dict[str, Any], *, idempotency_key: str) -> Any:
        return self._sdk().v1.checkout.sessions.create(params=params, options={"idempotency_key": idempotency_key})
