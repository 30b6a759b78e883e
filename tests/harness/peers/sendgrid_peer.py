"""A SendGrid-v3-wire-compatible local server: POST /v3/mail/send, recording every accepted message.

Use the real SDK against it::

    client = SendGridAPIClient(peer.api_key, host=peer.url)
    client.client.timeout = 2  # SPEC 10: no timeout by default
    client.send(mail)           # 202, X-Message-Id

`peer.messages` holds what was accepted; `peer.count(custom_arg=("outbox_id", "42"))` answers "sent exactly once?".
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sendgrid import SendGridAPIClient
from werkzeug.wrappers import Request, Response

from tests.harness.peers._net import LocalWSGIServer

DEFAULT_API_KEY = "SG.peer-test-key.0123456789abcdefghijklmnopqrstuvwxyz"
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def sendgrid_error_body(*messages: str | tuple[str, str | None]) -> dict[str, Any]:
    """SendGrid's error JSON: `{"errors": [{"message", "field", "help"}]}` from messages or (message, field)."""
    errors = []
    for item in messages:
        message, field_name = (item, None) if isinstance(item, str) else item
        errors.append({"message": message, "field": field_name, "help": None})
    return {"errors": errors}


@dataclass(frozen=True)
class SentMessage:
    """One accepted mail/send request."""

    message_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float

    @property
    def recipients(self) -> list[str]:
        """Every `to` address across the personalizations."""
        return [to["email"] for p in self.body.get("personalizations", []) for to in p.get("to", [])]

    @property
    def subject(self) -> str | None:
        """The top-level subject (or the first personalization's)."""
        personalizations = self.body.get("personalizations") or [{}]
        return self.body.get("subject") or personalizations[0].get("subject")

    @property
    def custom_args(self) -> dict[str, str]:
        """Top-level custom_args merged with the first personalization's (SendGrid merges them the same way)."""
        personalizations = self.body.get("personalizations") or [{}]
        return {**self.body.get("custom_args", {}), **personalizations[0].get("custom_args", {})}


@dataclass
class _Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class SendGridPeer:
    """POST /v3/mail/send on 127.0.0.1; start(), point the SDK's `host` at `.url`, stop()."""

    api_key: str = DEFAULT_API_KEY
    messages: list[SentMessage] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._server = LocalWSGIServer(self._wsgi, name="sendgrid-peer")

    @property
    def url(self) -> str:
        """Base URL for `SendGridAPIClient(api_key, host=url)`."""
        return self._server.url

    def start(self) -> SendGridPeer:
        """Serve on a free loopback port."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

    def reset(self) -> None:
        """Forget accepted and rejected messages and queued failures."""
        with self._lock:
            self.messages.clear()
            self.rejected.clear()
            self._failures.clear()

    def fail_next(
        self,
        status: int,
        message: str = "internal error",
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` sends with `status` and a SendGrid error body (nothing is recorded as sent)."""
        with self._lock:
            self._failures.extend([_Failure(status, sendgrid_error_body(message), dict(headers or {}))] * times)

    def count(self, *, custom_arg: tuple[str, str] | None = None, header: tuple[str, str] | None = None) -> int:
        """How many accepted messages carry this custom_arg or mail header (for "sent exactly once")."""
        return len(self.find(custom_arg=custom_arg, header=header))

    def find(
        self, *, custom_arg: tuple[str, str] | None = None, header: tuple[str, str] | None = None
    ) -> list[SentMessage]:
        """Accepted messages matching a custom_arg and/or a mail header (the `headers` field of the v3 JSON)."""
        with self._lock:
            found = list(self.messages)
        if custom_arg is not None:
            found = [m for m in found if m.custom_args.get(custom_arg[0]) == custom_arg[1]]
        if header is not None:
            found = [m for m in found if (m.body.get("headers") or {}).get(header[0]) == header[1]]
        return found

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        status, body, headers = self._handle(request)
        payload = json.dumps(body) if body is not None else ""
        response = Response(payload, status=status, headers=headers, mimetype="application/json")
        return response(environ, start_response)

    def _handle(self, request: Request) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        if request.path != "/v3/mail/send":
            return 404, sendgrid_error_body("not found"), {}
        if request.method != "POST":
            return 405, sendgrid_error_body("method not allowed"), {}
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if not key:
            return 401, sendgrid_error_body("authorization required"), {}
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return 401, sendgrid_error_body("The provided authorization grant is invalid, expired, or revoked"), {}
        with self._lock:
            if self._failures:
                failure = self._failures.pop(0)
                return failure.status, failure.body, failure.headers
        try:
            body = json.loads(request.get_data(as_text=True))
        except ValueError:
            return 400, sendgrid_error_body(("Bad Request", None)), {}
        errors = validate_mail(body) if isinstance(body, dict) else [("Bad Request", None)]
        if errors:
            with self._lock:
                self.rejected.append(body if isinstance(body, dict) else {"body": body})
            return 400, {"errors": [{"message": m, "field": f, "help": HELP} for m, f in errors]}, {}
        message_id = secrets.token_urlsafe(16)[:22]
        with self._lock:
            self.messages.append(SentMessage(message_id, body, dict(request.headers.items()), time.time()))
        return 202, None, {"X-Message-Id": message_id}


def _address_errors(value: Any, where: str) -> list[tuple[str, str | None]]:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        return [("The email address is required.", f"{where}.email")]
    if not _EMAIL.match(value["email"]):
        return [("Does not contain a valid address.", f"{where}.email")]
    return []


def _string_map_errors(value: Any, where: str, what: str) -> list[tuple[str, str | None]]:
    if value is None:
        return []
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return [(f"Invalid type. Expected: object of strings for {what}.", where)]
    return []


def validate_mail(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The v3 mail/send rules SendGrid enforces, as (message, field) pairs; empty when the body is valid."""
    errors: list[tuple[str, str | None]] = []
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        errors.append(
            (
                "The personalizations field is required and must have at least one personalization.",
                "personalizations",
            )
        )
        personalizations = []
    elif len(personalizations) > 1000:
        errors.append(("The personalizations field may not have more than 1000 items.", "personalizations"))
    for index, personalization in enumerate(personalizations):
        where = f"personalizations.{index}"
        recipients = personalization.get("to") if isinstance(personalization, dict) else None
        if not isinstance(recipients, list) or not recipients:
            errors.append(("The to array is required for all personalization objects, and must have at least one "
                           "email object with a valid email address.", f"{where}.to"))  # fmt: skip
            continue
        for kind in ("to", "cc", "bcc"):
            for n, address in enumerate(personalization.get(kind) or []):
                errors.extend(_address_errors(address, f"{where}.{kind}.{n}"))
        errors.extend(_string_map_errors(personalization.get("custom_args"), f"{where}.custom_args", "custom_args"))
        errors.extend(_string_map_errors(personalization.get("headers"), f"{where}.headers", "headers"))
    if "from" not in body:
        errors.append(("The from object must be provided for every email send. It is an object that requires an "
                       "email parameter, but may also contain a name parameter.", "from.email"))  # fmt: skip
    else:
        errors.extend(_address_errors(body["from"], "from"))
    if body.get("reply_to") is not None:
        errors.extend(_address_errors(body["reply_to"], "reply_to"))
    templated = bool(body.get("template_id"))
    every_subject = bool(personalizations) and all(isinstance(p, dict) and p.get("subject") for p in personalizations)
    if not templated and not every_subject and not (isinstance(body.get("subject"), str) and body["subject"]):
        errors.append(("The subject is required. You can get around this requirement if you use a template with a "
                       "subject defined or if every personalization has a subject defined.", "subject"))  # fmt: skip
    content = body.get("content")
    if not templated and (not isinstance(content, list) or not content):
        errors.append(("Unless a valid template_id is provided, the content parameter is required. There must be at "
                       "least one defined content block. We typically suggest both text/plain and text/html blocks "
                       "are included, but only one block is required.", "content"))  # fmt: skip
    for index, block in enumerate(content if isinstance(content, list) else []):
        if not isinstance(block, dict) or not block.get("type"):
            errors.append(("The content type is required.", f"content.{index}.type"))
        elif not isinstance(block.get("value"), str) or not block["value"]:
            errors.append(("The content value must be a string at least one character in length.",
                           f"content.{index}.value"))  # fmt: skip
        elif block["type"] == "text/plain" and index != 0:
            errors.append(("If present, text/plain content must be first, followed by any other content.",
                           f"content.{index}.type"))  # fmt: skip
    errors.extend(_string_map_errors(body.get("custom_args"), "custom_args", "custom_args"))
    errors.extend(_string_map_errors(body.get("headers"), "headers", "headers"))
    return errors


def sdk_client(base_url: str, api_key: str = DEFAULT_API_KEY, *, timeout: float = 2.0) -> SendGridAPIClient:
    """The real sendgrid SDK pointed at a local peer, with the timeout it lacks by default (SPEC section 10)."""
    client = SendGridAPIClient(api_key, host=base_url)
    client.client.timeout = timeout
    return client
