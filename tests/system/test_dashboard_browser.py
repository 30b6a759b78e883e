"""The admin dashboard (/admin) in headless Chromium against the real app on a real loopback server.

An admin signs in through the page; the email tile goes red when the SendGrid peer's fault proxy stops
answering; a breaker is forced open and reset with clicks; a real dead letter (made by the job engine)
is inspected and requeued; an error group is acknowledged; recent errors are found by request ID; an
alert rule is created and edited; a queued render shows its progress bar; a failing call shows its
message and request ID. The failed-work inbox panel (#13 point 6) lists dead jobs, failed emails and
stuck files with their error, age and attempts, retries them, and discards one only with a reason.
Screenshots at 1280x800 and 375x812 go to tests/artifacts/ (git-ignored), and the page logs no console
errors. Chromium is Debian's, driven by Playwright (see test_browser_client).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from backend.app.extensions import db
from backend.app.jobs import REGISTRY
from backend.app.models import EmailOutbox, PendingSync
from backend.app.models.job import QUEUED, Job
from backend.app.monitoring import flush_error_stats
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.browser import DESKTOP, PASSWORD, WAIT_MS, LiveServer, Page, user_with_upload
from tests.harness.failed_work import DEAD_LETTER_KIND, dead_letter
from tests.harness.peers.audio import AudioFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PHONE = {"width": 375, "height": 812}


@pytest.fixture
def dashboard_app(
    make_app: Callable[..., Flask], sendgrid_peer: Any, make_fault_proxy: Callable[..., Any]
) -> Iterator[tuple[Flask, Any]]:
    """The app with SendGrid reached through a fault proxy (so the test can take it down)."""
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = make_app(
        SENDGRID_API_KEY=sendgrid_peer.api_key,
        SENDGRID_API_HOST=proxy.url,
        HEALTH_PROBE_DEADLINE=0.5,
        RETRY_SLEEP_ENABLED=False,
        RENDER_MIN_FREE_DISK_MB=0,
        RENDER_MIN_FREE_MEMORY_MB=0,
    )
    yield app, proxy
    REGISTRY.unregister(DEAD_LETTER_KIND)


def test_admin_sees_red_service_resets_breaker_and_requeues_a_dead_letter(
    dashboard_app: tuple[Flask, Any], browser: Any, audio_files: AudioFactory
) -> None:
    app, proxy = dashboard_app
    client = app.test_client()
    assert login(client, ADMIN_EMAIL, PASSWORD)["access_token"]  # the admin account exists
    dead_id = dead_letter(app)
    _, upload_id = user_with_upload(app, audio_files, "artist@example.com")
    user = bearer(login(client, "artist@example.com", PASSWORD)["access_token"])
    queued = client.post("/api/renders", json={"upload_id": upload_id, "preset": "waveform"}, headers=user)
    assert queued.status_code == 202, queued.get_json()
    missing = client.get("/api/renders/987654", headers=user)  # a recorded 404: an error group and an event
    assert missing.status_code == 404
    missing_rid = missing.headers["X-Request-ID"]
    flush_error_stats(app)

    with LiveServer(app) as server:
        desk = Page(browser, server.url, DESKTOP)
        desk.sign_in()
        page = desk.page
        page.wait_for_selector("[data-service='email'][data-state='ok']", timeout=WAIT_MS)
        assert page.locator(".tile").count() >= 6
        assert page.locator("#chart svg polyline.requests").count() == 1
        assert page.locator(".gauge").count() >= 1
        assert page.locator(f"tr[data-dead-letter='{dead_id}']").count() == 1
        assert page.locator(".render [role=progressbar]").count() == 1
        assert "RESOURCE_NOT_FOUND" in page.inner_text("#groups") or page.locator("#groups tr[data-group]").count()
        desk.shot("1280-healthy")

        # The SendGrid peer stops answering: the email tile goes red and the overall pill says so.
        proxy.down()
        desk.refreshed()
        page.wait_for_selector("[data-service='email'][data-state='bad']", timeout=WAIT_MS)
        assert page.get_attribute("#overall", "data-state") == "unhealthy"
        assert page.inner_text("[data-service='email'] .state").lower() == "error"
        desk.shot("1280-email-down")
        proxy.up()

        # Force the storage breaker open, then reset it, with clicks.
        page.click("tr[data-breaker='storage'] button[data-action='force-open']")
        page.wait_for_selector("tr[data-breaker='storage'][data-state='forced_open']", timeout=WAIT_MS)
        page.wait_for_selector("[data-service='storage'][data-state='bad']", timeout=WAIT_MS)
        # What users see: storage is the local disk here, so its breaker guards no call and is no outage
        # (#15 point 5); payments are listed as not set up (no Stripe in this app).
        page.wait_for_selector("#degradation [data-degraded='stripe'][data-state='not_configured']", timeout=WAIT_MS)
        assert page.locator("#degradation [data-degraded='storage']").count() == 0
        desk.shot("1280-breaker-forced-open")
        page.click("tr[data-breaker='storage'] button[data-action='reset']")
        page.wait_for_selector("tr[data-breaker='storage'][data-state='closed']", timeout=WAIT_MS)
        assert app.extensions["breakers"].get("storage").snapshot()["state"] == "closed"
        page.click("tr[data-breaker='stripe'] button[data-action='disable']")
        page.wait_for_selector("tr[data-breaker='stripe'][data-state='disabled']", timeout=WAIT_MS)
        page.click("tr[data-breaker='stripe'] button[data-action='enable']")
        page.wait_for_selector("tr[data-breaker='stripe'][data-state='closed']", timeout=WAIT_MS)

        # Recent errors found by the request ID of the 404.
        page.fill("#recent-request-id", missing_rid)
        page.click("#recent-search button[type=submit]")
        page.wait_for_function(
            "(rid) => [...document.querySelectorAll('#recent tbody tr')].length === 1 && "
            "document.querySelector('#recent tbody').innerText.includes(rid)",
            arg=missing_rid,
            timeout=WAIT_MS,
        )

        # Acknowledge the top error group.
        row = page.locator("#groups tr[data-group]").first
        group_id = row.get_attribute("data-group")
        row.locator("button", has_text="Acknowledge").click()
        page.wait_for_function(
            "(g) => document.querySelector(`#groups tr[data-group='${g}'] .status`)?.innerText === 'acknowledged'",
            arg=group_id,
            timeout=WAIT_MS,
        )
        page.locator(f"#groups tr[data-group='{group_id}'] button", has_text="Resolve").click()
        page.wait_for_function(
            "(g) => document.querySelector(`#groups tr[data-group='${g}'] .status`)?.innerText === 'resolved'",
            arg=group_id,
            timeout=WAIT_MS,
        )

        # Inspect, then requeue, the dead letter.
        page.click(f"tr[data-dead-letter='{dead_id}'] button[data-action='inspect']")
        page.wait_for_selector("#dlq-detail:not([hidden])", timeout=WAIT_MS)
        detail = json.loads(page.inner_text("#dlq-detail"))
        assert (
            detail["id"] == dead_id
            and detail["kind"] == DEAD_LETTER_KIND
            and detail["failure_analysis"] == "data_issue"
        )
        page.click(f"tr[data-dead-letter='{dead_id}'] button[data-action='requeue']")
        page.wait_for_selector(f"tr[data-dead-letter='{dead_id}']", state="detached", timeout=WAIT_MS)
        with app.app_context():
            assert db.session.get(Job, dead_id).status == QUEUED

        # Create an alert rule, then edit it.
        page.click("#alert-new")
        page.click("#alert-form button[type=submit]")
        page.wait_for_selector("tr[data-rule='high-error-rate']", timeout=WAIT_MS)
        page.click("tr[data-rule='high-error-rate'] button")
        rule = json.loads(page.input_value("#alert-json"))
        rule["severity"] = "CRITICAL"
        page.fill("#alert-json", json.dumps(rule))
        page.click("#alert-form button[type=submit]")
        page.wait_for_function(
            "() => document.querySelector(\"tr[data-rule='high-error-rate']\")?.innerText.includes('CRITICAL')",
            timeout=WAIT_MS,
        )
        desk.shot("1280-after-actions")
        assert desk.console_errors == [], desk.console_errors

        # A failing call is shown with its message, code and request ID (the API refuses this ID).
        page.fill("#recent-request-id", "not a request id!")
        page.click("#recent-search button[type=submit]")
        error_box = page.locator("#recent-panel .panel-error")
        error_box.wait_for(state="visible", timeout=WAIT_MS)
        shown = error_box.inner_text()
        assert "VALIDATION_ERROR" in shown and "HTTP 422" in shown
        assert len(page.inner_text("#recent-panel .panel-error .request-id")) >= 16
        desk.shot("1280-error-shown")
        # The only console message is Chromium's own note about that refused request.
        assert all("422" in line for line in desk.console_errors), desk.console_errors

        phone = Page(browser, server.url, PHONE)
        phone.page.fill("#email", ADMIN_EMAIL)
        phone.page.fill("#password", "wrong-password-123")
        phone.page.click("#login-form button[type=submit]")
        refused = phone.page.locator("#login-panel .panel-error")
        refused.wait_for(state="visible", timeout=WAIT_MS)
        assert "HTTP 401" in refused.inner_text() and phone.page.locator("#login-panel .request-id").count() == 1
        phone.shot("375-login-refused", full_page=False)
        assert all("401" in line for line in phone.console_errors), phone.console_errors
        phone.console_errors.clear()
        phone.sign_in()
        phone.page.wait_for_selector("[data-service='email'][data-state='ok']", timeout=WAIT_MS)
        width = phone.page.evaluate("() => document.documentElement.scrollWidth")
        phone.shot("375-phone")
        phone.shot("375-phone-top", full_page=False)
        phone.page.locator("#breakers-panel").scroll_into_view_if_needed()
        phone.shot("375-phone-breakers", full_page=False)
        assert width <= PHONE["width"], width  # nothing wider than the phone
        assert phone.console_errors == [], phone.console_errors
        assert "access_token" not in phone.page.url and "access_token" not in desk.page.url
        desk.context.close()
        phone.context.close()

    security = read_log(app, "security.log")
    actions = [(e.get("action"), e.get("actor")) for e in security if e.get("breaker") == "storage"]
    assert ("force_open", f"admin user {admin_user_id(app)}") in actions and actions[-1][0] == "reset"


def admin_user_id(app: Flask) -> int:
    """The admin account's id."""
    from sqlalchemy import select

    from backend.app.models import User

    with app.app_context():
        return int(db.session.scalars(select(User.id).where(User.email == ADMIN_EMAIL)).one())


def test_point6_failed_work_panel_lists_retries_and_discards_with_a_reason(
    make_app: Callable[..., Flask], browser: Any
) -> None:
    """The inbox panel: every kind with its error, age and attempts; retry; discard asks for a reason; bulk retry."""
    from tests.harness.failed_work import failed_email, failed_file

    app = make_app(HEALTH_PROBE_DEADLINE=0.5)
    client = app.test_client()
    assert login(client, ADMIN_EMAIL, PASSWORD)["access_token"]
    try:
        dead_id = dead_letter(app)
    finally:
        REGISTRY.unregister(DEAD_LETTER_KIND)
    email_id = failed_email(app, "render-finished:31", minutes_ago=50)
    bulk_ids = [failed_email(app, f"receipt:{i}", minutes_ago=5) for i in range(2)]
    file_id = failed_file(app, "renders/31/video.mp4", minutes_ago=130)

    with LiveServer(app) as server:
        desk = Page(browser, server.url, DESKTOP)
        desk.sign_in()
        page = desk.page
        row = page.locator(f"tr[data-inbox-item='email:{email_id}']")
        row.wait_for(timeout=WAIT_MS)
        assert page.locator("#inbox tr[data-inbox-item]").count() == 5
        assert page.inner_text("#inbox-total") == "(5)"
        assert page.inner_text("#inbox-kinds [data-kind='email']") == "Failed emails (3)"
        text = row.inner_text()
        assert "email render-finished:31" in text and "UPSTREAM_REJECTED" in text and "50 min" in text
        file_row = page.locator(f"tr[data-inbox-item='storage:{file_id}']")
        assert "2 h" in file_row.inner_text() and "storage.objects.create" in file_row.inner_text()
        assert f"{DEAD_LETTER_KIND} job {dead_id}" in page.inner_text(f"tr[data-inbox-item='job:{dead_id}']")
        # Oldest first: the file (130 min), then the email (50 min).
        first = page.locator("#inbox tr[data-inbox-item]").first.get_attribute("data-inbox-item")
        assert first == f"storage:{file_id}"
        desk.shot("1280-failed-work")

        # Inspect shows the history.
        row.locator("button[data-action='inspect']").click()
        page.wait_for_selector("#inbox-detail:not([hidden])", timeout=WAIT_MS)
        detail = json.loads(page.inner_text("#inbox-detail"))
        assert detail["id"] == email_id and [h["code"] for h in detail["history"]][-1] == "UPSTREAM_REJECTED"

        # Retry the email: it leaves the inbox and is queued for the outbox job.
        row.locator("button[data-action='retry']").click()
        row.wait_for(state="detached", timeout=WAIT_MS)
        with app.app_context():
            assert db.session.get(EmailOutbox, email_id).status == "queued"

        # Discard asks for a reason: an empty one is not sent, a blank one is refused by the API.
        file_row.locator("button[data-action='discard']").click()
        form = page.locator("#inbox-discard")
        form.wait_for(state="visible", timeout=WAIT_MS)
        assert "renders/31/video.mp4" in page.inner_text("#inbox-discard-title")
        page.click("#inbox-discard button[type=submit]")  # empty: the browser keeps it (required)
        page.fill("#inbox-reason", "   ")
        page.click("#inbox-discard button[type=submit]")
        refused = page.locator("#inbox-discard .panel-error")
        refused.wait_for(state="visible", timeout=WAIT_MS)
        assert "VALIDATION_ERROR" in refused.inner_text() and "reason" in refused.inner_text()
        with app.app_context():
            assert db.session.get(PendingSync, file_id).status == "failed"
        page.fill("#inbox-reason", "The bucket was retired; the render is redone")
        page.click("#inbox-discard button[type=submit]")
        file_row.wait_for(state="detached", timeout=WAIT_MS)
        assert form.is_hidden()
        with app.app_context():
            stored = db.session.get(PendingSync, file_id)
            assert stored.status == "discarded" and stored.discard_reason.startswith("The bucket was retired")

        # One kind, then every item of it at once.
        page.click("#inbox-kinds [data-kind='email']")
        page.wait_for_selector("#inbox-retry-kind:not([hidden])", timeout=WAIT_MS)
        assert page.locator("#inbox tr[data-inbox-item]").count() == 2
        page.click("#inbox-retry-kind")
        page.wait_for_function(
            "() => document.querySelectorAll('#inbox tr[data-inbox-item]').length === 0", timeout=WAIT_MS
        )
        with app.app_context():
            assert {db.session.get(EmailOutbox, i).status for i in bulk_ids} == {"queued"}
        page.click("#inbox-kinds [data-kind='all']")
        page.wait_for_function("() => document.querySelector('#inbox-total').innerText === '(1)'", timeout=WAIT_MS)
        desk.shot("1280-failed-work-after-actions")
        # The only console message is Chromium's own note about the refused (422) discard.
        assert all("422" in line for line in desk.console_errors), desk.console_errors

        phone = Page(browser, server.url, PHONE)
        phone.sign_in()
        phone.page.wait_for_selector(f"tr[data-inbox-item='job:{dead_id}']", timeout=WAIT_MS)
        phone.page.locator("#inbox-panel").scroll_into_view_if_needed()
        phone.shot("375-failed-work", full_page=False)
        assert phone.page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        assert phone.console_errors == [], phone.console_errors
        desk.context.close()
        phone.context.close()

    security = read_log(app, "security.log")
    actions = [(e["event_type"], e.get("kind")) for e in security if str(e.get("event_type")).startswith("failed_work")]
    assert actions == [
        ("failed_work_retried", "email"),
        ("failed_work_discarded", "storage"),
        ("failed_work_bulk_retried", "email"),
    ]


def test_point5_the_emailed_link_opens_a_form_that_sets_the_password_then_signs_in(
    make_app: Callable[..., Flask], sendgrid_peer: Any, browser: Any
) -> None:
    """#14 point 5 in the browser: `/admin/#verify=<token>` → choose a password → signed in as an admin."""
    app = make_app(
        SENDGRID_API_KEY=sendgrid_peer.api_key,
        SENDGRID_API_HOST=sendgrid_peer.url,
        RETRY_SLEEP_ENABLED=False,
        PUBLIC_BASE_URL="https://oriel.example",
    )
    client = app.test_client()
    assert (
        client.post("/api/auth/register", json={"email": ADMIN_EMAIL, "password": "typed-by-a-stranger"}).status_code
        == 201
    )
    [message] = sendgrid_peer.messages
    text = " ".join(part["value"] for part in message.body["content"])
    token = text.split("/admin/#verify=", 1)[1].split()[0]
    with LiveServer(app) as server:
        desk = Page(browser, server.url, DESKTOP)
        page = desk.page
        page.goto(f"{server.url}/admin/#verify={token}")
        page.wait_for_selector("#verify-panel:not([hidden])", timeout=WAIT_MS)
        assert page.is_hidden("#login-panel")
        page.fill("#verify-password", PASSWORD)
        page.click("#verify-form button[type=submit]")
        page.wait_for_selector("#login-panel:not([hidden])", timeout=WAIT_MS)
        assert page.input_value("#email") == ADMIN_EMAIL
        assert "verify" not in page.evaluate("() => window.location.href")  # the spent token left the address bar
        desk.sign_in()
        page.wait_for_selector("#dashboard:not([hidden])", timeout=WAIT_MS)
        assert desk.console_errors == [], desk.console_errors
        desk.context.close()
    stranger = client.post("/api/auth/login", json={"email": ADMIN_EMAIL, "password": "typed-by-a-stranger"})
    assert stranger.status_code == 401
