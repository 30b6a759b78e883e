"""Email through SendGrid with a durable outbox: written first, sent, marked sent; re-sent after outages.

`send()` inserts the message in `email_outbox` (unique `dedup_key`) and commits before talking to
SendGrid, then sends it through the `email` breaker and our retry layer with `client.timeout`
set (SendGrid has no timeout by default: a hung server blocks forever, SPEC section 10). If SendGrid
fails, the fallback logs the email (the seed's behaviour) and leaves it queued; `resend_outbox()`
sends the queued ones once SendGrid answers again. Rows are claimed with a lease (`sending`), so
two workers never send the same row, and a worker that dies mid-send releases it when the lease ends.

Exactly once: one row per `dedup_key`, sent only from a claimed row and marked sent in the same
breath. The key travels to SendGrid as the custom arg `dedup_key` and the header `X-Oriel-Dedup-Key`,
so duplicates are provable at the provider. The one case no client can close is a message SendGrid
accepted whose answer was lost (a timeout or a connection lost after the request went out: the
classifier's `ambiguous`). Such a send is never retried inline (`retry_ambiguous=False`): the row
stays queued for the outbox's later resend, with the same dedup key, and counts one more
`possible_duplicates` (logged, in `status()`, health and `/metrics`). Failures that prove nothing
was sent (a refused connection, a 5xx, a 429) are retried inline as before.

A permanent failure is not an outage: credentials refused (401/403, SERVICE_MISCONFIGURED) or the
message refused (400, e.g. a bad address: UPSTREAM_REJECTED with SendGrid's own words) keeps the
email `failed` at once, with its real error and history, logged at ERROR: the failed-work inbox,
where an admin resends it (back to `queued`) once the cause is fixed. A message that used up
EMAIL_MAX_ATTEMPTS ends `failed` too. Nothing ages out unseen. A breaker rejection spends no attempt:
nothing reached SendGrid.

Not configured (no SENDGRID_API_KEY): `send()` keeps the email queued with the reason "email not
configured", logs it, and reports status "queued" (never "sent").
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ...log.redaction import redact
from ..errors import APIError, EmailError, UpstreamRejectedError
from ..extensions import db
from ..models.outbox import DISCARDED, FAILED, QUEUED, SENDING, SENT, EmailOutbox
from ..resilience.classifier import classify
from ..resilience.recovery import CircuitOpenError, call_with_recovery, get_breaker
from ..timeutil import utcnow
from . import email_templates as templates
from .replay import Failure

logger = logging.getLogger(__name__)

SERVICE = "email"
DEDUP_HEADER = "X-Oriel-Dedup-Key"
NOT_CONFIGURED = "email not configured (SENDGRID_API_KEY is not set)"


@dataclass(frozen=True)
class EmailResult:
    """What happened to one email: "sent"; "queued" in the outbox (`degraded` when SendGrid failed); "failed".

    "failed": refused for good or out of attempts, it waits in the failed-work inbox (`reason` is the code).
    """

    status: str
    degraded: bool
    outbox_id: int
    reason: str | None = None


def translate_email_error(exc: BaseException) -> BaseException:
    """Our error for a failed SendGrid call (the adapter's one translation table).

    Credentials refused never reach here (`with_error_recovery` makes them SERVICE_MISCONFIGURED); any
    other refusal (400: the message itself, e.g. a bad address) is UPSTREAM_REJECTED with SendGrid's own
    words; the rest is an outage, EMAIL_UNAVAILABLE. A programming error (a builtin that is no OSError)
    is not SendGrid's answer: it is returned as itself, so it propagates unchanged.
    """
    if type(exc).__module__ == "builtins" and not isinstance(exc, OSError):
        return exc
    verdict = classify(exc)
    if not verdict.retryable:
        return UpstreamRejectedError(
            redact(f"SendGrid refused this email: {sendgrid_said(exc)}"),
            details={"service": SERVICE, "status": verdict.status},
        )
    return EmailError(
        "The email service is unavailable right now; the email is queued.",
        details={"service": SERVICE, "reason": verdict.kind.value},
        recoverable=True,
        retry_after=math.ceil(verdict.retry_after) if verdict.retry_after is not None else None,
    )


def sendgrid_said(exc: BaseException | None) -> str | None:
    """SendGrid's own words about a failed send: its status and the messages of its error body, else the error."""
    if exc is None:
        return None
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):  # python_http_client.exceptions.HTTPError
        messages = _error_messages(getattr(exc, "body", None))
        return f"HTTP {status}: {messages}" if messages else f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_messages(body: Any) -> str | None:
    """The messages of a SendGrid error body (`{"errors": [{"message", "field"}]}`), joined; None if it has none."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body.strip():
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200]  # not JSON (a proxy's page?): its start is still what the peer said
    if not isinstance(data, dict):
        return None
    errors = data.get("errors")
    if not isinstance(errors, list):
        errors = [data["error"]] if isinstance(data.get("error"), dict) else []
    parts = [
        str(item["message"]) + (f" ({item['field']})" if item.get("field") else "")
        for item in errors[:5]
        if isinstance(item, dict) and item.get("message")
    ]
    return "; ".join(parts) or None


class EmailService:
    """Send emails through SendGrid and the outbox; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str | None,
        host: str | None = None,
        timeout: float = 10.0,
        from_email: str = "no-reply@oriel.local",
        max_retries: int = 2,
        max_attempts: int = 10,
        lease_seconds: float = 300.0,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.timeout = timeout
        self.from_email = from_email
        self.max_retries = max_retries
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        self._client: Any = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EmailService:
        """Build from app config (the SDK client is built on the first send)."""
        return cls(
            api_key=config.get("SENDGRID_API_KEY") or None,
            host=config.get("SENDGRID_API_HOST") or None,
            timeout=float(config.get("SENDGRID_TIMEOUT", 5.0)),
            from_email=config.get("EMAIL_FROM") or "no-reply@oriel.local",
            max_retries=int(config.get("SENDGRID_MAX_RETRIES", 2)),
            max_attempts=int(config.get("EMAIL_MAX_ATTEMPTS", 10)),
            lease_seconds=float(config.get("EMAIL_LEASE_SECONDS", 300.0)),
        )

    @property
    def configured(self) -> bool:
        """Whether SendGrid is configured."""
        return bool(self.api_key)

    # -- public API -------------------------------------------------------------------------------------------

    def send(self, to: str, subject: str, text: str, *, dedup_key: str, html: str | None = None) -> EmailResult:
        """Queue the email durably, then send it; "queued" (kept for `resend_outbox`) when SendGrid fails.

        Commits the session (the outbox row must be durable before anything is sent).
        """
        row = EmailOutbox(
            dedup_key=dedup_key[:255],
            to_address=to,
            subject=subject[:500],
            text_body=text,
            html_body=html,
            status=SENDING if self.configured else QUEUED,
            lease_expires_at=utcnow() + self.lease if self.configured else None,
            last_error=None if self.configured else NOT_CONFIGURED,
        )
        db.session.add(row)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            return self._existing(dedup_key)
        if not self.configured:
            logger.warning("Email %s to %s kept in the outbox: %s", dedup_key, to, NOT_CONFIGURED)
            return EmailResult(QUEUED, False, row.id, "not_configured")
        return self._deliver(row.id)

    def resend_outbox(self, limit: int = 100) -> int:
        """Send up to `limit` queued emails (claiming each); the number sent. Stops at the first outage."""
        if not self.configured:
            return 0
        ids = db.session.scalars(
            select(EmailOutbox.id)
            .where(
                or_(
                    EmailOutbox.status == QUEUED,
                    (EmailOutbox.status == SENDING) & (EmailOutbox.lease_expires_at < utcnow()),
                )
            )
            .order_by(EmailOutbox.id)
            .limit(limit)
        ).all()
        sent = 0
        for outbox_id in ids:
            if not self._claim(outbox_id):
                continue  # another worker has it
            result = self._deliver(outbox_id, fallback=False)
            if result.status == SENT:
                sent += 1
            elif result.status == QUEUED:
                break  # SendGrid is down, busy or its breaker open: the rest would fail the same way
            # FAILED: this message was refused for good (the inbox has it); the others go on.
        if sent:
            logger.info("Outbox: sent %s queued email(s)", sent)
        return sent

    def outbox_count(self) -> int:
        """Emails waiting in the outbox (queued or being sent)."""
        return int(db.session.scalar(select(func.count()).where(EmailOutbox.status.in_((QUEUED, SENDING)))) or 0)

    def failed_count(self) -> int:
        """Emails refused for good or out of attempts: they wait in the failed-work inbox."""
        return int(db.session.scalar(select(func.count()).where(EmailOutbox.status == FAILED)) or 0)

    def possible_duplicates(self) -> int:
        """Sends whose outcome was unknown (SendGrid may have delivered them before the resend), over all emails."""
        return int(db.session.scalar(select(func.coalesce(func.sum(EmailOutbox.possible_duplicates), 0))) or 0)

    def status(self) -> dict[str, Any]:
        """Configured or not, breaker state, outbox size, failed emails and possible duplicates (no network call)."""
        info: dict[str, Any] = {
            "service": SERVICE,
            "status": "configured" if self.configured else "not_configured",
            "configured": self.configured,
            "breaker": get_breaker(SERVICE).state.value,
            "outbox": self.outbox_count(),
            "failed": self.failed_count(),
            "possible_duplicates": self.possible_duplicates(),
        }
        if not self.configured:
            info["reason"] = NOT_CONFIGURED
        return info

    def send_render_finished(self, to: str, *, render_id: int | str, download_url: str) -> EmailResult:
        """Tell the user their video is ready, with its download link."""
        message = templates.render_finished(render_id=render_id, download_url=download_url)
        return self.send(to, message.subject, message.text, html=message.html, dedup_key=f"render-finished:{render_id}")

    def send_render_failed(self, to: str, *, render_id: int | str, reason: str, what_to_do: str) -> EmailResult:
        """Tell the user their render failed, why, and what to do."""
        message = templates.render_failed(render_id=render_id, reason=reason, what_to_do=what_to_do)
        return self.send(to, message.subject, message.text, html=message.html, dedup_key=f"render-failed:{render_id}")

    def send_payment_receipt(
        self, to: str, *, session_id: str, pack: str, credits: int, amount_cents: int, currency: str
    ) -> EmailResult:
        """Send the receipt for a paid credit pack (once per Checkout Session)."""
        message = templates.payment_receipt(pack=pack, credits=credits, amount_cents=amount_cents, currency=currency)
        return self.send(to, message.subject, message.text, html=message.html, dedup_key=f"receipt:{session_id}")

    # -- delivery ---------------------------------------------------------------------------------------------

    def _existing(self, dedup_key: str) -> EmailResult:
        row = db.session.scalar(select(EmailOutbox).where(EmailOutbox.dedup_key == dedup_key[:255]))
        assert row is not None  # the unique key just said it exists
        logger.info("Email %s already in the outbox (%s): not sent again", dedup_key, row.status)
        if row.status in (SENT, FAILED, DISCARDED):  # a failed one is resent from the inbox, never by a repeat
            return EmailResult(row.status, False, row.id, "duplicate")
        return EmailResult(QUEUED, False, row.id, "duplicate")

    def _claim(self, outbox_id: int) -> bool:
        now = utcnow()
        claimed = db.session.execute(
            update(EmailOutbox)
            .where(
                EmailOutbox.id == outbox_id,
                or_(
                    EmailOutbox.status == QUEUED, (EmailOutbox.status == SENDING) & (EmailOutbox.lease_expires_at < now)
                ),
            )
            .values(status=SENDING, lease_expires_at=now + self.lease)
        ).rowcount
        db.session.commit()
        return claimed == 1

    def _deliver(self, outbox_id: int, *, fallback: bool = True) -> EmailResult:
        """Send a claimed row; on failure it goes back to queued, or ends failed (refused for good, out of attempts)."""
        row = db.session.get(EmailOutbox, outbox_id)
        assert row is not None
        try:
            body = self._message(row)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:  # the SDK's helper refuses the row's data
            return self._record_failure(outbox_id, _unbuildable(row.to_address, exc))
        try:
            message_id = call_with_recovery(
                self._post,
                (row.id, row.dedup_key, row.to_address, row.subject, body),
                {},
                service=SERVICE,
                operation="send",
                max_retries=self.max_retries,
                # A refused connection, a 5xx or a 429 prove nothing was sent: those are retried at once...
                idempotent=True,
                # ...but a lost reply may hide an accepted email: the outbox resends it later, visibly.
                retry_ambiguous=False,
                fallback=self._keep_queued if fallback else None,
                translate=translate_email_error,
            )
        except APIError as exc:
            return self._record_failure(outbox_id, Failure.of(exc, sendgrid_said(exc.__cause__)))
        except Exception as exc:
            # A bug, not SendGrid's answer: the row goes to the inbox with it (it must not block the outbox),
            # then the bug propagates with its traceback like any other.
            self._record_failure(
                outbox_id, Failure("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}", classify(exc), exc)
            )
            raise
        if isinstance(message_id, EmailResult):  # the fallback answered
            return message_id
        db.session.execute(
            update(EmailOutbox)
            .where(EmailOutbox.id == outbox_id)
            .values(
                status=SENT,
                sent_at=utcnow(),
                lease_expires_at=None,
                attempts=EmailOutbox.attempts + 1,
                provider_message_id=message_id,
                last_error=None,
                failed_at=None,
            )
        )
        db.session.commit()
        logger.info("Email %s sent to SendGrid (message id %s)", row.dedup_key, message_id)
        return EmailResult(SENT, False, outbox_id)

    def _keep_queued(
        self, exc: BaseException, outbox_id: int, dedup_key: str, to: str, subject: str, *_: Any
    ) -> EmailResult:
        """The fallback (outages only): log the email (the seed's behaviour) and keep it for `resend_outbox`."""
        translated = exc if isinstance(exc, APIError) else translate_email_error(exc)
        error = translated if isinstance(translated, APIError) else EmailError(f"{type(exc).__name__}: {exc}")
        if error is not exc:
            error.__cause__ = exc
        failure = Failure.of(error, None if error is exc else sendgrid_said(exc))
        logger.warning(
            "Email %s to %s (%r) not sent: %s (%s); kept in the outbox",
            dedup_key,
            to,
            subject,
            type(exc).__name__,
            failure.verdict.reason,
        )
        result = self._record_failure(outbox_id, failure)
        return EmailResult(result.status, True, outbox_id, result.reason)

    def _record_failure(self, outbox_id: int, failure: Failure) -> EmailResult:
        """Write one failed send into the row: its history, a possible duplicate, and queued again or failed."""
        db.session.rollback()  # whatever the failed call left in the session is not ours to commit
        row = db.session.get(EmailOutbox, outbox_id)
        assert row is not None
        now, dedup_key, to = utcnow(), row.dedup_key, row.to_address
        row.lease_expires_at = None
        if isinstance(failure.exc, CircuitOpenError):
            # Refused by our own breaker: nothing reached SendGrid, so no attempt is spent and nothing happened.
            row.status = QUEUED
            row.last_error = row.last_error or failure.last_error
            db.session.commit()
            return EmailResult(QUEUED, False, outbox_id, failure.verdict.kind.value)
        row.attempts += 1
        row.errors = failure.appended_to(row.errors, row.attempts, now)
        row.last_error = failure.last_error
        if failure.verdict.ambiguous:
            row.possible_duplicates = (row.possible_duplicates or 0) + 1
        if failure.permanent or row.attempts >= self.max_attempts:
            row.status, row.failed_at = FAILED, now
        else:
            row.status = QUEUED
        status, attempts, duplicates = row.status, row.attempts, row.possible_duplicates
        db.session.commit()
        if failure.verdict.ambiguous:
            logger.warning(
                "Email %s: the reply from SendGrid was lost after the request went out (%s); SendGrid may have "
                "accepted it. Not retried now: left queued for the outbox's resend with the same dedup key, "
                "a possible duplicate (%s so far for this email)",
                dedup_key,
                failure.verdict.reason,
                duplicates,
                extra={"error_code": failure.code, "dedup_key": dedup_key},
            )
        if status == FAILED:
            why = "refused for good" if failure.permanent else f"gave up after {attempts} attempts"
            logger.error(
                "Email %s to %s failed (%s): %s; kept as failed in the failed-work inbox",
                dedup_key,
                to,
                why,
                failure.last_error,
                extra={"error_code": failure.code},
            )
            return EmailResult(FAILED, False, outbox_id, failure.code)
        return EmailResult(QUEUED, False, outbox_id, failure.verdict.kind.value)

    def _sdk(self) -> Any:
        if self._client is None:
            from sendgrid import SendGridAPIClient  # the SDK only when email is used

            client = SendGridAPIClient(self.api_key, **({"host": self.host} if self.host else {}))
            client.client.timeout = self.timeout  # no timeout by default: a hung server blocks forever
            self._client = client
        return self._client

    def _message(self, row: EmailOutbox) -> dict[str, Any]:
        """The v3 JSON of one outbox row, the dedup key in it twice (custom arg and header)."""
        from sendgrid.helpers.mail import CustomArg, Header, Mail

        mail = Mail(
            from_email=self.from_email, to_emails=row.to_address, subject=row.subject, plain_text_content=row.text_body
        )
        if row.html_body:
            mail.add_content(row.html_body, "text/html")
        mail.custom_arg = CustomArg("dedup_key", row.dedup_key)
        mail.custom_arg = CustomArg("outbox_id", str(row.id))
        mail.header = Header(DEDUP_HEADER, row.dedup_key)
        return mail.get()

    def _post(self, outbox_id: int, dedup_key: str, to: str, subject: str, body: dict[str, Any]) -> str | None:
        response = self._sdk().send(body)
        headers = getattr(response, "headers", None)
        return headers.get("X-Message-Id") if headers is not None else None


def _unbuildable(to: str, exc: BaseException) -> Failure:
    """The failure of an email the SendGrid helper cannot even build (an address that does not parse, say)."""
    error = EmailError(
        f"The email to {to!r} cannot be built for SendGrid ({type(exc).__name__}: {exc}); "
        "check the address. Nothing was sent.",
        code="EMAIL_MESSAGE_INVALID",
    )
    error.__cause__ = exc
    logger.error("Email to %r cannot be built for SendGrid", to, exc_info=exc)
    return Failure.of(error)
