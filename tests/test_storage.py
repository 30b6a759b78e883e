"""Storage adapter: the real google-cloud-storage SDK against gcp-storage-emulator, and the local backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask

from backend.app.errors import APIError, NotFoundError, ValidationError
from backend.app.services import get_storage
from backend.app.services.storage import StorageService, StoredObject
from backend.app.utils.error_recovery import degraded_services, get_breaker
from tests.peers.gcs_emulator import GCSEmulator, storage_client

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
        CIRCUIT_BREAKERS={"storage": {"min_calls": 3, "recovery_timeout": 0.3}},
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
