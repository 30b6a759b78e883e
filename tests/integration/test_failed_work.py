"""#13 point 6: one failed-work inbox for admins (dead jobs, failed emails, stuck files, unapplied payments).

Each kind appears with its real error, age and history; retry and discard (with a reason) work per
kind and are written to security.log; the retried email reaches the SendGrid peer through
`resend_outbox`, the retried file reaches the gcp-storage-emulator through `sync_pending`, the
retried job runs; the admin API's envelopes; `flask monitoring failed-work`; the `failed_work` alert
rule fires and resolves (webhook receiver); /metrics shows the sizes; the retention purge deletes
only what is old and given up, never an open item. A fake payment source stands in for #13 point 5's
until the integrator wires the real one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient

from backend.app.admin.cli import cli_actor
from backend.app.errors import ValidationError
from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models import EmailOutbox, PendingSync
from backend.app.models.job import DEAD, FAILED, QUEUED, SUCCEEDED, Job, JobStep
from backend.app.monitoring.alerts.delivery import deliver_pending
from backend.app.monitoring.inbox import FailedItem, FailedWorkKindUnknownError, FailedWorkNotOpenError, Inbox
from backend.app.resilience.retry import RetryPolicy
from backend.app.services import get_email, get_storage
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log
from tests.harness.contract import assert_error
from tests.harness.failed_work import failed_email, failed_file
from tests.harness.metrics import sample
from tests.harness.peers.gcs_emulator import GCSEmulator, storage_client
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.peers.webhook_receiver import WebhookReceiver

BASE = "/admin/api/monitoring/failed-work"
BAD_KIND = "test.inbox_bad_data"
FLAKY_KIND = "test.inbox_flaky"
FAST = {"RETRY_SLEEP_ENABLED": False}


def _now() -> datetime:
    return datetime.now(UTC)


def admin(client: FlaskClient) -> dict[str, str]:
    """An admin's Authorization header."""
    return bearer(login(client, ADMIN_EMAIL)["access_token"])


def run_worker(app: Flask) -> None:
    """A real worker, until nothing is due (no periodic ticks)."""
    options = WorkerOptions(install_signals=False, schedule=False, poll_seconds=0.02, burst=True, max_seconds=20.0)
    Worker(app, options).run()


@pytest.fixture
def bad_kind() -> Iterator[str]:
    """A job kind whose handler rejects its data (no retry): every job of it dead-letters."""

    def handler(ctx: JobContext) -> None:
        raise ValidationError("Audio file has no samples", field="file")

    REGISTRY.register(JobKind(BAD_KIND, handler, policy=RetryPolicy(permanent_retries=0)), replace=True)
    yield BAD_KIND
    REGISTRY.unregister(BAD_KIND)


def dead_job(app: Flask, kind: str = BAD_KIND) -> int:
    """A real dead letter: enqueued and run by the real worker."""
    with app.app_context():
        job_id = enqueue(kind, {"upload": 3, "api_key": "sk_live_abcdefghijklmnop"}).id
    run_worker(app)
    with app.app_context():
        assert db.session.get(Job, job_id).status == DEAD
    return int(job_id)


class FakePaymentSource:
    """An in-memory stand-in for #13 point 5's PaymentInboxSource (kind "payment")."""

    kind = "payment"

    def __init__(self, minutes_ago: float = 90) -> None:
        at = _now() - timedelta(minutes=minutes_ago)
        self.rows = {
            1: FailedItem(
                kind="payment",
                id=1,
                title="payment cs_test_123 (user unknown)",
                error_code="PAYMENT_UNAPPLIED",
                error_message="metadata.user_id names no user",
                created_at=at,
                failed_at=at,
                attempts=1,
            )
        }
        self.retried: list[tuple[int, str]] = []

    def count(self, *, failed_before: datetime | None = None) -> int:
        return sum(1 for i in self.rows.values() if i.open and (failed_before is None or i.since < failed_before))

    def oldest(self) -> datetime | None:
        return min((i.since for i in self.rows.values() if i.open), default=None)

    def items(self, *, limit: int, offset: int = 0) -> list[FailedItem]:
        return [i for i in self.rows.values() if i.open][offset : offset + limit]

    def get(self, item_id: int) -> FailedItem | None:
        return self.rows.get(item_id)

    def retry(self, item_id: int, *, actor: str) -> bool:
        self.retried.append((item_id, actor))
        return self.rows.pop(item_id, None) is not None

    def discard(self, item_id: int, *, reason: str, actor: str) -> bool:
        return False

    def purge(self, before: datetime) -> int:
        return 0


def with_source(app: Flask, extra: Any) -> Inbox:
    """Replace the app's inbox by one with every wired source, `extra` replacing the one of its kind."""
    inbox: Inbox = app.extensions["inbox"]
    wired = [inbox.source(k) for k in inbox.kinds if k != extra.kind]  # `extra` stands in for its kind's source
    app.extensions["inbox"] = Inbox([*wired, extra], on_error=db.session.rollback)
    return app.extensions["inbox"]


def security_events(app: Flask, event: str) -> list[dict[str, Any]]:
    """security.log lines of one event type."""
    return [e for e in read_log(app, "security.log") if e.get("event_type") == event]


# -- every kind, with its real error, age and history -----------------------------------------------------------


def test_point6_each_kind_appears_with_its_real_error_age_and_history(app: Flask, bad_kind: str) -> None:
    job_id = dead_job(app)
    email_id = failed_email(app, "render-finished:7", minutes_ago=20)
    file_id = failed_file(app, "renders/7/video.mp4", minutes_ago=10)
    with_source(app, FakePaymentSource(minutes_ago=90))
    client = app.test_client()
    headers = admin(client)

    page = client.get(BASE, headers=headers)
    assert page.status_code == 200, page.get_json()
    body = page.get_json()
    assert body["totals"] == {"job": 1, "email": 1, "storage": 1, "payment": 1}
    assert body["total"] == 4 and body["page"] == 1 and body["kind"] is None
    # Oldest failure first, across kinds: the payment (90 min), the email (20), the file (10), the job (now).
    assert [(i["kind"], i["id"]) for i in body["items"]] == [
        ("payment", 1),
        ("email", email_id),
        ("storage", file_id),
        ("job", job_id),
    ]
    by_kind = {i["kind"]: i for i in body["items"]}
    assert by_kind["email"]["title"] == "email render-finished:7"
    assert by_kind["email"]["error_code"] == "UPSTREAM_REJECTED"
    assert "verified Sender Identity" in by_kind["email"]["error_message"]
    assert 20 * 60 - 5 <= by_kind["email"]["age_seconds"] <= 20 * 60 + 60
    assert by_kind["storage"]["title"] == "file renders/7/video.mp4"
    assert "storage.objects.create" in by_kind["storage"]["error_message"]
    assert by_kind["storage"]["attempts"] == 5 and 600 - 5 <= by_kind["storage"]["age_seconds"] <= 660
    assert by_kind["job"]["title"] == f"{BAD_KIND} job {job_id}"
    assert by_kind["job"]["error_code"] == "VALIDATION_ERROR"
    assert by_kind["job"]["error_message"] == "Audio file has no samples"
    assert by_kind["job"]["age_seconds"] < 60 and by_kind["job"]["status"] == "failed"
    assert set(body["oldest"]) == {"job", "email", "storage", "payment"}

    # One kind, paginated.
    only = client.get(f"{BASE}?kind=email&per_page=1", headers=headers).get_json()
    assert [i["id"] for i in only["items"]] == [email_id] and only["total"] == 1
    second = client.get(f"{BASE}?page=2&per_page=2", headers=headers).get_json()
    assert [i["kind"] for i in second["items"]] == ["storage", "job"] and second["total"] == 4

    email = client.get(f"{BASE}/email/{email_id}", headers=headers).get_json()["item"]
    assert [h["code"] for h in email["history"]] == ["EMAIL_UNAVAILABLE", "UPSTREAM_REJECTED"]
    assert email["details"]["to"] == "ada@example.com" and email["details"]["possible_duplicates"] == 1
    assert email["details"]["last_error"].startswith("UPSTREAM_REJECTED: ")
    stored = client.get(f"{BASE}/storage/{file_id}", headers=headers).get_json()["item"]
    assert stored["details"]["local_copy"] is True and stored["details"]["size"] == len(b"video-bytes")
    assert stored["history"][0]["code"] == "UPSTREAM_REJECTED"
    job = client.get(f"{BASE}/job/{job_id}", headers=headers).get_json()["item"]
    assert job["history"][-1]["code"] == "VALIDATION_ERROR" and job["history"][-1]["kind"] == "permanent"
    assert job["details"]["failure_analysis"] == "data_issue" and job["details"]["job_kind"] == BAD_KIND
    assert job["details"]["payload"]["upload"] == 3
    assert "sk_live_abcdefghijklmnop" not in json.dumps(job)  # secrets masked in the details
    payment = client.get(f"{BASE}/payment/1", headers=headers).get_json()["item"]
    assert payment["error_code"] == "PAYMENT_UNAPPLIED"


def test_point6_a_real_sendgrid_refusal_lands_in_the_inbox(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    """The email the SendGrid peer refuses for good (400, one attempt) is in the inbox with its error."""
    app = make_app(
        **FAST, SENDGRID_API_KEY=SendGridPeer.api_key, SENDGRID_API_HOST=sendgrid_peer.url, EMAIL_MAX_ATTEMPTS=1
    )
    sendgrid_peer.fail_next(400, "The to email does not contain a valid address.")
    with app.app_context():
        outbox_id = get_email().send("not-an-address", "Hello", "Body", dedup_key="welcome:9").outbox_id
        assert db.session.get(EmailOutbox, outbox_id).status == "failed"
        (item,) = app.extensions["inbox"].page("email")[0]
        row = db.session.get(EmailOutbox, outbox_id)
    assert item.id == outbox_id and item.title == "email welcome:9" and item.open
    assert item.error_code and row.last_error and item.error_code in row.last_error


# -- retry: the work goes back where it came from and is done ----------------------------------------------------


def test_point6_retried_email_is_sent_by_resend_outbox_to_sendgrid(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    app = make_app(**FAST, SENDGRID_API_KEY=SendGridPeer.api_key, SENDGRID_API_HOST=sendgrid_peer.url)
    email_id = failed_email(app, "render-finished:11")
    client = app.test_client()
    headers = admin(client)
    with app.app_context():
        assert get_email().resend_outbox() == 0  # a failed email is not resent by itself
    assert sendgrid_peer.count(custom_arg=("dedup_key", "render-finished:11")) == 0

    done = client.post(f"{BASE}/email/{email_id}/retry", headers=headers)
    assert done.status_code == 200, done.get_json()
    assert done.get_json() == {"message": "Retried email render-finished:11.", "kind": "email", "ids": [email_id]}
    with app.app_context():
        row = db.session.get(EmailOutbox, email_id)
        assert (row.status, row.attempts, row.failed_at) == ("queued", 0, None)
        assert row.errors[-1]["code"] == "RETRIED" and row.errors[-1]["kind"] == "retry"
        assert row.errors[-1]["message"].startswith("Retried by admin user ")
        assert get_email().resend_outbox() == 1
        assert db.session.get(EmailOutbox, email_id).status == "sent"
    assert sendgrid_peer.count(custom_arg=("dedup_key", "render-finished:11")) == 1
    assert client.get(BASE, headers=headers).get_json()["totals"]["email"] == 0
    (event,) = security_events(app, "failed_work_retried")
    assert event["kind"] == "email" and event["item_ids"] == [email_id] and isinstance(event["user_id"], int)
    # Retried again: it is no failed work any more (sent).
    again = client.post(f"{BASE}/email/{email_id}/retry", headers=headers)
    assert assert_error(again, 404)["code"] == "FAILED_WORK_NOT_FOUND"


def test_point6_retried_file_is_uploaded_by_sync_pending_to_the_bucket(
    make_app: Callable[..., Flask], gcs_emulator: GCSEmulator, gcs_bucket: str
) -> None:
    app = make_app(**FAST, GCS_BUCKET=gcs_bucket, GCS_ENDPOINT=gcs_emulator.url, GCS_TIMEOUT=2.0)
    client = app.test_client()
    headers = admin(client)
    breaker = app.extensions["breakers"].get("storage")
    with app.test_request_context():
        breaker.force_open("test")  # the bucket "fails": the save falls back to local storage
        saved = get_storage().save("renders/12/video.mp4", b"the-video", "video/mp4")
        assert saved.degraded and saved.location == "local"
        row = db.session.query(PendingSync).filter_by(key="renders/12/video.mp4").one()
        # What #13 point 3 does when the file exhausts its attempts: `failed`, with its real error.
        row.status, row.attempts, row.failed_at = "failed", 5, _now() - timedelta(minutes=3)
        row.errors = [{"code": "UPSTREAM_REJECTED", "kind": "permanent", "message": "403", "time": None}]
        db.session.commit()
        file_id = row.id
        breaker.reset("test")
    done = client.post(f"{BASE}/storage/{file_id}/retry", headers=headers)
    assert done.status_code == 200, done.get_json()
    with app.app_context():
        row = db.session.get(PendingSync, file_id)
        assert (row.status, row.attempts, row.next_attempt_at, row.failed_at) == ("pending", 0, None, None)
        assert row.errors[-1]["code"] == "RETRIED"
        assert get_storage().sync_pending() == 1
        assert db.session.get(PendingSync, file_id).synced_at is not None
    blob = storage_client(gcs_emulator.url).bucket(gcs_bucket).blob("renders/12/video.mp4")
    assert blob.download_as_bytes(timeout=5, retry=None) == b"the-video"
    (event,) = security_events(app, "failed_work_retried")
    assert event["kind"] == "storage" and event["item_ids"] == [file_id]


def test_point6_retried_job_runs(app: Flask) -> None:
    runs = {"n": 0}

    def handler(ctx: JobContext) -> dict[str, int]:
        runs["n"] += 1
        if runs["n"] == 1:
            raise ValidationError("The upload was not there yet", field="upload")
        return {"run": runs["n"]}

    REGISTRY.register(JobKind(FLAKY_KIND, handler, policy=RetryPolicy(permanent_retries=0)), replace=True)
    try:
        job_id = dead_job(app, FLAKY_KIND)
        client = app.test_client()
        headers = admin(client)
        done = client.post(f"{BASE}/job/{job_id}/retry", headers=headers)
        assert done.status_code == 200, done.get_json()
        with app.app_context():
            assert db.session.get(Job, job_id).status == QUEUED
        run_worker(app)
        with app.app_context():
            job = db.session.get(Job, job_id)
            assert job.status == SUCCEEDED and job.result == {"run": 2}
            assert [e["code"] for e in job.errors] == ["VALIDATION_ERROR", "REQUEUED"]
    finally:
        REGISTRY.unregister(FLAKY_KIND)
    assert security_events(app, "failed_work_retried")[0]["item_ids"] == [job_id]


def test_point6_bulk_retry_by_kind_retries_every_failed_email_up_to_the_limit(app: Flask) -> None:
    ids = [failed_email(app, f"receipt:{i}", minutes_ago=10 - i) for i in range(3)]
    other = failed_file(app, "renders/1.mp4")
    client = app.test_client()
    headers = admin(client)
    first = client.post(f"{BASE}/email/retry", headers=headers, json={"limit": 2})
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["ids"] == ids[:2]  # oldest first
    rest = client.post(f"{BASE}/email/retry", headers=headers, json={}).get_json()
    assert rest["ids"] == [ids[2]]
    assert client.post(f"{BASE}/email/retry", headers=headers, json={}).get_json()["ids"] == []
    totals = client.get(BASE, headers=headers).get_json()["totals"]
    assert totals["email"] == 0 and totals["storage"] == 1  # only that kind
    with app.app_context():
        assert {db.session.get(EmailOutbox, i).status for i in ids} == {"queued"}
        assert db.session.get(PendingSync, other).status == "failed"
    bad = client.post(f"{BASE}/email/retry", headers=headers, json={"limit": 5000})
    assert "limit" in assert_error(bad, 422)["details"]["fields"]
    assert assert_error(client.post(f"{BASE}/nope/retry", headers=headers, json={}), 404)["code"] == (
        "FAILED_WORK_KIND_UNKNOWN"
    )
    events = security_events(app, "failed_work_bulk_retried")
    assert [e["item_ids"] for e in events] == [ids[:2], [ids[2]], []]
    assert all(e["kind"] == "email" for e in events)


# -- discard, with a reason --------------------------------------------------------------------------------------


def test_point6_discard_needs_a_reason_and_is_kept_with_it_for_every_kind(app: Flask, bad_kind: str) -> None:
    job_id = dead_job(app)
    email_id = failed_email(app, "render-failed:3")
    file_id = failed_file(app, "renders/3.mp4")
    client = app.test_client()
    headers = admin(client)
    url = f"{BASE}/email/{email_id}/discard"
    assert assert_error(client.post(url, headers=headers), 415)["code"] == "UNSUPPORTED_MEDIA_TYPE"
    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 501}, {"reason": 5}, {"reason": "ok", "x": 1}):
        error = assert_error(client.post(url, headers=headers, json=body), 422)
        assert error["code"] == "VALIDATION_ERROR", body
    with app.app_context():
        assert db.session.get(EmailOutbox, email_id).status == "failed"  # nothing changed

    reason = "The user closed their account"
    for kind, item_id in (("job", job_id), ("email", email_id), ("storage", file_id)):
        done = client.post(f"{BASE}/{kind}/{item_id}/discard", headers=headers, json={"reason": reason})
        assert done.status_code == 200, done.get_json()
        assert done.get_json()["ids"] == [item_id]
        item = client.get(f"{BASE}/{kind}/{item_id}", headers=headers).get_json()["item"]
        assert item["status"] == "discarded"  # still on record until purged
        assert item["history"][-1]["code"] == "DISCARDED" and reason in item["history"][-1]["message"]
        again = client.post(f"{BASE}/{kind}/{item_id}/retry", headers=headers)
        assert assert_error(again, 409)["code"] == "FAILED_WORK_NOT_OPEN"
        again = client.post(f"{BASE}/{kind}/{item_id}/discard", headers=headers, json={"reason": reason})
        assert assert_error(again, 409)["code"] == "FAILED_WORK_NOT_OPEN"
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job.status == DEAD and job.archived_at is not None and job.archive_reason == reason
        email = db.session.get(EmailOutbox, email_id)
        assert (email.status, email.discard_reason) == ("discarded", reason) and email.discarded_at is not None
        stored = db.session.get(PendingSync, file_id)
        assert (stored.status, stored.discard_reason) == ("discarded", reason) and stored.discarded_at is not None
    assert client.get(BASE, headers=headers).get_json()["totals"] == {"job": 0, "email": 0, "storage": 0, "payment": 0}
    events = security_events(app, "failed_work_discarded")
    assert [(e["kind"], e["item_ids"], e["reason"]) for e in events] == [
        ("job", [job_id], reason),
        ("email", [email_id], reason),
        ("storage", [file_id], reason),
    ]
    assert all(isinstance(e["user_id"], int) and e["actor"].startswith("admin user ") for e in events)


# -- the API's envelopes -----------------------------------------------------------------------------------------


def test_point6_api_refuses_strangers_and_bad_input_in_the_envelope(app: Flask) -> None:
    email_id = failed_email(app, "welcome:5")
    client = app.test_client()
    assert assert_error(client.get(BASE), 401)["code"] == "TOKEN_MISSING"
    user = bearer(login(client, "plain@example.com")["access_token"])
    for method, url in (("GET", BASE), ("GET", f"{BASE}/email/{email_id}"), ("POST", f"{BASE}/email/{email_id}/retry")):
        assert assert_error(client.open(url, method=method, headers=user, json={}), 403)["code"] == "ADMIN_REQUIRED"
    with app.app_context():
        assert db.session.get(EmailOutbox, email_id).status == "failed"
    headers = admin(client)
    for query, field in (
        ("kind=bogus", "kind"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=", "page"),
        ("per_page=101", "per_page"),
        ("per_page=-1", "per_page"),
        ("page=101&per_page=100", "page"),  # deeper than the merged listing goes: give a kind
        ("sort=age", "sort"),
    ):
        error = assert_error(client.get(f"{BASE}?{query}", headers=headers), 422)
        assert error["code"] == "VALIDATION_ERROR" and field in error["details"]["fields"], (query, error)
    assert client.get(f"{BASE}?kind=email&page=101&per_page=100", headers=headers).status_code == 200
    assert assert_error(client.get(f"{BASE}/nope/1", headers=headers), 404)["code"] == "FAILED_WORK_KIND_UNKNOWN"
    assert assert_error(client.get(f"{BASE}/email/999999", headers=headers), 404)["code"] == "FAILED_WORK_NOT_FOUND"
    missing = client.post(f"{BASE}/job/999999/retry", headers=headers)
    assert assert_error(missing, 404)["code"] == "FAILED_WORK_NOT_FOUND"
    assert assert_error(client.get(f"{BASE}/email/abc", headers=headers), 404)
    with app.app_context():  # a sent email is no failed work
        row = db.session.get(EmailOutbox, email_id)
        row.status = "sent"
        db.session.commit()
    assert assert_error(client.get(f"{BASE}/email/{email_id}", headers=headers), 404)["code"] == "FAILED_WORK_NOT_FOUND"


def test_point6_a_failed_job_that_is_not_a_dead_letter_is_no_inbox_item(app: Flask) -> None:
    """Periodic ticks that gave up (`failed`) run again on the next tick: the inbox holds dead jobs only."""
    with app.app_context():
        job = enqueue("maintenance.noop", {}, idempotency_key=uuid.uuid4().hex)
        job.status, job.finished_at = FAILED, job.created_at
        db.session.commit()
        job_id = job.id
        assert app.extensions["inbox"].counts()["job"] == 0
    client = app.test_client()
    response = client.post(f"{BASE}/job/{job_id}/retry", headers=admin(client))
    assert assert_error(response, 404)["code"] == "FAILED_WORK_NOT_FOUND"


# -- the CLI -----------------------------------------------------------------------------------------------------


def cli(app: Flask, *args: str) -> Result:
    """`flask monitoring failed-work <args>` in-process."""
    return app.test_cli_runner().invoke(args=["monitoring", "failed-work", *args])


def test_point6_cli_lists_shows_retries_and_discards_like_the_api(app: Flask, bad_kind: str) -> None:
    job_id = dead_job(app)
    email_id = failed_email(app, "render-finished:21", minutes_ago=45)
    file_id = failed_file(app, "renders/21.mp4", minutes_ago=5)

    listed = cli(app, "list")
    assert listed.exit_code == 0, listed.output
    assert "email render-finished:21" in listed.output and "UPSTREAM_REJECTED" in listed.output
    assert "45m" in listed.output and f"{BAD_KIND} job {job_id}" in listed.output
    data = json.loads(cli(app, "list", "--json").output)
    client = app.test_client()
    headers = admin(client)
    api = client.get(BASE, headers=headers).get_json()
    assert data["totals"] == api["totals"] == {"job": 1, "email": 1, "storage": 1, "payment": 0}
    assert [(i["kind"], i["id"]) for i in data["items"]] == [(i["kind"], i["id"]) for i in api["items"]]
    only = json.loads(cli(app, "list", "--kind", "storage", "--json").output)
    assert [i["id"] for i in only["items"]] == [file_id]

    shown = cli(app, "show", "email", str(email_id))
    assert shown.exit_code == 0 and "verified Sender Identity" in shown.output and "EMAIL_UNAVAILABLE" in shown.output
    assert json.loads(cli(app, "show", "email", str(email_id), "--json").output)["item"]["id"] == email_id

    retried = cli(app, "retry", "email", str(email_id), "--json")
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.output)["ids"] == [email_id]
    assert cli(app, "discard", "storage", str(file_id)).exit_code != 0  # no reason: refused
    discarded = cli(app, "discard", "storage", str(file_id), "--reason", "bucket deleted on purpose")
    assert discarded.exit_code == 0, discarded.output
    bulk = cli(app, "retry", "job", "--all", "--limit", "10", "--json")
    assert bulk.exit_code == 0 and json.loads(bulk.output)["ids"] == [job_id]

    for args, text in (
        (("show", "nope", "1"), "FAILED_WORK_KIND_UNKNOWN"),
        (("show", "email", "424242"), "FAILED_WORK_NOT_FOUND"),
        (("retry", "email", str(email_id)), "FAILED_WORK_NOT_FOUND"),  # retried: queued, no failed work
        (("retry", "storage", str(file_id)), "FAILED_WORK_NOT_OPEN"),  # discarded
        (("retry", "email"), "an id or --all"),
        (("list", "--kind", "nope"), "kind must be one of"),
    ):
        result = cli(app, *args)
        assert result.exit_code != 0 and text in result.output, (args, result.output)

    with app.app_context():
        assert db.session.get(EmailOutbox, email_id).status == "queued"
        assert db.session.get(PendingSync, file_id).status == "discarded"
        assert db.session.get(Job, job_id).status == QUEUED
    actor = cli_actor()
    retried_events = security_events(app, "failed_work_retried")
    assert [(e["kind"], e["item_ids"], e["actor"]) for e in retried_events] == [("email", [email_id], actor)]
    (discard,) = security_events(app, "failed_work_discarded")
    assert (discard["actor"], discard["reason"], discard["item_ids"]) == (actor, "bucket deleted on purpose", [file_id])
    (bulk_event,) = security_events(app, "failed_work_bulk_retried")
    assert bulk_event["actor"] == actor and bulk_event["item_ids"] == [job_id]


# -- the alert rule ----------------------------------------------------------------------------------------------


def test_point6_failed_work_alert_fires_while_old_items_wait_and_resolves(
    app: Flask, webhook_receiver: WebhookReceiver
) -> None:
    client = app.test_client()
    headers = admin(client)
    rule = {
        "name": "stuck-emails",
        "kind": "failed_work",
        "params": {"older_than_minutes": 15, "kind": "email"},
        "channels": [{"type": "webhook", "url": webhook_receiver.url + "/hook"}],
    }
    saved = client.post("/admin/api/monitoring/alerts/configure", headers=headers, json=rule)
    assert saved.status_code == 200, saved.get_json()
    evaluate = "/admin/api/monitoring/alerts/evaluate"
    failed_email(app, "young", minutes_ago=5)  # too young to page about
    failed_file(app, "renders/old.mp4", minutes_ago=60)  # old, but another kind
    assert client.post(evaluate, headers=headers).get_json()["events"] == {}
    old = failed_email(app, "old", minutes_ago=20)
    assert client.post(evaluate, headers=headers).get_json()["events"] == {"stuck-emails": "firing"}
    assert client.post(evaluate, headers=headers).get_json()["events"] == {}  # still firing: no second page
    client.post(f"{BASE}/email/{old}/discard", headers=headers, json={"reason": "sent by hand"})
    assert client.post(evaluate, headers=headers).get_json()["events"] == {"stuck-emails": "resolved"}
    with app.app_context():  # what the job worker does with the deliveries the evaluations handed off
        deliver_pending(app, datetime.now(UTC))
    firing, resolved = webhook_receiver.bodies
    assert firing["event"] == "firing" and firing["rule"] == "stuck-emails"
    assert "1 failed-work email item(s) older than 15 min" in firing["text"]
    assert resolved["event"] == "resolved"

    # Every kind, with a threshold.
    rule.update(name="inbox-backlog", params={"older_than_minutes": 1, "threshold": 2})
    assert client.post("/admin/api/monitoring/alerts/configure", headers=headers, json=rule).status_code == 200
    assert client.post(evaluate, headers=headers).get_json()["events"] == {"inbox-backlog": "firing"}  # young + file


def test_point6_failed_work_alert_params_are_validated(app: Flask) -> None:
    client = app.test_client()
    headers = admin(client)
    hook = [{"type": "webhook", "url": "http://127.0.0.1:9/x"}]
    for params in (
        {},
        {"older_than_minutes": "ten"},
        {"older_than_minutes": -1},
        {"older_than_minutes": 5, "kind": "render"},
        {"older_than_minutes": 5, "threshold": 0},
        {"older_than_minutes": 5, "threshold": 1.5},
        {"older_than_minutes": 5, "window_seconds": 60},
    ):
        body = {"name": "x", "kind": "failed_work", "params": params, "channels": hook}
        response = client.post("/admin/api/monitoring/alerts/configure", headers=headers, json=body)
        assert assert_error(response, 422)["code"] == "VALIDATION_ERROR", params


# -- /metrics ----------------------------------------------------------------------------------------------------


class BrokenSource(FakePaymentSource):
    """A source whose table cannot be read."""

    def count(self, *, failed_before: datetime | None = None) -> int:
        raise RuntimeError("payments table is locked")


def test_point6_metrics_show_the_inbox_size_by_kind_and_a_broken_source_never_breaks_the_scrape(
    app: Flask, bad_kind: str
) -> None:
    dead_job(app)
    failed_email(app, "a", minutes_ago=30)
    failed_email(app, "b", minutes_ago=10)
    client = app.test_client()
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "oriel_failed_work_items", kind="email") == 2
    assert sample(text, "oriel_failed_work_items", kind="job") == 1
    assert sample(text, "oriel_failed_work_items", kind="storage") == 0
    assert 30 * 60 - 5 <= sample(text, "oriel_failed_work_oldest_age_seconds", kind="email") <= 31 * 60
    assert sample(text, "oriel_failed_work_oldest_age_seconds", kind="storage") == 0

    with_source(app, BrokenSource())
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert sample(text, "oriel_failed_work_items", kind="email") == 2  # the others still report
    assert 'oriel_failed_work_items{kind="payment"}' not in text
    assert "oriel_circuit_breaker_state" in text and "oriel_queue_depth" in text


# -- retention ---------------------------------------------------------------------------------------------------


def _old_job(app: Flask, status: str, *, archived_days: float | None, dead_days: float = 60) -> int:
    with app.app_context():
        job = enqueue("maintenance.noop", {}, idempotency_key=uuid.uuid4().hex)
        at = _now()
        job.status = status
        job.dead_at = at - timedelta(days=dead_days) if status == DEAD else None
        job.finished_at = at - timedelta(days=dead_days)
        job.archived_at = at - timedelta(days=archived_days) if archived_days is not None else None
        db.session.add(JobStep(job_id=job.id, name="step-1", attempt=1, created_at=at, result=None))
        db.session.commit()
        return int(job.id)


def _row(app: Flask, model: Any, **values: Any) -> int:
    with app.app_context():
        row = model(**values)
        db.session.add(row)
        db.session.commit()
        return int(row.id)


def _email(app: Flask, key: str, status: str, **times: Any) -> int:
    return _row(
        app, EmailOutbox, dedup_key=key, to_address="a@example.com", subject="s", text_body="t", status=status, **times
    )


def _file(app: Flask, key: str, status: str, *, mtime_days: float | None = None, **times: Any) -> int:
    row_id = _row(app, PendingSync, key=key, content_type="video/mp4", size=1, status=status, **times)
    if mtime_days is not None:
        with app.app_context():
            path = get_storage().local_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        stamp = (_now() - timedelta(days=mtime_days)).timestamp()
        os.utime(path, (stamp, stamp))
    return row_id


def _exists(app: Flask, model: Any, ids: list[int]) -> list[bool]:
    with app.app_context():
        return [db.session.get(model, i, populate_existing=True) is not None for i in ids]


def test_point6_retention_purges_only_what_is_old_and_given_up(make_app: Callable[..., Flask]) -> None:
    app = make_app(FAILED_WORK_RETENTION_DAYS=30)
    days = lambda n: _now() - timedelta(days=n)  # noqa: E731 - a local shorthand
    jobs_gone = [_old_job(app, DEAD, archived_days=40), _old_job(app, FAILED, archived_days=31)]
    jobs_kept = [
        _old_job(app, DEAD, archived_days=10),  # archived recently (the 7-day TTL): kept for now
        _old_job(app, DEAD, archived_days=None, dead_days=90),  # old but open: an admin has not decided
        _old_job(app, FAILED, archived_days=None, dead_days=90),
    ]
    emails_gone = [
        _email(app, "e1", "discarded", discarded_at=days(40), created_at=days(41)),
        _email(app, "e2", "sent", sent_at=days(31), created_at=days(31)),
    ]
    emails_kept = [
        _email(app, "e3", "discarded", discarded_at=days(5), created_at=days(41)),
        _email(app, "e4", "sent", sent_at=days(1), created_at=days(90)),
        _email(app, "e5", "failed", failed_at=days(90), created_at=days(90)),  # open, however old
        _email(app, "e6", "queued", created_at=days(90)),
        _email(app, "e7", "sending", created_at=days(90)),
    ]
    files_gone = [
        _file(app, "old/discarded.mp4", "discarded", discarded_at=days(40), mtime_days=41),
        _file(app, "old/resaved.mp4", "discarded", discarded_at=days(40), mtime_days=0),
        _file(app, "old/synced.mp4", "synced", synced_at=days(35)),
    ]
    files_kept = [
        _file(app, "new/discarded.mp4", "discarded", discarded_at=days(2), mtime_days=3),
        _file(app, "old/failed.mp4", "failed", failed_at=days(90), mtime_days=90),
        _file(app, "old/pending.mp4", "pending", created_at=days(90), mtime_days=90),
        _file(app, "new/synced.mp4", "synced", synced_at=days(3)),
    ]
    with app.app_context():
        job = enqueue("maintenance.failed_work_retention", {})
    run_worker(app)
    with app.app_context():
        record = db.session.get(Job, job.id)
        assert record.status == SUCCEEDED, record.errors
        assert record.result == {"deleted": {"job": 2, "email": 2, "storage": 3, "payment": 0}, "retention_days": 30.0}
        local = {
            key: get_storage().local_file(key).exists()
            for key in (
                "old/discarded.mp4",
                "old/resaved.mp4",
                "new/discarded.mp4",
                "old/failed.mp4",
                "old/pending.mp4",
            )
        }
        steps = db.session.query(JobStep).filter(JobStep.job_id.in_(jobs_gone)).count()
    assert _exists(app, Job, jobs_gone) == [False, False] and steps == 0
    assert _exists(app, Job, jobs_kept) == [True, True, True]
    assert _exists(app, EmailOutbox, emails_gone) == [False, False]
    assert all(_exists(app, EmailOutbox, emails_kept))
    assert _exists(app, PendingSync, files_gone) == [False, False, False]
    assert all(_exists(app, PendingSync, files_kept))
    # The discarded file's local copy goes with it; one saved again after its discard stays (new bytes).
    assert local == {
        "old/discarded.mp4": False,
        "old/resaved.mp4": True,
        "new/discarded.mp4": True,
        "old/failed.mp4": True,
        "old/pending.mp4": True,
    }


def test_point6_a_failing_source_does_not_stop_the_others_from_being_purged(app: Flask) -> None:
    class Exploding(FakePaymentSource):
        def purge(self, before: datetime) -> int:
            raise RuntimeError("payments table is locked")

    with_source(app, Exploding())
    gone = _email(app, "old", "discarded", discarded_at=_now() - timedelta(days=40))
    with app.app_context():
        result = app.extensions["inbox"].purge(_now() - timedelta(days=30))
    assert result.deleted == {"job": 0, "email": 1, "storage": 0}
    assert result.failed == {"payment": "RuntimeError: payments table is locked"}
    assert _exists(app, EmailOutbox, [gone]) == [False]


def test_point6_retention_setting_is_read_and_must_be_positive() -> None:
    from config import Config, ConfigError, TestingConfig

    assert Config.FAILED_WORK_RETENTION_DAYS == 30
    assert TestingConfig.from_env({"FAILED_WORK_RETENTION_DAYS": "7.5"}).FAILED_WORK_RETENTION_DAYS == 7.5
    with pytest.raises(ConfigError):
        TestingConfig.from_env({"FAILED_WORK_RETENTION_DAYS": "0"})
    with pytest.raises(ConfigError):
        TestingConfig.from_env({"FAILED_WORK_RETENTION_DAYS": "a month"})


# -- the inbox on PostgreSQL ---------------------------------------------------------------------------------------


def test_point6_retry_discard_and_purge_on_postgresql(pg_app: Flask, bad_kind: str) -> None:
    app = pg_app
    job_id = dead_job(app)
    email_id = failed_email(app, "pg:1")
    file_id = failed_file(app, "renders/pg.mp4")
    inbox: Inbox = app.extensions["inbox"]
    with app.app_context():
        assert inbox.counts() == {"job": 1, "email": 1, "storage": 1, "payment": 0}
        early = _now() - timedelta(minutes=20)
        assert inbox.counts(failed_before=early) == {"job": 0, "email": 1, "storage": 1, "payment": 0}
        inbox.retry("email", email_id, actor="test")
        inbox.discard("storage", file_id, reason="gone", actor="test")
        inbox.discard("job", job_id, reason="gone", actor="test")
        assert inbox.counts() == {"job": 0, "email": 0, "storage": 0, "payment": 0}
        assert inbox.get("job", job_id).status == "discarded"
        result = inbox.purge(_now() + timedelta(seconds=5))  # everything given up counts as old here
    assert result.deleted == {"job": 1, "email": 0, "storage": 1, "payment": 0} and not result.failed
    assert _exists(app, Job, [job_id]) == [False] and _exists(app, EmailOutbox, [email_id]) == [True]


# -- the Inbox itself, with fakes ----------------------------------------------------------------------------------


def test_point6_inbox_routes_actions_and_reports_races_as_not_open() -> None:
    """A retry that loses a race (the source says no) is 409; a failing source calls the recovery hook."""

    class Racing(FakePaymentSource):
        def retry(self, item_id: int, *, actor: str) -> bool:
            return False  # another admin got there first

    recovered: list[bool] = []
    with pytest.raises(ValueError, match="two failed-work sources"):
        Inbox([Racing(), BrokenSource()])  # one source per kind
    inbox = Inbox([Racing()], on_error=lambda: recovered.append(True))
    with pytest.raises(FailedWorkNotOpenError):
        inbox.retry("payment", 1, actor="a")
    with pytest.raises(FailedWorkKindUnknownError):
        inbox.get("email", 1)
    broken = Inbox([BrokenSource()], on_error=lambda: recovered.append(True))
    assert broken.sizes() == {} and recovered == [True]
