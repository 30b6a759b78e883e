"""#13 point 2: a permanent refusal of our credentials or permissions is a configuration fault, shown and paged.

The real SDKs talk to the real peers (gcp-storage-emulator, the SendGrid peer) through the fault proxy,
which answers 401/403 as a revoked key or a missing permission would. The fault is recorded in
`service_faults` by whichever process met it (a second process on the same database stands in for a job
worker), shown on the health endpoint and the CLI as `misconfigured` with the real error, pages through a
`service_misconfigured` alert rule, and clears when the operation succeeds again or an admin resets the
breaker. Recording never fails nor holds up the call, even with the database down.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select

from backend.app.errors import APIError
from backend.app.extensions import db
from backend.app.models import ServiceFault
from backend.app.monitoring.alerts.delivery import deliver_pending
from backend.app.monitoring.service_faults import get_monitor
from backend.app.resilience.recovery import get_breaker, with_error_recovery
from backend.app.services import get_email, get_storage
from tests.harness.app import ADMIN_EMAIL, TEST_JWT_SECRET_KEY, TEST_SECRET_KEY, bearer, login, read_log
from tests.harness.contract import assert_error
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.gcs_emulator import GCSEmulator
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.peers.webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
HEALTH = "/admin/api/monitoring/health/services"
FAST: dict[str, Any] = {"RETRY_SLEEP_ENABLED": False, "HEALTH_PROBE_DEADLINE": 3.0}


def storage_settings(bucket: str, proxy: FaultProxy, signing: Any = None) -> dict[str, Any]:
    """An app whose bucket is the emulator behind `proxy`."""
    settings: dict[str, Any] = {**FAST, "GCS_BUCKET": bucket, "GCS_ENDPOINT": proxy.url, "GCS_TIMEOUT": 2.0}
    if signing is not None:
        settings["GCS_SIGNING_CREDENTIALS"] = signing
    return settings


def admin(client: FlaskClient) -> dict[str, str]:
    """The admin's bearer header."""
    return bearer(login(client, ADMIN_EMAIL)["access_token"])


def health(client: FlaskClient, headers: dict[str, str]) -> dict[str, Any]:
    """The admin health report."""
    response = client.get(HEALTH, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def upload(client: FlaskClient, headers: dict[str, str], audio: AudioFactory) -> Any:
    """POST /api/uploads with a real audio file."""
    data = audio.make("wav", seconds=0.5).read_bytes()
    return client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(data), "song.wav")},
        headers=headers,
        content_type="multipart/form-data",
    )


def fault_rows(app: Flask) -> list[ServiceFault]:
    """Every service_faults row, detached."""
    with app.app_context():
        rows = list(db.session.scalars(select(ServiceFault).order_by(ServiceFault.id)))
        for row in rows:
            db.session.expunge(row)
        return rows


@pytest.mark.parametrize(
    ("status", "reason", "probe_refused"),
    [
        (403, "google Forbidden 403", False),  # a missing write permission: the probe's read still passes
        (401, "google-auth InvalidOperation (credentials)", True),  # a revoked key: every request is refused
    ],
)
def test_point2_a_bucket_refusing_an_upload_shows_storage_misconfigured_with_the_real_error(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
    make_fault_proxy: Callable[..., FaultProxy],
    audio_files: AudioFactory,
    status: int,
    reason: str,
    probe_refused: bool,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = make_app(**storage_settings(gcs_bucket, proxy, gcs_signing_credentials))
    client = app.test_client()
    headers = admin(client)
    user = bearer(login(client)["access_token"])
    assert health(client, headers)["services"]["storage"]["probe"]["status"] == "ok"
    proxy.status(status, path=None if probe_refused else "/upload/")

    before = time.time()
    for _ in range(3):
        error = assert_error(upload(client, user, audio_files), 503, "SERVICE_MISCONFIGURED")
        assert error["recoverable"] is False and error["details"]["service"] == "storage"

    body = health(client, headers)
    storage = body["services"]["storage"]
    probe = storage["probe"]
    assert probe["status"] == "misconfigured"  # not "error", not "ok"
    assert probe["live_status"] == ("misconfigured" if probe_refused else "ok")
    fault = probe["error"]
    assert (fault["code"], fault["http_status"], fault["operation"]) == ("SERVICE_MISCONFIGURED", status, "upload")
    assert fault["reason"] == reason and fault["count"] == 3
    assert fault["since"] <= fault["last_seen"]
    assert fault["since"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before - 1))
    assert f"HTTP {status}" in probe["detail"] and "upload refused" in probe["detail"]
    assert storage["faults"] == [{"service": "storage", **fault}]
    assert body["service_faults"] == storage["faults"]
    assert body["status"] == "degraded"  # never "ok" while a service is misconfigured
    assert storage["breaker"]["state"] == "closed"  # a refusal is not an outage: nothing tripped

    cli = app.test_cli_runner().invoke(args=["monitoring", "health"])
    assert cli.exit_code == 0, cli.output
    assert "misconfigured" in cli.output
    assert f"Misconfigured: storage upload refused: SERVICE_MISCONFIGURED (HTTP {status}" in cli.output

    # Fixed (the permission is granted again): the next upload succeeds and clears the fault.
    proxy.passthrough()
    assert upload(client, user, audio_files).status_code == 201
    fixed = health(client, headers)
    assert fixed["services"]["storage"]["probe"]["status"] == "ok"
    assert fixed["services"]["storage"]["faults"] == [] and fixed["service_faults"] == []
    [row] = fault_rows(app)
    assert row.cleared_at is not None and row.count == 3 and row.http_status == status


def test_point2_sendgrid_refusing_our_key_shows_email_misconfigured_and_the_email_is_kept(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = make_app(**FAST, SENDGRID_API_KEY=sendgrid_peer.api_key, SENDGRID_API_HOST=proxy.url, SENDGRID_TIMEOUT=2.0)
    client = app.test_client()
    headers = admin(client)
    proxy.status(401, body={"errors": [{"message": "The provided authorization grant is invalid", "field": None}]})
    with app.app_context():
        result = get_email().send("user@example.com", "Your render", "It is ready.", dedup_key="point2-email-1")
    assert result.status != "sent"  # kept in the outbox, never claimed sent
    assert sendgrid_peer.messages == []

    body = health(client, headers)
    email = body["services"]["email"]
    assert email["probe"]["status"] == "misconfigured"
    assert email["probe"]["live_status"] == "misconfigured"  # the live probe is refused too (GET /v3/scopes)
    error = email["probe"]["error"]
    assert (error["code"], error["http_status"], error["operation"]) == ("SERVICE_MISCONFIGURED", 401, "send")
    assert error["reason"] == "sendgrid UnauthorizedError 401"
    assert body["status"] == "degraded"
    assert sendgrid_peer.api_key not in json.dumps(body)

    proxy.passthrough()  # the key is valid again: the next email goes out and the fault clears
    with app.app_context():
        assert get_email().send("user@example.com", "Receipt", "Thanks.", dedup_key="point2-email-2").status == "sent"
    assert len(sendgrid_peer.messages) == 1
    fixed = health(client, headers)["services"]["email"]
    assert fixed["probe"]["status"] == "ok" and fixed["faults"] == []


WORKER_SCRIPT = """
import json, sys
from backend.app import create_app
from backend.app.errors import APIError
from backend.app.services import get_storage
from config import TestingConfig

app = create_app(TestingConfig, **json.loads(sys.argv[1]))
with app.app_context():
    try:
        get_storage().save("renders/42.mp4", b"video", "video/mp4")
    except APIError as exc:
        print(exc.code)
# No flush here: the process's exit writes what it recorded.
"""


def test_point2_a_fault_recorded_by_another_process_shows_on_this_ones_health_and_clears_everywhere(
    make_app: Callable[..., Flask],
    tmp_path: Path,
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    make_fault_proxy: Callable[..., FaultProxy],
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    settings = {**storage_settings(gcs_bucket, proxy), "SERVICE_FAULTS_REFRESH_SECONDS": 0.5}
    web = make_app(**settings)
    client = web.test_client()
    headers = admin(client)
    assert health(client, headers)["service_faults"] == []
    with web.app_context():
        assert get_storage().exists("renders/none.mp4") is False  # the web process's cache now says: no fault

    proxy.status(403, path="/upload/")
    worker_settings = {
        **settings,
        "SECRET_KEY": TEST_SECRET_KEY,
        "JWT_SECRET_KEY": TEST_JWT_SECRET_KEY,
        "LOG_DIR": str(tmp_path / "worker-logs"),
        "SQLALCHEMY_DATABASE_URI": web.config["SQLALCHEMY_DATABASE_URI"],  # the same database, another process
    }
    worker = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, json.dumps(worker_settings)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.strip() == "SERVICE_MISCONFIGURED"

    body = health(client, headers)  # this process never called the bucket's upload
    storage = body["services"]["storage"]
    assert storage["probe"]["status"] == "misconfigured" and storage["probe"]["live_status"] == "ok"
    assert storage["probe"]["error"]["http_status"] == 403 and storage["probe"]["error"]["operation"] == "upload"
    assert body["status"] == "degraded"

    # Fixed: the web process's next successful upload clears the worker's fault, once its cache of open
    # faults is due for a re-read (SERVICE_FAULTS_REFRESH_SECONDS).
    proxy.passthrough()
    time.sleep(0.6)
    with web.app_context():
        assert get_storage().save("renders/43.mp4", b"video", "video/mp4").location == "bucket"
    assert health(client, headers)["service_faults"] == []


def rule(webhook: WebhookReceiver, **params: Any) -> dict[str, Any]:
    """A service_misconfigured rule paging the webhook receiver."""
    return {
        "name": "storage-misconfigured",
        "kind": "service_misconfigured",
        "params": params,
        "channels": [{"type": "webhook", "url": webhook.url + "/alerts"}],
        "severity": "CRITICAL",
        "cooldown_seconds": 0,
    }


def test_point2_the_alert_fires_while_the_fault_is_open_and_resolves_when_the_operation_succeeds(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    make_fault_proxy: Callable[..., FaultProxy],
    webhook_receiver: WebhookReceiver,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = make_app(**storage_settings(gcs_bucket, proxy))
    client = app.test_client()
    headers = admin(client)
    configured = client.post("/admin/api/monitoring/alerts/configure", headers=headers, json=rule(webhook_receiver))
    assert configured.status_code == 200, configured.get_json()
    evaluate = "/admin/api/monitoring/alerts/evaluate"
    assert client.post(evaluate, headers=headers).get_json()["events"] == {}

    proxy.status(403, path="/upload/")
    with app.app_context(), pytest.raises(APIError) as refused:
        get_storage().save("renders/1.mp4", b"video", "video/mp4")
    assert refused.value.code == "SERVICE_MISCONFIGURED"

    assert client.post(evaluate, headers=headers).get_json()["events"] == {"storage-misconfigured": "firing"}
    with app.app_context():  # what the job worker does with the delivery the evaluation handed off
        deliver_pending(app, datetime.now(UTC))
    (page,) = webhook_receiver.wait_for(1)
    assert page.json["event"] == "firing" and page.json["rule"] == "storage-misconfigured"
    assert page.json["text"].startswith("[FIRING] storage-misconfigured")
    assert "storage upload refused: SERVICE_MISCONFIGURED (HTTP 403, google Forbidden 403)" in page.json["text"]
    assert client.post(evaluate, headers=headers).get_json()["events"] == {}  # still firing: paged once

    proxy.passthrough()
    with app.app_context():
        assert get_storage().save("renders/1.mp4", b"video", "video/mp4").location == "bucket"
    assert client.post(evaluate, headers=headers).get_json()["events"] == {"storage-misconfigured": "resolved"}
    with app.app_context():
        deliver_pending(app, datetime.now(UTC))
    assert [d.json["event"] for d in webhook_receiver.wait_for(2)] == ["firing", "resolved"]


def test_point2_an_admin_breaker_reset_clears_the_fault_and_resolves_the_alert(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    make_fault_proxy: Callable[..., FaultProxy],
    webhook_receiver: WebhookReceiver,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = make_app(**storage_settings(gcs_bucket, proxy))
    client = app.test_client()
    headers = admin(client)
    client.post("/admin/api/monitoring/alerts/configure", headers=headers, json=rule(webhook_receiver))
    proxy.status(403, path="/upload/")
    with app.app_context(), pytest.raises(APIError):
        get_storage().save("renders/1.mp4", b"video", "video/mp4")
    assert client.post("/admin/api/monitoring/alerts/evaluate", headers=headers).get_json()["events"] == {
        "storage-misconfigured": "firing"
    }
    with app.app_context():
        assert get_breaker("storage").state.value == "closed"  # nothing for a reset to change but the fault

    reset = client.post("/admin/api/monitoring/circuit-breakers/reset/storage", headers=headers)
    assert reset.status_code == 200
    body = health(client, headers)
    assert body["services"]["storage"]["probe"]["status"] == "ok" and body["service_faults"] == []
    [row] = fault_rows(app)
    assert row.cleared_at is not None
    assert client.post("/admin/api/monitoring/alerts/evaluate", headers=headers).get_json()["events"] == {
        "storage-misconfigured": "resolved"
    }
    resets = [e for e in read_log(app, "security.log") if e.get("event_type") == "circuit_breaker_reset"]
    assert resets and resets[-1]["breaker"] == "storage"

    # The key is still wrong: the next refusal opens the fault again (a reset is not a fix).
    with app.app_context(), pytest.raises(APIError):
        get_storage().save("renders/2.mp4", b"video", "video/mp4")
    again = health(client, headers)["services"]["storage"]
    assert again["probe"]["status"] == "misconfigured" and again["probe"]["error"]["count"] == 1


def test_point2_a_refusal_written_late_never_reopens_a_fault_cleared_after_it(
    make_app: Callable[..., Flask],
    tmp_path: Path,
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    make_fault_proxy: Callable[..., FaultProxy],
) -> None:
    """Two processes on one database: what happened last wins, whatever order the writes land in."""
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    first = make_app(**storage_settings(gcs_bucket, proxy))
    second = make_app(**storage_settings(gcs_bucket, proxy), SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/./test.db")
    slow, fast = get_monitor(first), get_monitor(second)
    assert slow is not None and fast is not None
    slow.write_seconds = fast.write_seconds = 3600.0  # only flush() writes a repeated refusal now
    proxy.status(403, path="/upload/")
    for app in (second, first, first):
        with app.app_context(), pytest.raises(APIError):
            get_storage().save("renders/1.mp4", b"video", "video/mp4")
    assert fast.flush() and slow.flush()
    [row] = fault_rows(first)
    assert row.count == 3 and row.cleared_at is None  # both processes' refusals add up

    with first.app_context(), pytest.raises(APIError):
        get_storage().save("renders/1.mp4", b"video", "video/mp4")  # pending in `first` (throttled)
    with second.app_context():
        get_breaker("storage").reset("admin user 1")  # the admin resets after that refusal
    assert slow.flush()  # `first` writes its older refusal only now
    [row] = fault_rows(first)
    assert row.cleared_at is not None  # the reset came later: it stays cleared

    with first.app_context(), pytest.raises(APIError):
        get_storage().save("renders/1.mp4", b"video", "video/mp4")  # a refusal after the reset
    assert slow.flush()
    [row] = fault_rows(first)
    assert row.cleared_at is None and row.count == 1  # reopened, counted afresh


def test_point2_successes_and_repeated_refusals_barely_touch_the_database(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    make_fault_proxy: Callable[..., FaultProxy],
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = make_app(**storage_settings(gcs_bucket, proxy), SERVICE_FAULTS_WRITE_SECONDS=60.0)
    monitor = get_monitor(app)
    assert monitor is not None
    statements: list[str] = []
    with app.app_context():
        engine = db.engine

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "service_faults" in statement:
            statements.append(statement.split()[0])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with app.app_context():
            storage = get_storage()
            for n in range(20):
                storage.exists(f"renders/{n}.mp4")
            assert monitor.flush()
            assert statements == ["SELECT"]  # one look at the open faults, then a fresh cache: nothing more
            proxy.status(403, path="/upload/")
            for _ in range(20):
                with pytest.raises(APIError):
                    storage.save("renders/1.mp4", b"video", "video/mp4")
            deadline = time.monotonic() + 5
            while len(statements) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)  # the writer thread records the first refusal at once
            time.sleep(0.2)
            assert statements[1:] == ["UPDATE", "INSERT"]  # the other 19 wait for the interval, in memory
            assert monitor.flush()
            [row] = fault_rows(app)
            assert row.count == 20  # none lost to the throttle
    finally:
        event.remove(engine, "before_cursor_execute", seen)


@with_error_recovery("storage", "metadata", max_retries=0, idempotent=True)
def metadata(bucket: Any, name: str) -> Any:
    """A guarded bucket read that needs no database (the adapter's own reads look for a local copy first)."""
    return bucket.get_blob(name, timeout=2, retry=None)


def test_point2_the_database_down_never_fails_nor_holds_up_the_call_and_loses_nothing(
    make_app: Callable[..., Flask],
    pg_app: Flask,
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    make_fault_proxy: Callable[..., FaultProxy],
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from tests.harness.peers.tcp_fault_proxy import TcpFaultProxy

    parts = urlsplit(pg_app.config["SQLALCHEMY_DATABASE_URI"])  # pg_app empties the tables afterwards
    database = TcpFaultProxy(parts.port or 5432, target_host=parts.hostname or "127.0.0.1")
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    bucket = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    try:
        app = make_app(
            **storage_settings(gcs_bucket, bucket),
            SQLALCHEMY_DATABASE_URI=urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{database.port}")),
            SERVICE_FAULTS_RETRY_SECONDS=0.2,
        )
        monitor = get_monitor(app)
        assert monitor is not None
        bucket.status(403, path="/upload/")
        database.down()
        with app.app_context():
            storage = get_storage()
            started = time.perf_counter()
            with pytest.raises(APIError) as refused:
                storage.save("renders/1.mp4", b"video", "video/mp4")
            assert refused.value.code == "SERVICE_MISCONFIGURED"  # the call's own error, not the database's
            # A success whose check of the open faults cannot reach the database now.
            assert metadata(storage._bucket(), "renders/none.mp4") is None
            assert time.perf_counter() - started < 1.5
            time.sleep(0.5)  # the writer tried (and retried) meanwhile
            assert monitor.flush() is False and monitor.failed_writes >= 2
        warnings = [line for line in read_log(app, "app.log") if "could not write" in line["message"]]
        assert len(warnings) == 1  # once per outage, not once per retry

        database.up()
        deadline = time.monotonic() + 5
        while fault_rows(pg_app) == [] and time.monotonic() < deadline:
            time.sleep(0.05)  # the writer retries by itself
        [row] = fault_rows(pg_app)
        assert (row.service, row.operation, row.http_status, row.count) == ("storage", "upload", 403, 1)
        assert row.cleared_at is None
    finally:
        database.close()
