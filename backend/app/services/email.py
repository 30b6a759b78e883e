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
accepted whose answer was lost (a timeout after acceptance): it is sent again, and the key shows it.

Not configured (no SENDGRID_API_KEY): `send()` keeps the email queued with the reason "email not
configured", logs it, and reports status "queued" (never "sent").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import APIError, EmailError
from ..extensions import db
from ..models.outbox import FAILED, QUEUED, SENDING, SENT, EmailOutbox
from ..models.user import utcnow
from ..utils.classifier import ErrorKind, classify
from ..utils.error_recovery import call_with_recovery, get_breaker
from . import email_templates as templates

logger = logging.getLogger(__name__)

SERVICE = "email"
DEDUP_HEADER = "X-Oriel-Dedup-Key"
NOT_CONFIGURED = "email not configured (SENDGRID_API_KEY is not set)"


@dataclass(frozen=True)
class EmailResult:
    """What happened to one email: "sent", or "queued" in the outbox (`degraded` when SendGrid failed)."""

    status: str
    degraded: bool
    outbox_id: int
    reason: str | None = None


def translate_email_error(exc: BaseException) -> APIError:
    """Our error for a failed SendGrid call (the adapter's one translation table)."""
    verdict = classify(exc)
    return EmailError(
        "The email service is unavailable right now; the email is queued.",
        details={"service": SERVICE, "reason": verdict.kind.value},
        recoverable=verdict.retryable,
    )


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
            elif result.reason in {ErrorKind.TRANSIENT.value, ErrorKind.THROTTLED.value}:
                break  # SendGrid is down or busy: the rest would fail the same way
        if sent:
            logger.info("Outbox: sent %s queued email(s)", sent)
        return sent

    def outbox_count(self) -> int:
        """Emails waiting in the outbox (queued or being sent)."""
        return int(db.session.scalar(select(func.count()).where(EmailOutbox.status.in_((QUEUED, SENDING)))) or 0)

    def status(self) -> dict[str, Any]:
        """Configured or not, breaker state and outbox size (no network call)."""
        info: dict[str, Any] = {
            "service": SERVICE,
            "status": "configured" if self.configured else "not_configured",
            "configured": self.configured,
            "breaker": get_breaker(SERVICE).state.value,
            "outbox": self.outbox_count(),
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
        if row.status == SENT:
            return EmailResult(SENT, False, row.id, "duplicate")
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
        """Send a claimed row; on failure it goes back to queued (or failed after too many attempts)."""
        row = db.session.get(EmailOutbox, outbox_id)
        assert row is not None
        payload = (row.id, row.dedup_key, row.to_address, row.subject, row.text_body, row.html_body)
        try:
            message_id = call_with_recovery(
                self._post,
                payload,
                {},
                service=SERVICE,
                operation="send",
                max_retries=self.max_retries,
                idempotent=True,  # see the module docstring: the dedup key makes a repeat visible
                fallback=self._keep_queued if fallback else None,
                translate=translate_email_error,
            )
        except APIError as exc:
            kind = classify(exc.__cause__ or exc).kind
            self._requeue(outbox_id, f"{exc.code}: {kind.value}")
            return EmailResult(QUEUED, False, outbox_id, kind.value)
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
            )
        )
        db.session.commit()
        logger.info("Email %s sent to SendGrid (message id %s)", row.dedup_key, message_id)
        return EmailResult(SENT, False, outbox_id)

    def _keep_queued(
        self, exc: BaseException, outbox_id: int, dedup_key: str, to: str, subject: str, *_: Any
    ) -> EmailResult:
        """The fallback: log the email (the seed's behaviour) and keep it in the outbox for `resend_outbox`."""
        verdict = classify(exc)
        logger.warning(
            "Email %s to %s (%r) not sent: %s (%s); kept in the outbox",
            dedup_key,
            to,
            subject,
            type(exc).__name__,
            verdict.reason,
        )
        self._requeue(outbox_id, f"{type(exc).__name__}: {verdict.reason}")
        return EmailResult(QUEUED, True, outbox_id, verdict.kind.value)

    def _requeue(self, outbox_id: int, error: str) -> None:
        db.session.rollback()  # whatever the failed call left in the session is not ours to commit
        row = db.session.get(EmailOutbox, outbox_id)
        assert row is not None
        row.attempts += 1
        row.last_error = error[:500]
        row.lease_expires_at = None
        row.status = FAILED if row.attempts >= self.max_attempts else QUEUED
        db.session.commit()
        if row.status == FAILED:
            logger.error("Email %s gave up after %s attempts: %s", row.dedup_key, row.attempts, error)

    def _sdk(self) -> Any:
        if self._client is None:
            from sendgrid import SendGridAPIClient  # the SDK only when email is used

            client = SendGridAPIClient(self.api_key, **({"host": self.host} if self.host else {}))
            client.client.timeout = self.timeout  # no timeout by default: a hung server blocks forever
            self._client = client
        return self._client

    def _post(self, outbox_id: int, dedup_key: str, to: str, subject: str, text: str, html: str | None) -> str | None:
        from sendgrid.helpers.mail import CustomArg, Header, Mail

        mail = Mail(from_email=self.from_email, to_emails=to, subject=subject, plain_text_content=text)
        if html:
            mail.add_content(html, "text/html")
        mail.custom_arg = CustomArg("dedup_key", dedup_key)
        mail.custom_arg = CustomArg("outbox_id", str(outbox_id))
        mail.header = Header(DEDUP_HEADER, dedup_key)
        response = self._sdk().send(mail)
        headers = getattr(response, "headers", None)
        return headers.get("X-Message-Id") if headers is not None else None
