"""Email adapter: the real sendgrid SDK against the local SendGrid peer, the outbox, the templates."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, update

from backend.app.extensions import db
from backend.app.models import EmailOutbox
from backend.app.resilience.recovery import degraded_services
from backend.app.services import get_email
from backend.app.services.email import DEDUP_HEADER
from backend.app.services.email_templates import payment_receipt, render_failed, render_finished
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.peers.sendgrid_peer import SendGridPeer, sendgrid_error_body

FAST = {"RETRY_SLEEP_ENABLED": False}


def email_app(make_app: Callable[..., Flask], host: str, **extra: Any) -> Flask:
    """An app whose SendGrid is `host` (the peer, or a fault proxy in front of it)."""
    settings: dict[str, Any] = {
        **FAST,
        "SENDGRID_API_KEY": SendGridPeer.api_key,
        "SENDGRID_API_HOST": host,
        "SENDGRID_TIMEOUT": 0.5,
        "EMAIL_FROM": "renders@oriel.example",
    }
    return make_app(**{**settings, **extra})


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
    breaker = {"min_calls": 3, "recovery_timeout": 0.2, "slow_call_seconds": None}  # time the outage, not the host
    app = email_app(make_app, proxy.url, CIRCUIT_BREAKERS={"email": breaker})
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
    # While the first worker's trial call runs, the half-open breaker turns the other worker away: the row it
    # had claimed goes back to queued, so a later pass sends it. Every email still goes out exactly once.
    with app.app_context():
        sent.append(get_email().resend_outbox())
    assert sum(sent) == 5
    for i in range(5):
        assert sendgrid_peer.count(custom_arg=("dedup_key", f"k{i}")) == 1
    with app.app_context():
        assert get_email().outbox_count() == 0 and get_email().resend_outbox() == 0
    assert len(sendgrid_peer.messages) == 5


def test_point13_a_pass_turned_away_by_a_busy_half_open_breaker_spends_nothing_and_loses_nothing(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., Any]
) -> None:
    """#15 point 13, the race behind `assert 4 == 5` made deterministic.

    Another worker's trial call holds the half-open breaker (one trial at a time), so this pass is turned
    away: the row it claimed goes back to queued, no attempt is spent and nothing is sent. Once the trial
    succeeds, the next pass sends every email exactly once. One pass of two workers can therefore end
    with a row left for the next pass; the code keeps the row and its attempts intact (no code defect), and
    the two-worker test above now says "exactly once over the passes" instead of "all in the first pass".
    """
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    breaker = {"min_calls": 3, "recovery_timeout": 0.2, "slow_call_seconds": None}
    app = email_app(make_app, proxy.url, CIRCUIT_BREAKERS={"email": breaker})
    proxy.down()
    with app.test_request_context():
        email = get_email()
        for i in range(5):
            assert email.send(f"u{i}@example.com", "Hi", "Body", dedup_key=f"race{i}").status == "queued"
    proxy.passthrough()
    time.sleep(0.25)
    breakers = app.extensions["breakers"]
    with app.app_context():

        def rows() -> list[tuple[str, int, Any]]:
            db.session.expire_all()
            found = db.session.scalars(select(EmailOutbox).order_by(EmailOutbox.id)).all()
            return [(r.status, r.attempts, r.lease_expires_at) for r in found]

        before = rows()
        assert {status for status, _, _ in before} == {"queued"}
        trial = breakers.get("email").acquire()  # the other worker's trial call, still running
        assert trial.trial and breakers.get("email").state.value == "half_open"
        assert get_email().resend_outbox() == 0  # turned away at once
        assert rows() == before  # queued again, unleased, not one attempt spent
        assert sendgrid_peer.messages == []
        breakers.get("email").record(trial, failure=False)  # the trial succeeded: closed
        assert get_email().resend_outbox() == 5 and get_email().resend_outbox() == 0
    for i in range(5):
        assert sendgrid_peer.count(custom_arg=("dedup_key", f"race{i}")) == 1


def test_a_rejected_message_fails_at_once_and_does_not_block_the_others(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    """#13 point 4 (this test's old contract kept a refused email queued for EMAIL_MAX_ATTEMPTS tries)."""
    app = email_app(make_app, sendgrid_peer.url, EMAIL_MAX_ATTEMPTS=2)
    with app.app_context():
        email = get_email()
        sendgrid_peer.fail_next(400, "The to email does not contain a valid address.")
        first = email.send("bad@example.com", "Hi", "Body", dedup_key="bad")
        assert (first.status, first.reason) == ("failed", "UPSTREAM_REJECTED")  # at once, not after 2 tries
        email.send("good@example.com", "Hi", "Body", dedup_key="good")
        assert email.resend_outbox() == 0  # a failed email is not resent on its own
        row = db.session.get(EmailOutbox, first.outbox_id)
        assert row is not None and row.status == "failed" and row.attempts == 1
        assert email.outbox_count() == 0 and email.failed_count() == 1
    assert sendgrid_peer.count(custom_arg=("dedup_key", "good")) == 1


def test_a_message_that_uses_up_its_attempts_ends_failed_with_its_history(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    """Outages that outlast EMAIL_MAX_ATTEMPTS sends end failed (the inbox), never dropped."""
    app = email_app(make_app, sendgrid_peer.url, EMAIL_MAX_ATTEMPTS=2, CIRCUIT_BREAKERS={"email": {"min_calls": 50}})
    with app.app_context():
        email = get_email()
        sendgrid_peer.fail_next(503, "try later", times=6)  # two sends of three tries each
        first = email.send("late@example.com", "Hi", "Body", dedup_key="late")
        assert (first.status, first.degraded) == ("queued", True)
        assert email.resend_outbox() == 0
        row = db.session.get(EmailOutbox, first.outbox_id)
        assert row is not None and (row.status, row.attempts) == ("failed", 2) and row.failed_at is not None
        assert [(e["attempt"], e["code"], e["status"]) for e in row.errors] == [
            (1, "EMAIL_UNAVAILABLE", 503),
            (2, "EMAIL_UNAVAILABLE", 503),
        ]
        assert row.last_error.startswith("EMAIL_UNAVAILABLE: ") and "try later" in row.last_error
        assert row.possible_duplicates == 0  # a 503 proves nothing was sent


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

    from backend.app.timeutil import utcnow

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


# -- #13 point 4: ambiguous outcomes and permanent failures ---------------------------------------------------


def _row(app: Flask, outbox_id: int) -> EmailOutbox:
    with app.app_context():
        db.session.expire_all()
        row = db.session.get(EmailOutbox, outbox_id)
        assert row is not None
        db.session.expunge(row)
        return row


def _inbox_resend(app: Flask, outbox_id: int) -> None:
    """What the failed-work inbox's retry does: back to queued, attempts 0, due now."""
    with app.app_context():
        db.session.execute(
            update(EmailOutbox)
            .where(EmailOutbox.id == outbox_id, EmailOutbox.status == "failed")
            .values(status="queued", attempts=0, failed_at=None)
        )
        db.session.commit()


def test_point4_a_lost_reply_is_not_retried_inline_and_is_resent_once_as_a_visible_possible_duplicate(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., Any]
) -> None:
    """#13 point 4: SendGrid accepted it and the reply was lost: one message now, the resend is counted."""
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = email_app(make_app, proxy.url, ADMIN_EMAILS=frozenset({ADMIN_EMAIL}))
    proxy.hang(after_upstream=True)
    with app.test_request_context():
        result = get_email().send("ada@example.com", "Ready", "Your video", dedup_key="render-finished:5")
        assert (result.status, result.degraded) == ("queued", True)  # kept for the outbox, and said so
        status = get_email().status()
    assert len(sendgrid_peer.messages) == 1  # SendGrid has it once: no inline retry after a lost reply
    assert proxy.counts == {"hang": 1}
    row = _row(app, result.outbox_id)
    assert (row.status, row.attempts, row.possible_duplicates) == ("queued", 1, 1)
    [entry] = row.errors
    assert entry["kind"] == "transient" and entry["ambiguous"] is True and entry["code"] == "EMAIL_UNAVAILABLE"
    assert (status["outbox"], status["possible_duplicates"], status["failed"]) == (1, 1, 0)
    assert any(
        line["level"] == "WARNING"
        and "possible duplicate" in line["message"]
        and "render-finished:5" in line["message"]
        for line in read_log(app, "app.log")
    )

    proxy.passthrough()
    with app.app_context():
        assert get_email().resend_outbox() == 1
        assert get_email().resend_outbox() == 0 and get_email().outbox_count() == 0
    # The resend carries the same dedup key: the duplicate is provable at the provider.
    assert sendgrid_peer.count(custom_arg=("dedup_key", "render-finished:5")) == 2
    assert sendgrid_peer.count(header=(DEDUP_HEADER, "render-finished:5")) == 2
    row = _row(app, result.outbox_id)
    assert (row.status, row.attempts, row.possible_duplicates) == ("sent", 2, 1)

    client = app.test_client()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'oriel_email_possible_duplicates_total{operation="send"} 1.0' in metrics
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    backlog = client.get("/admin/api/monitoring/health/services", headers=headers).get_json()["backlog"]
    assert backlog["email_possible_duplicates"] == 1 and backlog["failed_email"] == 0


@pytest.mark.parametrize("refusal", ["401-wrong-key", "403"])
def test_point4_refused_credentials_fail_at_once_with_the_real_code_and_are_not_resent(
    refusal: str, make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., Any]
) -> None:
    """#13 point 4: 401/403 are SERVICE_MISCONFIGURED: failed at once, with SendGrid's words, never resent alone."""
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    if refusal == "401-wrong-key":
        app = email_app(make_app, proxy.url, SENDGRID_API_KEY="SG.revoked-key.abcdefghijklmnopqrstuvwxyz012345")
        said, status = "The provided authorization grant is invalid, expired, or revoked", 401
    else:
        app = email_app(make_app, proxy.url)
        said, status = "access forbidden", 403
        proxy.status(403, body=sendgrid_error_body(said))
    with app.app_context():
        result = get_email().send("ada@example.com", "Receipt", "Thanks", dedup_key=f"receipt:{refusal}")
        assert (result.status, result.degraded, result.reason) == ("failed", False, "SERVICE_MISCONFIGURED")
        assert sum(proxy.counts.values()) == 1  # tried once: waiting cannot fix a key
        assert get_email().resend_outbox() == 0
        assert sum(proxy.counts.values()) == 1  # and the outbox does not try it again either
        assert get_email().failed_count() == 1 and get_email().outbox_count() == 0
    row = _row(app, result.outbox_id)
    assert (row.status, row.attempts) == ("failed", 1) and row.failed_at is not None
    assert row.last_error.startswith("SERVICE_MISCONFIGURED: ") and said in row.last_error
    [entry] = row.errors
    assert (entry["code"], entry["status"], entry["kind"], entry["misconfigured"]) == (
        "SERVICE_MISCONFIGURED",
        status,
        "permanent",
        True,
    )
    assert "SG.revoked-key" not in str(row.errors) + row.last_error
    assert sendgrid_peer.messages == []
    errors = [line for line in read_log(app, "errors.log") if f"receipt:{refusal}" in line["message"]]
    assert errors and errors[-1]["level"] == "ERROR" and "failed-work inbox" in errors[-1]["message"]


def test_point4_a_bad_address_fails_at_once_with_sendgrids_own_message(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., Any]
) -> None:
    """#13 point 4: a 400 is UPSTREAM_REJECTED with SendGrid's error message; the next email still goes."""
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = email_app(make_app, proxy.url)
    with app.app_context():
        bad = get_email().send("ada@localhost", "Hi", "Body", dedup_key="bad-address")  # SendGrid wants a domain
        good = get_email().send("ada@example.com", "Hi", "Body", dedup_key="good-address")
        assert (bad.status, bad.reason) == ("failed", "UPSTREAM_REJECTED") and good.status == "sent"
        assert get_email().resend_outbox() == 0
    assert proxy.counts == {"pass": 2}  # one try each: a bad request is not repeated
    row = _row(app, bad.outbox_id)
    assert row.status == "failed" and row.attempts == 1
    assert row.last_error.startswith("UPSTREAM_REJECTED: ")
    assert "Does not contain a valid address. (personalizations.0.to.0.email)" in row.last_error
    assert row.errors[0]["status"] == 400 and row.errors[0]["kind"] == "permanent"
    assert sendgrid_peer.rejected and sendgrid_peer.count(custom_arg=("dedup_key", "good-address")) == 1


def test_point4_a_failed_email_set_back_to_queued_is_sent_by_the_next_resend(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., Any]
) -> None:
    """#13 point 4: once the cause is fixed, the inbox's retry (failed → queued) is sent by the outbox job."""
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = email_app(make_app, proxy.url)
    proxy.status(401, body=sendgrid_error_body("The provided authorization grant is invalid"), times=1)
    with app.app_context():
        failed = get_email().send("ada@example.com", "Receipt", "Thanks", dedup_key="receipt:cs_42")
        assert failed.status == "failed"
        assert get_email().send("ada@example.com", "Receipt", "Thanks", dedup_key="receipt:cs_42").status == "failed"
    _inbox_resend(app, failed.outbox_id)  # the key was rotated; an admin resends it
    with app.app_context():
        assert get_email().outbox_count() == 1
        assert get_email().resend_outbox() == 1
        assert get_email().failed_count() == 0
    row = _row(app, failed.outbox_id)
    assert (row.status, row.attempts, row.failed_at, row.last_error) == ("sent", 1, None, None)
    assert len(row.errors) == 1  # what happened before stays in the history
    assert sendgrid_peer.count(custom_arg=("dedup_key", "receipt:cs_42")) == 1


def test_point4_an_address_the_sdk_cannot_even_build_fails_at_once_and_blocks_nothing(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., Any]
) -> None:
    """#13 point 4: the SendGrid helper refuses "not an address" (KeyError): failed, nothing sent, no bug hidden."""
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = email_app(make_app, proxy.url)
    with app.app_context():
        bad = get_email().send("not an address", "Hi", "Body", dedup_key="unparsable")
        assert (bad.status, bad.reason) == ("failed", "EMAIL_MESSAGE_INVALID")
        assert get_email().send("ada@example.com", "Hi", "Body", dedup_key="fine").status == "sent"
    assert proxy.counts == {"pass": 1}  # the unbuildable one never went out
    row = _row(app, bad.outbox_id)
    assert row.status == "failed" and row.last_error.startswith("EMAIL_MESSAGE_INVALID: ")
    assert row.errors[0]["exc_type"] == "builtins.KeyError" and row.errors[0]["kind"] == "permanent"
