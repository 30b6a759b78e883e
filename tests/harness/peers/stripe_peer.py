"""A Stripe-wire-compatible local server for Checkout Sessions (what localstripe lacks), and Stripe webhook signing.

Paid sessions carry a `payment_intent` and get a Charge; the peer builds the later events of a sale with
Stripe's shapes (`async_succeeded_event`, `async_failed_event`, `expired_event`, `refunded_event` with the
cumulative `amount_refunded`, `dispute_event` with a Dispute naming the charge and its payment intent).

It speaks the real API's dialect: form-encoded bodies with bracketed keys, Bearer secret keys, `Idempotency-Key`
replays (`Idempotent-Replayed: true`) and `idempotency_error` on a reused key with other parameters, Stripe's error
JSON, and a `Request-Id` on every response. The real `stripe` SDK works against it unchanged::

    client = stripe.StripeClient(peer.api_key, base_addresses={"api": peer.url},
                                 http_client=stripe.RequestsClient(timeout=2), max_network_retries=0)
    session = client.v1.checkout.sessions.create(params={...}, options={"idempotency_key": "order-1"})
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import stripe
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from tests.harness.peers._net import LocalWSGIServer

DEFAULT_API_KEY = "sk_test_peer_0123456789abcdefghij"
DEFAULT_WEBHOOK_SECRET = "whsec_peer_0123456789abcdefghijklmnop"
# The API version stripe 16 pins; events carry it like real ones do.
API_VERSION = "2026-10-28.endive"
SESSION_KEYS = frozenset(
    {
        "allow_promotion_codes", "billing_address_collection", "cancel_url", "client_reference_id", "currency",
        "customer", "customer_creation", "customer_email", "expand", "expires_at", "line_items", "locale",
        "metadata", "mode", "payment_intent_data", "payment_method_types", "submit_type", "success_url", "ui_mode",
    }
)  # fmt: skip


def _id(prefix: str, length: int = 24) -> str:
    return prefix + secrets.token_hex(length)[:length]


class StripeAPIError(Exception):
    """An error the peer answers with, in Stripe's JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        self.error: dict[str, Any] = {"type": type, "message": message}
        if code:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            self.error["param"] = param
        if decline_code:
            self.error["decline_code"] = decline_code


def stripe_error_body(
    message: str,
    *,
    type: str = "api_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """A Stripe error JSON body, e.g. for `FaultProxy.status(402, body=stripe_error_body(...))`."""
    return {"error": StripeAPIError(0, message, type=type, code=code, param=param).error}


def decode_form(form: MultiDict[str, str]) -> dict[str, Any]:
    """Turn Stripe's bracketed form keys (`line_items[0][price_data][currency]`) into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in form.items(multi=True):
        names = [key.split("[", 1)[0], *re.findall(r"\[([^\]]*)\]", key)]
        node = root
        for name in names[:-1]:
            node = node.setdefault(name or str(len(node)), {})  # "a[]" appends, like "a[<next index>]"
        node[names[-1] or str(len(node))] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    """Dicts whose keys are all 0..n-1 become lists (how Stripe reads `items[0]`, `items[1]`)."""
    if not isinstance(node, dict):
        return node
    converted = {key: _lists(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


@dataclass
class RecordedRequest:
    """A request the peer received (after auth), for assertions."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    request_id: str


@dataclass
class _Stored:
    fingerprint: str
    status: int
    body: dict[str, Any]
    request_id: str


@dataclass
class StripePeer:
    """Checkout Sessions over HTTP on 127.0.0.1; start(), point the SDK at `.url`, stop()."""

    api_key: str = DEFAULT_API_KEY
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)  # by charge id, made when a session is paid
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._idempotency: dict[tuple[str, str], _Stored] = {}
        self._failures: list[StripeAPIError] = []
        self._server = LocalWSGIServer(self._wsgi, name="stripe-peer")

    # -- lifecycle and test controls -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for `base_addresses={"api": url}` or `stripe.api_base`."""
        return self._server.url

    def start(self) -> StripePeer:
        """Serve on a free loopback port."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

    def reset(self) -> None:
        """Forget sessions, prices, idempotency keys, recorded requests and queued failures."""
        with self._lock:
            self.sessions.clear()
            self.prices.clear()
            self.charges.clear()
            self.disputes.clear()
            self.requests.clear()
            self._idempotency.clear()
            self._failures.clear()

    def add_price(self, price_id: str, *, unit_amount: int, currency: str = "usd", product: str = "Product") -> None:
        """Register a Price that `line_items[n][price]` may reference."""
        self.prices[price_id] = {
            "id": price_id, "object": "price", "active": True, "currency": currency, "unit_amount": unit_amount,
            "product": _id("prod_", 14), "nickname": product, "type": "one_time", "livemode": False,
        }  # fmt: skip

    def fail_next(
        self,
        status: int,
        message: str = "An error occurred with our connection to Stripe.",
        *,
        type: str = "api_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` API requests with this Stripe error (nothing is created or stored)."""
        error = StripeAPIError(
            status, message, type=type, code=code, param=param, decline_code=decline_code, headers=headers
        )
        with self._lock:
            self._failures.extend([error] * times)

    def creates(self) -> list[RecordedRequest]:
        """The POST /v1/checkout/sessions requests received (replays included)."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/checkout/sessions"]

    def complete_session(self, session_id: str, *, delayed: bool = False) -> dict[str, Any]:
        """Finish checkout: paid (with a payment intent and its charge), or `delayed` (a bank debit still unpaid)."""
        with self._lock:
            session = self.sessions[session_id]
            session.update(status="complete", payment_intent=session.get("payment_intent") or _id("pi_"), url=None)
            if delayed:
                session["payment_status"] = "unpaid"  # Stripe says later: async_payment_succeeded or _failed
            else:
                self._pay(session)
            return dict(session)

    def completed_event(self, session_id: str, *, delayed: bool = False) -> dict[str, Any]:
        """Complete the session and return its `checkout.session.completed` event."""
        return build_event("checkout.session.completed", self.complete_session(session_id, delayed=delayed))

    def async_succeeded_event(self, session_id: str) -> dict[str, Any]:
        """The delayed payment of a completed session arrived: `checkout.session.async_payment_succeeded`."""
        with self._lock:
            session = self.sessions[session_id]
            self._pay(session)
            return build_event("checkout.session.async_payment_succeeded", session)

    def async_failed_event(self, session_id: str) -> dict[str, Any]:
        """The delayed payment of a completed session failed: `checkout.session.async_payment_failed`."""
        with self._lock:
            session = self.sessions[session_id]
            session.update(payment_status="unpaid")
            return build_event("checkout.session.async_payment_failed", session)

    def expired_event(self, session_id: str) -> dict[str, Any]:
        """The customer never paid and the session expired: `checkout.session.expired`."""
        with self._lock:
            session = self.sessions[session_id]
            session.update(status="expired", url=None)
            return build_event("checkout.session.expired", session)

    def charge_of(self, session_id: str) -> dict[str, Any]:
        """The Charge of a paid session (as `GET /v1/charges/<id>` shows it)."""
        intent = self.sessions[session_id]["payment_intent"]
        return next(dict(c) for c in self.charges.values() if c["payment_intent"] == intent)

    def refunded_event(self, session_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund `amount` cents (default: what is left) of a paid session's charge: `charge.refunded`.

        Like Stripe, the event's Charge carries the cumulative `amount_refunded` and `refunded` once it is all back.
        """
        with self._lock:
            charge = self._charge(session_id)
            left = charge["amount"] - charge["amount_refunded"]
            amount = left if amount is None else amount
            if not 0 < amount <= left:
                raise ValueError(f"refund of {amount} is not between 1 and the {left} left on {charge['id']}")
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount"]
            return build_event("charge.refunded", charge)

    def dispute_event(self, session_id: str, *, reason: str = "fraudulent") -> dict[str, Any]:
        """The cardholder disputes a paid session's charge: `charge.dispute.created` (a Dispute object)."""
        with self._lock:
            charge = self._charge(session_id)
            charge["disputed"] = True
            dispute = {
                "id": _id("dp_"), "object": "dispute", "amount": charge["amount"] - charge["amount_refunded"],
                "balance_transactions": [], "charge": charge["id"], "created": int(time.time()),
                "currency": charge["currency"], "evidence_details": {"due_by": int(time.time()) + 7 * 86400,
                "has_evidence": False, "past_due": False, "submission_count": 0}, "is_charge_refundable": False,
                "livemode": False, "metadata": {}, "payment_intent": charge["payment_intent"], "reason": reason,
                "status": "needs_response",
            }  # fmt: skip
            self.disputes[dispute["id"]] = dispute
            return build_event("charge.dispute.created", dispute)

    def _pay(self, session: dict[str, Any]) -> None:
        """Mark a session paid and create its succeeded Charge (called with the lock held)."""
        session.update(status="complete", payment_status="paid", url=None)
        session["payment_intent"] = session.get("payment_intent") or _id("pi_")
        if any(c["payment_intent"] == session["payment_intent"] for c in self.charges.values()):
            return
        charge_id = _id("ch_")
        self.charges[charge_id] = {
            "id": charge_id, "object": "charge", "amount": session["amount_total"],
            "amount_captured": session["amount_total"], "amount_refunded": 0, "captured": True,
            "created": int(time.time()), "currency": session["currency"], "customer": session.get("customer"),
            "disputed": False, "livemode": False, "metadata": {}, "paid": True,
            "payment_intent": session["payment_intent"], "receipt_email": session.get("customer_email"),
            "refunded": False, "status": "succeeded",
        }  # fmt: skip

    def _charge(self, session_id: str) -> dict[str, Any]:
        intent = self.sessions[session_id].get("payment_intent")
        for charge in self.charges.values():
            if charge["payment_intent"] == intent:
                return charge
        raise ValueError(f"session {session_id} was never paid: it has no charge")

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        request_id = _id("req_", 14)
        try:
            status, body, extra = self._handle(request, request_id)
        except StripeAPIError as exc:
            status, body, extra = exc.status, {"error": {**exc.error, "request_log_url": None}}, exc.headers
        headers = {"Request-Id": request_id, "Stripe-Version": request.headers.get("Stripe-Version", API_VERSION)}
        headers.update(extra)
        response = Response(json.dumps(body, indent=2), status=status, headers=headers, mimetype="application/json")
        return response(environ, start_response)

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            raise StripeAPIError(
                401, "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
            )  # fmt: skip
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.encode(), self.api_key.encode()):
            shown = f"{key[:8]}{'*' * max(len(key) - 12, 0)}{key[-4:]}" if len(key) > 12 else "***"
            raise StripeAPIError(401, f"Invalid API Key provided: {shown}", code="api_key_invalid")

    def _handle(self, request: Request, request_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        self._authenticate(request)
        params = decode_form(request.form) if request.method == "POST" else decode_form(request.args)
        idempotency_key = request.headers.get("Idempotency-Key")
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.path, params, idempotency_key, request_id))
            if self._failures:
                raise self._failures.pop(0)
            if request.method == "POST" and idempotency_key:
                return self._idempotent(request, params, idempotency_key, request_id)
            return (*self._route(request, params), {})

    def _idempotent(
        self, request: Request, params: dict[str, Any], key: str, request_id: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        fingerprint = hashlib.sha256(f"{request.path}\n{json.dumps(params, sort_keys=True)}".encode()).hexdigest()
        stored = self._idempotency.get((self.api_key, key))
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise StripeAPIError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they were first used "
                    f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                    type="idempotency_error",
                )
            return stored.status, stored.body, {"Idempotent-Replayed": "true", "Original-Request": stored.request_id}
        # Like Stripe, only requests that started executing are saved: a validation error raises before this.
        status, body = self._route(request, params)
        self._idempotency[(self.api_key, key)] = _Stored(fingerprint, status, body, request_id)
        return status, body, {}

    def _route(self, request: Request, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = request.path.rstrip("/")
        if path == "/v1/checkout/sessions" and request.method == "POST":
            return 200, self._create_session(params)
        charge = re.fullmatch(r"/v1/charges/([^/]+)", path)
        if charge and request.method == "GET":
            if charge.group(1) in self.charges:
                return 200, self.charges[charge.group(1)]
            raise StripeAPIError(404, f"No such charge: '{charge.group(1)}'", code="resource_missing", param="id")
        match = re.fullmatch(r"/v1/checkout/sessions/([^/]+)(/expire)?", path)
        if match and match.group(1) in self.sessions:
            session = self.sessions[match.group(1)]
            if match.group(2) and request.method == "POST":
                session.update(status="expired", url=None)
                return 200, session
            if not match.group(2) and request.method == "GET":
                return 200, session
        if match:
            raise StripeAPIError(
                404, f"No such checkout.session: '{match.group(1)}'", code="resource_missing", param="session"
            )
        raise StripeAPIError(404, f"Unrecognized request URL ({request.method}: {request.path}).")

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - SESSION_KEYS)
        if unknown:
            raise StripeAPIError(
                400, f"Received unknown parameter: {unknown[0]}", code="parameter_unknown", param=unknown[0]
            )
        mode = params.get("mode")
        if mode is None:
            raise StripeAPIError(400, "Missing required param: mode.", code="parameter_missing", param="mode")
        if mode not in {"payment", "setup", "subscription"}:
            raise StripeAPIError(400, "Invalid mode: must be one of payment, setup, or subscription", param="mode")
        if params.get("ui_mode", "hosted") == "hosted" and not params.get("success_url"):
            raise StripeAPIError(
                400, "Missing required param: success_url.", code="parameter_missing", param="success_url"
            )
        items = params.get("line_items")
        if mode == "payment" and not items:
            raise StripeAPIError(
                400, "Missing required param: line_items.", code="parameter_missing", param="line_items"
            )
        if not isinstance(items, list):
            raise StripeAPIError(400, "Invalid array", param="line_items")
        amount, currency = 0, None
        for index, item in enumerate(items):
            unit_amount, item_currency = self._line_item(index, item)
            currency = currency or item_currency
            if item_currency != currency:
                where = f"line_items[{index}][price_data][currency]"
                raise StripeAPIError(400, "All line items must use the same currency.", param=where)
            amount += unit_amount * int(item.get("quantity", 1))
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise StripeAPIError(400, "Invalid object", param="metadata")
        session_id = _id("cs_test_", 58)
        session = {
            "id": session_id, "object": "checkout.session", "amount_subtotal": amount, "amount_total": amount,
            "cancel_url": params.get("cancel_url"), "client_reference_id": params.get("client_reference_id"),
            "created": int(time.time()), "currency": currency, "customer": params.get("customer"),
            "customer_email": params.get("customer_email"), "expires_at": int(time.time()) + 86400,
            "livemode": False, "metadata": metadata, "mode": mode, "payment_intent": None,
            "payment_method_types": params.get("payment_method_types") or ["card"], "payment_status": "unpaid",
            "status": "open", "success_url": params.get("success_url"), "ui_mode": params.get("ui_mode", "hosted"),
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }  # fmt: skip
        self.sessions[session_id] = session
        return session

    def _line_item(self, index: int, item: Any) -> tuple[int, str]:
        where = f"line_items[{index}]"
        if not isinstance(item, dict):
            raise StripeAPIError(400, "Invalid object", param=where)
        quantity = item.get("quantity")
        if quantity is None or not str(quantity).isdigit() or int(quantity) < 1:
            raise StripeAPIError(
                400, "Quantity is required. Add `quantity` to `line_items[0]`".replace("0", str(index)),
                code="parameter_missing", param=f"{where}[quantity]",
            )  # fmt: skip
        if "price" in item:
            price = self.prices.get(item["price"])
            if price is None:
                raise StripeAPIError(
                    400, f"No such price: '{item['price']}'", code="resource_missing", param=f"{where}[price]"
                )
            return int(price["unit_amount"]), price["currency"]
        data = item.get("price_data")
        if not isinstance(data, dict):
            raise StripeAPIError(400, "You must specify either `price` or `price_data` in each line item.", param=where)
        for required in ("currency", "unit_amount"):
            if required not in data:
                raise StripeAPIError(
                    400, f"Missing required param: {where}[price_data][{required}].", code="parameter_missing",
                    param=f"{where}[price_data][{required}]",
                )  # fmt: skip
        if not str(data["unit_amount"]).isdigit():
            raise StripeAPIError(
                400, "Invalid integer: " + str(data["unit_amount"]), param=f"{where}[price_data][unit_amount]"
            )
        if "product" not in data and not (data.get("product_data") or {}).get("name"):
            raise StripeAPIError(
                400, "Missing required param: product_data[name].", code="parameter_missing",
                param=f"{where}[price_data][product_data][name]",
            )  # fmt: skip
        return int(data["unit_amount"]), str(data["currency"]).lower()


def sdk_client(base_url: str, api_key: str = DEFAULT_API_KEY, *, timeout: float = 2.0) -> stripe.StripeClient:
    """The real stripe SDK pointed at a local peer: explicit timeout, no SDK retries (SPEC section 10)."""
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base_url},
        http_client=stripe.RequestsClient(timeout=timeout),
        max_network_retries=0,
    )


# -- webhooks ---------------------------------------------------------------------------------------------------


def build_event(event_type: str, obj: Mapping[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """A Stripe Event envelope around `obj`, shaped like the ones Stripe delivers."""
    return {
        "id": event_id or _id("evt_", 24), "object": "event", "api_version": API_VERSION, "created": int(time.time()),
        "data": {"object": dict(obj)}, "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None}, "type": event_type,
    }  # fmt: skip


def sign_payload(payload: str, secret: str, *, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value for `payload`: `t=<ts>,v1=HMAC-SHA256(secret, "<ts>.<payload>")`."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def signed_webhook(
    event: Mapping[str, Any], secret: str = DEFAULT_WEBHOOK_SECRET, *, timestamp: int | None = None
) -> tuple[str, dict[str, str]]:
    """The exact payload text and headers Stripe would POST for `event`."""
    payload = json.dumps(event, indent=2)  # Stripe pretty-prints; the signature covers these exact bytes
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": sign_payload(payload, secret, timestamp=timestamp),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    return payload, headers


def deliver_webhook(
    target: Any,
    event: Mapping[str, Any],
    secret: str = DEFAULT_WEBHOOK_SECRET,
    *,
    path: str = "/api/payments/webhook",
    timestamp: int | None = None,
    timeout: float = 5.0,
) -> Any:
    """POST a signed event to `target`: a base URL (via requests) or a Flask test client; returns the response."""
    payload, headers = signed_webhook(event, secret, timestamp=timestamp)
    if isinstance(target, str):
        return requests.post(target.rstrip("/") + path, data=payload.encode(), headers=headers, timeout=timeout)
    return target.post(path, data=payload, headers=headers)
