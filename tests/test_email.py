"""Email adapter: the real sendgrid SDK against the local SendGrid peer, the outbox, the templates."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy import select

from backend.app.extensions import db
from backend.app.models import EmailOutbox
from backend.app.services import get_email
from backend.app.services.email import DEDUP_HEADER
from backend.app.services.email_templates import payment_receipt, render_failed, render_finished
from backend.app.utils.error_recovery import degraded_services
from tests.conftest import read_log
from tests.peers.sendgrid_peer import SendGridPeer

FAST = {"RETRY_SLEEP_ENABLED": False}


def email_app(make_app: Callable[..., Flask], host: str, **extra: Any) -> Flask:
    """An app whose SendGrid is `host` (the peer, or a fault proxy in front of it)."""
    return make_app(
        **FAST,
        SENDGRID_API_KEY=SendGridPeer.api_key,
        SENDGRID_API_HOST=host,
        SENDGRID_TIMEOUT=0.5,
        EMAIL_FROM="renders@oriel.example",
        **extra,
    )


def test_send_reaches_sendgrid_once_with_the_dedup_key_and_is_marked_sent(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    app = email_app(make_app, sendgrid_peer.url)
    with app.app_context():
        result = get_email().send("ada@example.com", "Hello", "Plain body", html="<p>Hi</p>", dedup_key="welcome:1")
        again = get_email().send("ada@example.com", "Hello", "Plain body", dedup_key="welcome:1")
        row = db.session.scalar(select(EmailOutbox).where(EmailOutbox.dedup_key == "welcome:1"))
        assert get_email().outbox_count() == 0
    assert (result.status, result.degraded, result.reason) == ("sent", False, None)
    assert (again.status, again.reason) == ("sent", "duplicate")  # the same key is never sent twice
    assert row is not None and row.status == "sent" and row.attempts == 1 and row.provider_message_id
    [message] = sendgrid_peer.messages
    assert message.recipients == ["ada@example.com"] and message.subject == "Hello"
    assert message.body["from"]["email"] == "renders@oriel.example"
    assert [c["type"] for c in message.body["content"]] == ["text/plain", "text/html"]
    assert sendgrid_peer.count(custom_arg=("dedup_key", "welcome:1")) == 1
    assert sendgrid_peer.count(header=(DEDUP_HEADER, "welcome:1")) == 1
    assert message.headers.get("Authorization") == f"Bearer {SendGridPeer.api_key}"


def test_not_configured_keeps_the_email_queued_and_never_says_sent(make_app: Callable[..., Flask]) -> None:
    app = make_app(**FAST)
    with app.test_request_context():
        email = get_email()
        assert email.status()["status"] == "not_configured"
        result = email.send("bob@example.com", "Receipt", "Thanks", dedup_key="receipt:cs_1")
        assert (result.status, result.reason) == ("queued", "not_configured")
        assert email.outbox_count() == 1 and email.resend_outbox() == 0
        row = db.session.get(EmailOutbox, result.outbox_id)
        assert row is not None and row.status == "queued" and "not configured" in (row.last_error or "")
        assert degraded_services() == []
    assert any("not configured" in line["message"] for line in read_log(app, "app.log"))


def test_outbox_resends_after_an_outage_exactly_once_even_with_two_workers(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., Any]
) -> None:
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = email_app(make_app, proxy.url, CIRCUIT_BREAKERS={"email": {"min_calls": 3, "recovery_timeout": 0.2}})
    proxy.down()
    with app.test_request_context():
        results = [get_email().send(f"u{i}@example.com", "Hi", "Body", dedup_key=f"k{i}") for i in range(5)]
        assert all(r.status == "queued" and r.degraded for r in results)
        assert degraded_services() == ["email"]
        assert get_email().outbox_count() == 5
    proxy.passthrough()
    time.sleep(0.25)
    sent: list[int] = []

    def worker() -> None:
        with app.app_context():
            sent.append(get_email().resend_outbox())
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(sent) == 5
    for i in range(5):
        assert sendgrid_peer.count(custom_arg=("dedup_key", f"k{i}")) == 1
    with app.app_context():
        assert get_email().outbox_count() == 0 and get_email().resend_outbox() == 0
    assert len(sendgrid_peer.messages) == 5


def test_a_rejected_message_does_not_block_the_others_and_gives_up_after_max_attempts(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    app = email_app(make_app, sendgrid_peer.url, EMAIL_MAX_ATTEMPTS=2)
    with app.app_context():
        email = get_email()
        sendgrid_peer.fail_next(400, "The to email does not contain a valid address.")
        first = email.send("bad@example.com", "Hi", "Body", dedup_key="bad")
        assert first.status == "queued"
        email.send("good@example.com", "Hi", "Body", dedup_key="good")
        sendgrid_peer.fail_next(400, "The to email does not contain a valid address.")
        assert email.resend_outbox() == 0  # the only queued one is rejected again: attempt 2 of 2
        row = db.session.get(EmailOutbox, first.outbox_id)
        assert row is not None and row.status == "failed" and row.attempts == 2
        assert email.outbox_count() == 0
    assert sendgrid_peer.count(custom_arg=("dedup_key", "good")) == 1


def test_templates_carry_what_the_user_needs() -> None:
    finished = render_finished(render_id=42, download_url="https://x.example/d?a=1&b=<2>")
    assert "#42" in finished.subject and "https://x.example/d?a=1&b=<2>" in finished.text
    assert 'href="https://x.example/d?a=1&amp;b=&lt;2&gt;"' in finished.html  # escaped, never raw HTML
    failed = render_failed(render_id=7, reason="The audio file is corrupt.", what_to_do="Upload it again.")
    assert "The audio file is corrupt." in failed.text and "Upload it again." in failed.text
    receipt = payment_receipt(pack="starter", credits=5, amount_cents=500, currency="usd")
    assert "5.00 USD" in receipt.text and "5" in receipt.text and "starter" in receipt.text


def test_template_helpers_send_with_stable_dedup_keys(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    app = email_app(make_app, sendgrid_peer.url)
    with app.app_context():
        email = get_email()
        email.send_render_finished("a@example.com", render_id=9, download_url="https://d.example/9")
        email.send_render_finished("a@example.com", render_id=9, download_url="https://d.example/9")
        email.send_render_failed("a@example.com", render_id=10, reason="FFmpeg failed", what_to_do="Retry")
        email.send_payment_receipt(
            "a@example.com", session_id="cs_9", pack="starter", credits=5, amount_cents=500, currency="usd"
        )
    assert sendgrid_peer.count(custom_arg=("dedup_key", "render-finished:9")) == 1
    assert sendgrid_peer.count(custom_arg=("dedup_key", "render-failed:10")) == 1
    assert sendgrid_peer.count(custom_arg=("dedup_key", "receipt:cs_9")) == 1


def test_the_periodic_outbox_job_sends_queued_email_through_the_job_worker(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    from backend.app.jobs.records import enqueue
    from backend.app.jobs.registry import REGISTRY
    from backend.app.jobs.worker import Worker, WorkerOptions

    assert {"email.outbox", "storage.sync"} <= {p.name for p in REGISTRY.periodic()}
    app = email_app(make_app, sendgrid_peer.url)
    with app.app_context():
        sendgrid_peer.fail_next(503, "try later", times=3)  # the first try and both retries
        assert get_email().send("late@example.com", "Hi", "Body", dedup_key="late").status == "queued"
        job = enqueue("email.outbox", {})
        job_id = job.id
    options = WorkerOptions(install_signals=False, schedule=False, drain=True, poll_seconds=0.02, max_seconds=20.0)
    assert Worker(app, options).run() == 1
    with app.app_context():
        from backend.app.models import Job

        assert db.session.get(Job, job_id).status == "succeeded"
        assert get_email().outbox_count() == 0
    assert sendgrid_peer.count(custom_arg=("dedup_key", "late")) == 1


def test_a_send_interrupted_mid_flight_is_resent_after_its_lease_and_not_before(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    from datetime import timedelta

    from backend.app.models.user import utcnow

    app = email_app(make_app, sendgrid_peer.url)
    with app.app_context():
        # A worker claimed these and died (kill -9) before sending: one lease has run out, one has not.
        for key, lease in (("stale", -60), ("live", 600)):
            db.session.add(
                EmailOutbox(
                    dedup_key=key, to_address="x@example.com", subject="S", text_body="T", status="sending",
                    lease_expires_at=utcnow() + timedelta(seconds=lease),
                )
            )  # fmt: skip
        db.session.commit()
        assert get_email().resend_outbox() == 1
        assert get_email().outbox_count() == 1  # the live lease still belongs to its worker
    assert sendgrid_peer.count(custom_arg=("dedup_key", "stale")) == 1
    assert sendgrid_peer.count(custom_arg=("dedup_key", "live")) == 0
