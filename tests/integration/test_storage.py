"""Storage adapter: the real google-cloud-storage SDK against gcp-storage-emulator, and the local backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select, update

from backend.app.errors import APIError, NotFoundError, ValidationError
from backend.app.resilience.recovery import degraded_services, get_breaker
from backend.app.services import get_storage
from backend.app.services.storage import StorageService, StoredObject
from backend.app.timeutil import as_utc, utcnow
from tests.harness.app import read_log
from tests.harness.peers.gcs_emulator import GCSEmulator, storage_client

FAST = {"RETRY_SLEEP_ENABLED": False}


def gcs_app(make_app: Callable[..., Flask], endpoint: str, bucket: str, credentials: Any, **extra: Any) -> Flask:
    """An app whose storage is the emulator's bucket (through `endpoint`, maybe a fault proxy)."""
    settings: dict[str, Any] = {
        **FAST,
        "GCS_BUCKET": bucket,
        "GCS_ENDPOINT": endpoint,
        "GCS_TIMEOUT": 0.5,
        "GCS_SIGNING_CREDENTIALS": credentials,
    }
    settings.update(extra)
    return make_app(**settings)


def test_save_to_the_emulator_bucket_reads_back_and_signs_a_download_url(
    make_app: Callable[..., Flask], gcs_emulator: GCSEmulator, gcs_bucket: str, gcs_signing_credentials: Any
) -> None:
    app = gcs_app(make_app, gcs_emulator.url, gcs_bucket, gcs_signing_credentials)
    with app.test_request_context():
        storage = get_storage()
        stored = storage.save("renders/7/video.mp4", b"\x00\x01video-bytes", "video/mp4")
        assert stored == StoredObject("renders/7/video.mp4", "bucket", False, 13)
        assert degraded_services() == []
        assert storage.exists("renders/7/video.mp4") and not storage.exists("renders/7/missing.mp4")
        assert storage.read("renders/7/video.mp4") == b"\x00\x01video-bytes"
        url = storage.download_url("renders/7/video.mp4", expires_in=600)
        assert storage.pending_sync_count() == 0
    assert "X-Goog-Signature=" in url and "X-Goog-Expires=600" in url
    response = requests.get(url, timeout=5)
    assert response.status_code == 200 and response.content == b"\x00\x01video-bytes"
    # What is in the bucket is what we saved, with its content type.
    blob = storage_client(gcs_emulator.url).bucket(gcs_bucket).get_blob("renders/7/video.mp4", timeout=5, retry=None)
    assert blob is not None and blob.content_type == "video/mp4"


def test_read_of_a_missing_object_is_404_and_does_not_count_against_the_breaker(
    make_app: Callable[..., Flask], gcs_emulator: GCSEmulator, gcs_bucket: str, gcs_signing_credentials: Any
) -> None:
    app = gcs_app(make_app, gcs_emulator.url, gcs_bucket, gcs_signing_credentials)
    with app.app_context():
        for _ in range(6):
            with pytest.raises(NotFoundError):
                get_storage().read("nothing/here.bin")
        assert get_breaker("storage").state.value == "closed"


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "a//b", "a/../b", "", "x" * 600, "a/./b", "sp ace"])
def test_unsafe_keys_are_rejected(app: Flask, key: str) -> None:
    with app.app_context(), pytest.raises(ValidationError):
        get_storage().save(key, b"x", "application/octet-stream")


def test_local_backend_is_the_configured_default_without_a_bucket(
    make_app: Callable[..., Flask], tmp_path: Any
) -> None:
    app = make_app(LOCAL_STORAGE_DIR=str(tmp_path / "files"))
    client = app.test_client()
    with app.test_request_context():
        storage = get_storage()
        status = storage.status()
        assert status["backend"] == "local" and status["configured"] is True and status["location"] == "local"
        stored = storage.save("uploads/1/song.mp3", b"ID3-audio", "audio/mpeg")
        assert stored == StoredObject("uploads/1/song.mp3", "local", False, 9)  # configured, not degraded
        assert degraded_services() == []
        assert (tmp_path / "files" / "uploads" / "1" / "song.mp3").read_bytes() == b"ID3-audio"
        assert storage.read("uploads/1/song.mp3") == b"ID3-audio" and storage.exists("uploads/1/song.mp3")
        url = storage.download_url("uploads/1/song.mp3", expires_in=60)
        expired = storage.download_url("uploads/1/song.mp3", expires_in=-1)
    path = url.split("://", 1)[1].split("/", 1)[1]
    response = client.get("/" + path)
    assert response.status_code == 200 and response.data == b"ID3-audio"
    assert response.headers["Content-Type"] == "audio/mpeg"
    assert "attachment" in response.headers["Content-Disposition"]
    gone = client.get("/" + expired.split("://", 1)[1].split("/", 1)[1])
    assert gone.status_code == 404 and gone.get_json()["error"]["details"] == {"expired": True}
    tampered = client.get("/" + path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB"))
    assert tampered.status_code == 404 and tampered.get_json()["error"]["code"] == "NOT_FOUND"


def test_a_link_signed_by_another_secret_is_refused(make_app: Callable[..., Flask], tmp_path: Any) -> None:
    first = make_app(LOCAL_STORAGE_DIR=str(tmp_path / "files"))
    with first.test_request_context():
        get_storage().save("a.txt", b"secret", "text/plain")
        url = get_storage().download_url("a.txt")
    other = make_app(LOCAL_STORAGE_DIR=str(tmp_path / "files"), SECRET_KEY="another-secret-key-0123456789abcdef")
    assert other.test_client().get("/" + url.split("://", 1)[1].split("/", 1)[1]).status_code == 404


def test_gcs_backend_without_a_bucket_says_not_configured_and_fails_clearly(make_app: Callable[..., Flask]) -> None:
    app = make_app(STORAGE_BACKEND="gcs")
    with app.app_context():
        storage = get_storage()
        assert storage.status()["configured"] is False
        assert "GCS_BUCKET" in storage.status()["reason"]
        with pytest.raises(APIError) as raised:
            storage.save("a.bin", b"x", "application/octet-stream")
    assert raised.value.code == "SERVICE_NOT_CONFIGURED" and raised.value.status_code == 503


def test_fallback_files_reach_the_bucket_once_and_sync_is_idempotent(
    make_app: Callable[..., Flask],
    make_fault_proxy: Callable[..., Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = gcs_app(
        make_app,
        proxy.url,
        gcs_bucket,
        gcs_signing_credentials,
        CIRCUIT_BREAKERS={"storage": {"min_calls": 3, "recovery_timeout": 0.3, "slow_call_seconds": None}},
    )
    proxy.down()
    with app.test_request_context():
        storage = get_storage()
        saved = [storage.save(f"renders/{i}.mp4", f"video-{i}".encode(), "video/mp4") for i in range(3)]
        assert all(s.degraded and s.location == "local" for s in saved)
        assert degraded_services() == ["storage"]
        assert storage.pending_sync_count() == 3
        # While pending, the file is served from local storage through an app-signed link.
        assert "/api/files/" in storage.download_url("renders/0.mp4")
        assert storage.read("renders/1.mp4") == b"video-1"
        assert storage.sync_pending() == 0  # still down (breaker open): nothing uploaded, nothing lost
        assert storage.pending_sync_count() == 3
        proxy.passthrough()
        time.sleep(0.35)  # past the breaker's recovery timeout: a trial call is let through
        assert storage.sync_pending() == 3
        assert storage.pending_sync_count() == 0
        assert storage.sync_pending() == 0
        assert "X-Goog-Signature=" in storage.download_url("renders/2.mp4")
        assert storage.status()["breaker"] == "closed"
    bucket = storage_client(gcs_emulator.url).bucket(gcs_bucket)
    for i in range(3):
        assert bucket.blob(f"renders/{i}.mp4").download_as_bytes(timeout=5, retry=None) == f"video-{i}".encode()


def test_storage_service_rejects_an_unknown_backend(tmp_path: Any) -> None:
    with pytest.raises(ValueError):
        StorageService(backend="s3", local_dir=tmp_path)


class _FakeBlob:
    """Records the keyword arguments of every SDK call (unit test: SPEC section 10's timeout/retry trap)."""

    def __init__(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        self.calls = calls

    def upload_from_string(self, data: bytes, **kwargs: Any) -> None:
        self.calls.append(("upload", kwargs))

    def download_as_bytes(self, **kwargs: Any) -> bytes:
        self.calls.append(("download", kwargs))
        return b"data"

    def exists(self, **kwargs: Any) -> bool:
        self.calls.append(("exists", kwargs))
        return True


class _FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def bucket(self, name: str) -> Any:
        client = self

        class Bucket:
            def blob(self, key: str) -> _FakeBlob:
                return _FakeBlob(client.calls)

        return Bucket()


def test_every_bucket_call_passes_an_explicit_timeout_and_no_sdk_retry(app: Flask, tmp_path: Any) -> None:
    fake = _FakeClient()
    service = StorageService(backend="gcs", local_dir=tmp_path, bucket="b", timeout=1.5, client=fake)
    with app.app_context():
        assert service.save("a/b.bin", b"x", "application/octet-stream").location == "bucket"
        assert service.read("a/b.bin") == b"data"
        assert service.exists("a/b.bin") is True
    assert [name for name, _ in fake.calls] == ["upload", "download", "exists"]
    for _, kwargs in fake.calls:
        assert kwargs["timeout"] == 1.5 and kwargs["retry"] is None  # never the SDK's 2-minute default


def test_sdk_clients_are_built_with_timeouts_and_without_their_own_retries(make_app: Callable[..., Flask]) -> None:
    from backend.app.services import get_email, get_payments

    app = make_app(
        STRIPE_API_KEY="sk_test_x", STRIPE_TIMEOUT=3.0, SENDGRID_API_KEY="SG.x", SENDGRID_TIMEOUT=2.0,
        SENDGRID_API_HOST="http://127.0.0.1:9",
    )  # fmt: skip
    with app.app_context():
        stripe_client = get_payments()._sdk()
        assert stripe_client._requestor._options.max_network_retries == 0
        assert stripe_client._requestor._client._timeout == 3.0
        assert get_email()._sdk().client.timeout == 2.0
        assert get_email()._sdk().host == "http://127.0.0.1:9"


def test_probe_reports_the_bucket_live_and_raises_when_it_is_down(
    make_app: Callable[..., Flask],
    make_fault_proxy: Callable[..., Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
    tmp_path: Any,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = gcs_app(make_app, proxy.url, gcs_bucket, gcs_signing_credentials)
    with app.app_context():
        assert get_storage().probe() == {"configured": True, "backend": "gcs", "status": "ok", "bucket_exists": True}
        proxy.down()
        with pytest.raises(requests.ConnectionError):
            get_storage().probe()
        assert get_breaker("storage").state.value == "closed"  # a health check never trips the breaker
    local = make_app(LOCAL_STORAGE_DIR=str(tmp_path / "files"))
    with local.app_context():
        assert get_storage().probe() == {"configured": True, "backend": "local", "status": "ok"}


def test_bucket_download_links_without_signing_credentials_fail_clearly(
    make_app: Callable[..., Flask], gcs_emulator: GCSEmulator, gcs_bucket: str
) -> None:
    app = gcs_app(make_app, gcs_emulator.url, gcs_bucket, None)
    with app.app_context():
        get_storage().save("a.bin", b"x", "application/octet-stream")
        with pytest.raises(APIError) as raised:
            get_storage().download_url("a.bin")
    assert raised.value.code == "SERVICE_NOT_CONFIGURED" and "GCS_SIGNING_CREDENTIALS_FILE" in raised.value.message


def test_a_file_saved_again_during_its_sync_stays_pending_with_the_new_bytes(app: Flask, tmp_path: Any) -> None:
    uploads: list[bytes] = []
    service: StorageService

    class Blob:
        def upload_from_string(self, data: bytes, **kwargs: Any) -> None:
            uploads.append(data)
            if len(uploads) == 1:  # a concurrent save of the same key lands while this upload runs
                service._write_local("k.bin", b"new bytes")

    class Client:
        def bucket(self, name: str) -> Any:
            return type("Bucket", (), {"blob": lambda self, key: Blob()})()

    service = StorageService(backend="gcs", local_dir=tmp_path, bucket="b", client=Client())
    with app.app_context():
        service._save_fallback(ConnectionError("down"), "k.bin", b"old bytes", "application/octet-stream")
        assert service.sync_pending() == 0 and service.pending_sync_count() == 1  # not marked: newer bytes wait
        assert service.sync_pending() == 1 and service.pending_sync_count() == 0
    assert uploads == [b"old bytes", b"new bytes"]
    assert not (tmp_path / "k.bin").exists()


# -- #13 point 3: the sync never blocks behind one bad file ---------------------------------------------------


def _rows(app: Flask) -> dict[str, Any]:
    """Every pending-sync row by key, read fresh."""
    from backend.app.extensions import db
    from backend.app.models import PendingSync

    with app.app_context():
        db.session.expire_all()
        return {row.key: row for row in db.session.scalars(select(PendingSync)).all()}


def _time_passes(app: Flask, key: str) -> None:
    """Make a backing-off row due now, as if its backoff had run out."""
    from backend.app.extensions import db
    from backend.app.models import PendingSync

    with app.app_context():
        db.session.execute(
            update(PendingSync).where(PendingSync.key == key).values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()


def _inbox_retry(app: Flask, key: str) -> None:
    """What the failed-work inbox's retry does: back to pending, attempts 0, due now."""
    from backend.app.extensions import db
    from backend.app.models import PendingSync

    with app.app_context():
        db.session.execute(
            update(PendingSync)
            .where(PendingSync.key == key, PendingSync.status == "failed")
            .values(status="pending", attempts=0, next_attempt_at=None, failed_at=None)
        )
        db.session.commit()


def _keep_locally(app: Flask, keys: list[str]) -> None:
    """Queue files as the fallback does when the bucket is down (local copy + pending row)."""
    import requests as http

    with app.app_context():
        for key in keys:
            get_storage()._save_fallback(
                http.ConnectionError("bucket down"), key, f"bytes of {key}".encode(), "video/mp4"
            )


def _uploads(proxy: Any) -> int:
    return sum(1 for seen in proxy.seen if seen.method == "POST" and seen.path.startswith("/upload/"))


def _in_bucket(gcs_emulator: GCSEmulator, bucket: str, key: str) -> bytes | None:
    blob = storage_client(gcs_emulator.url).bucket(bucket).get_blob(key, timeout=5, retry=None)
    return blob.download_as_bytes(timeout=5, retry=None) if blob is not None else None


def test_point3_a_refused_file_backs_off_then_fails_with_its_real_error_while_the_others_reach_the_bucket(
    make_app: Callable[..., Flask],
    make_fault_proxy: Callable[..., Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
) -> None:
    """#13 point 3: one file the bucket refuses (403) never blocks the others; it ends failed with the real code."""
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = gcs_app(make_app, proxy.url, gcs_bucket, gcs_signing_credentials, STORAGE_SYNC_MAX_ATTEMPTS=5)
    keys = ["renders/bad.mp4", "renders/1.mp4", "renders/2.mp4", "renders/3.mp4"]
    _keep_locally(app, keys)  # the bad one is oldest: the sync meets it first
    # The bucket refuses the first upload (the bad file's): a permission missing on that object.
    proxy.status(403, times=1, path="/upload/")
    started = utcnow()
    with app.app_context():
        assert get_storage().sync_pending() == 3  # the good ones went on, in the same run
        assert get_storage().pending_sync_count() == 1 and get_storage().failed_sync_count() == 0
    for key in keys[1:]:
        assert _in_bucket(gcs_emulator, gcs_bucket, key) == f"bytes of {key}".encode()
    assert _in_bucket(gcs_emulator, gcs_bucket, "renders/bad.mp4") is None
    bad = _rows(app)["renders/bad.mp4"]
    assert (bad.status, bad.attempts, bad.synced_at, bad.failed_at) == ("pending", 1, None, None)
    # Backing off: a permanent refusal gets one retry, after the base delay (60 s), never at once.
    assert as_utc(bad.next_attempt_at) >= started + timedelta(seconds=59)
    [first] = bad.errors
    assert first["code"] == "SERVICE_MISCONFIGURED" and first["status"] == 403  # not STORAGE_UNAVAILABLE
    assert first["kind"] == "permanent" and first["misconfigured"] is True and first["attempt"] == 1
    assert "403" in first["message"] and "fault proxy injected HTTP 403" in first["message"]
    assert bad.last_error.startswith("SERVICE_MISCONFIGURED: ") and "HTTP 403" in bad.last_error
    assert all(row.status == "synced" and row.synced_at for key, row in _rows(app).items() if key != keys[0])

    uploads = _uploads(proxy)
    with app.app_context():
        assert get_storage().sync_pending() == 0  # not due yet: no request at all
    assert _uploads(proxy) == uploads

    _time_passes(app, "renders/bad.mp4")
    proxy.status(403, times=1, path="/upload/")
    with app.app_context():
        assert get_storage().sync_pending() == 0
        status = get_storage().status()
    assert (status["pending_sync"], status["failed_sync"]) == (0, 1)
    bad = _rows(app)["renders/bad.mp4"]
    assert (bad.status, bad.attempts, bad.next_attempt_at, bad.synced_at) == ("failed", 2, None, None)
    assert bad.failed_at is not None and bad.last_error.startswith("SERVICE_MISCONFIGURED: ")
    assert [(e["attempt"], e["code"], e["status"]) for e in bad.errors] == [
        (1, "SERVICE_MISCONFIGURED", 403),
        (2, "SERVICE_MISCONFIGURED", 403),
    ]
    with app.app_context():
        assert get_storage().read("renders/bad.mp4") == b"bytes of renders/bad.mp4"  # still served, locally
        assert get_storage().sync_pending() == 0  # failed rows wait for an admin, never retried on their own
    errors = [line for line in read_log(app, "errors.log") if "renders/bad.mp4" in line["message"]]
    assert errors and errors[-1]["level"] == "ERROR" and "failed-work inbox" in errors[-1]["message"]


def test_point3_a_failed_file_set_back_to_pending_is_uploaded_by_the_next_sync(
    make_app: Callable[..., Flask],
    make_fault_proxy: Callable[..., Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
) -> None:
    """#13 point 3: the inbox's retry (failed → pending, attempts 0, due now) is picked up by the next sync."""
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = gcs_app(make_app, proxy.url, gcs_bucket, gcs_signing_credentials, STORAGE_SYNC_MAX_ATTEMPTS=1)
    _keep_locally(app, ["renders/7.mp4"])
    proxy.status(400, times=1, path="/upload/")  # refused as a bad request: UPSTREAM_REJECTED
    with app.app_context():
        assert get_storage().sync_pending() == 0 and get_storage().failed_sync_count() == 1
    row = _rows(app)["renders/7.mp4"]
    assert row.status == "failed" and row.last_error.startswith("UPSTREAM_REJECTED: ")
    assert row.errors[0]["code"] == "UPSTREAM_REJECTED" and row.errors[0]["status"] == 400

    _inbox_retry(app, "renders/7.mp4")  # the cause was fixed; an admin retries it
    with app.app_context():
        assert get_storage().pending_sync_count() == 1
        assert get_storage().sync_pending() == 1
        assert get_storage().pending_sync_count() == 0 and get_storage().failed_sync_count() == 0
    row = _rows(app)["renders/7.mp4"]
    assert row.status == "synced" and row.synced_at is not None and row.failed_at is None
    assert len(row.errors) == 1  # the history of what happened stays
    assert _in_bucket(gcs_emulator, gcs_bucket, "renders/7.mp4") == b"bytes of renders/7.mp4"


def test_point3_a_vanished_local_file_ends_failed_local_file_missing_never_synced(
    make_app: Callable[..., Flask],
    make_fault_proxy: Callable[..., Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
    tmp_path: Any,
) -> None:
    """#13 point 3: a pending file removed from local storage is an error in the inbox, not "synced"."""
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    local = tmp_path / "fallback"
    app = gcs_app(make_app, proxy.url, gcs_bucket, gcs_signing_credentials, LOCAL_STORAGE_DIR=str(local))
    _keep_locally(app, ["renders/gone.mp4", "renders/kept.mp4"])
    (local / "renders" / "gone.mp4").unlink()  # removed by hand, or a disk lost
    with app.app_context():
        assert get_storage().sync_pending() == 1
        assert get_storage().failed_sync_count() == 1 and get_storage().pending_sync_count() == 0
    gone = _rows(app)["renders/gone.mp4"]
    assert (gone.status, gone.synced_at, gone.attempts) == ("failed", None, 1)
    assert gone.last_error.startswith("LOCAL_FILE_MISSING: ") and "renders/gone.mp4" in gone.last_error
    assert gone.errors[0]["code"] == "LOCAL_FILE_MISSING" and gone.errors[0]["kind"] == "permanent"
    assert _in_bucket(gcs_emulator, gcs_bucket, "renders/gone.mp4") is None
    assert _in_bucket(gcs_emulator, gcs_bucket, "renders/kept.mp4") == b"bytes of renders/kept.mp4"
    assert _uploads(proxy) == 1  # nothing was uploaded for the vanished file


def test_point3_an_open_breaker_stops_the_run_without_spending_attempts(
    make_app: Callable[..., Flask],
    make_fault_proxy: Callable[..., Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
) -> None:
    """#13 point 3: the bucket itself down (breaker open) ends the run; no file is charged an attempt."""
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = gcs_app(
        make_app,
        proxy.url,
        gcs_bucket,
        gcs_signing_credentials,
        CIRCUIT_BREAKERS={"storage": {"min_calls": 3, "recovery_timeout": 0.4, "slow_call_seconds": None}},
    )
    proxy.down()
    with app.test_request_context():
        storage = get_storage()
        for i in range(3):
            assert storage.save(f"renders/{i}.mp4", f"v{i}".encode(), "video/mp4").degraded
        assert get_breaker("storage").state.value == "open"
        for _ in range(3):
            assert storage.sync_pending() == 0
        assert storage.pending_sync_count() == 3 and storage.failed_sync_count() == 0
    for row in _rows(app).values():
        assert (row.status, row.attempts, row.errors, row.next_attempt_at) == ("pending", 0, [], None)
    proxy.passthrough()
    time.sleep(0.45)  # the breaker lets a trial call through
    with app.app_context():
        assert get_storage().sync_pending() == 3
    for i in range(3):
        assert _in_bucket(gcs_emulator, gcs_bucket, f"renders/{i}.mp4") == f"v{i}".encode()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_point3_two_workers_syncing_at_once_never_upload_the_same_row(
    database: str,
    request: pytest.FixtureRequest,
    make_app: Callable[..., Flask],
    make_fault_proxy: Callable[..., Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
) -> None:
    """#13 point 3: each row is claimed (a lease in a conditional UPDATE): one upload and one count per file."""
    import threading

    from backend.app.extensions import db

    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    settings = {
        "GCS_BUCKET": gcs_bucket,
        "GCS_ENDPOINT": proxy.url,
        "GCS_TIMEOUT": 2.0,
        "GCS_SIGNING_CREDENTIALS": gcs_signing_credentials,
    }
    if database == "postgresql":
        app = request.getfixturevalue("pg_app")
        app.config.update(settings)  # the adapters are built on first use, from the config as it is then
    else:
        app = gcs_app(make_app, proxy.url, gcs_bucket, gcs_signing_credentials, GCS_TIMEOUT=2.0)
    keys = [f"renders/{i}.mp4" for i in range(16)]
    _keep_locally(app, keys)
    barrier = threading.Barrier(3)
    uploaded: list[int] = []

    def worker() -> None:
        with app.app_context():
            barrier.wait(10)
            uploaded.append(get_storage().sync_pending())
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(uploaded) == len(keys) and len(uploaded) == 3
    assert _uploads(proxy) == len(keys)  # one upload per file, whoever claimed it
    assert all(row.status == "synced" for row in _rows(app).values())
    for key in keys:
        assert _in_bucket(gcs_emulator, gcs_bucket, key) == f"bytes of {key}".encode()


class _FailingClient:
    """A bucket whose uploads raise what `errors` holds, one per call (unit test of the backoff decisions)."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors

    def bucket(self, name: str) -> Any:
        client = self

        class Blob:
            def upload_from_string(self, data: bytes, **kwargs: Any) -> None:
                if client.errors:
                    raise client.errors.pop(0)

        return type("Bucket", (), {"blob": lambda self, key: Blob()})()


def test_point3_backoff_follows_the_classifier(app: Flask, tmp_path: Any) -> None:
    """#13 point 3: transient backs off (full jitter, capped), throttled waits Retry-After, attempts are limited."""
    from google.api_core import exceptions as gexc

    from backend.app.resilience.retry import RetryPolicy

    throttled = gexc.TooManyRequests("slow down", response=type("R", (), {"headers": {"Retry-After": "120"}})())
    client = _FailingClient([gexc.ServiceUnavailable("busy"), throttled, gexc.ServiceUnavailable("busy")])
    ceilings: list[float] = []

    def rng(low: float, high: float) -> float:
        ceilings.append(high)
        return high  # the top of the jitter range: the cap is what is checked

    service = StorageService(
        backend="gcs",
        local_dir=tmp_path,
        bucket="b",
        client=client,
        max_retries=0,
        sync_policy=RetryPolicy(max_attempts=3, base_delay=10.0, max_delay=15.0),
        rng=rng,
    )
    delays: list[float] = []
    with app.app_context():
        service._save_fallback(ConnectionError("down"), "k.bin", b"data", "application/octet-stream")
        for _ in range(3):
            started = utcnow()
            assert service.sync_pending() == 0
            due = _rows(app)["k.bin"].next_attempt_at
            if due is not None:
                delays.append((as_utc(due) - started).total_seconds())
            _time_passes(app, "k.bin")
    row = _rows(app)["k.bin"]
    assert ceilings == [10.0]  # attempt 1: uniform(0, base); attempt 2 was throttled (no jitter)
    assert 9.5 <= delays[0] <= 10.5 and 119.5 <= delays[1] <= 120.5  # the peer's Retry-After, honoured
    assert (row.status, row.attempts) == ("failed", 3)  # out of attempts: the inbox
    assert [e["kind"] for e in row.errors] == ["transient", "throttled", "transient"]
    assert [e["code"] for e in row.errors] == ["STORAGE_UNAVAILABLE"] * 3
    assert row.errors[1]["status"] == 429 and row.errors[1]["retry_after"] == 120.0


def test_point3_a_newer_direct_save_retires_the_older_fallback_copy_so_the_sync_never_overwrites_it(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
) -> None:
    """#13 point 3: once the bucket has the newest bytes, the stale local copy is never uploaded over them."""
    app = gcs_app(make_app, gcs_emulator.url, gcs_bucket, gcs_signing_credentials)
    _keep_locally(app, ["renders/9.mp4"])  # saved while the bucket was down: old bytes, pending
    with app.test_request_context():
        stored = get_storage().save("renders/9.mp4", b"newer bytes", "video/mp4")  # the bucket is back
        assert stored.location == "bucket" and not stored.degraded
        assert get_storage().pending_sync_count() == 0
        assert get_storage().sync_pending() == 0  # nothing left to replay
        assert get_storage().read("renders/9.mp4") == b"newer bytes"
        assert not get_storage().local_file("renders/9.mp4").exists()  # the stale copy is gone too
    assert _rows(app)["renders/9.mp4"].status == "synced"
    assert _in_bucket(gcs_emulator, gcs_bucket, "renders/9.mp4") == b"newer bytes"
