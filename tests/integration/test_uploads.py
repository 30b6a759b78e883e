"""`POST /api/uploads` through the real app: audio recognised by content, size limits, where the file went."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.models import Upload
from backend.app.services import get_storage
from backend.app.services.audio import sniff
from tests.harness.app import bearer, login
from tests.harness.contract import assert_error
from tests.harness.peers.audio import PNG_1X1, AudioFactory
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.gcs_emulator import GCSEmulator

FAST = {"RETRY_SLEEP_ENABLED": False}


def upload(client: FlaskClient, token: str, data: bytes, filename: str = "song.mp3") -> Any:
    """POST one file as multipart `file`."""
    return client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(data), filename)},
        headers=bearer(token),
        content_type="multipart/form-data",
    )


def user_token(client: FlaskClient, email: str = "uploader@example.com") -> str:
    """Register and log in; the access token."""
    return login(client, email)["access_token"]


def upload_count(app: Flask) -> int:
    """Upload rows in the database."""
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Upload)) or 0


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "flac", "m4a"])
def test_each_supported_format_is_recognised_measured_and_stored(
    app: Flask, client: FlaskClient, audio_files: AudioFactory, fmt: str
) -> None:
    data = audio_files.make(fmt, seconds=1.5).read_bytes()
    response = upload(client, user_token(client), data, f"tone.{fmt}")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()["upload"]
    assert body["format"] == fmt
    assert body["duration_seconds"] == pytest.approx(1.5, abs=0.1)
    assert body["size"] == len(data)
    assert body["location"] == "local" and body["degraded"] is False  # no bucket configured: local storage
    with app.app_context():
        row = db.session.get(Upload, body["id"])
        assert row is not None
        assert get_storage().read(row.storage_key) == data
        assert row.storage_key.endswith(f".{fmt}")


def test_an_mp3_named_wav_is_accepted_as_mp3(client: FlaskClient, audio_files: AudioFactory) -> None:
    data = audio_files.make("mp3").read_bytes()
    response = upload(client, user_token(client), data, "actually-an-mp3.wav")
    assert response.status_code == 201
    body = response.get_json()["upload"]
    assert body["format"] == "mp3"
    assert body["content_type"] == "audio/mpeg"
    assert body["filename"] == "actually-an-mp3.wav"


@pytest.mark.parametrize("kind,name", [("text", "notes.mp3"), ("png", "cover.wav")])
def test_non_audio_under_an_audio_name_is_rejected_by_content(
    app: Flask, client: FlaskClient, audio_files: AudioFactory, kind: str, name: str
) -> None:
    data = audio_files.non_audio(name, kind=kind).read_bytes()
    response = upload(client, user_token(client), data, name)
    body = assert_error(response, 400, "UNSUPPORTED_AUDIO_FORMAT")
    assert "MP3" in body["details"]["supported"]
    assert upload_count(app) == 0


@pytest.mark.parametrize("fmt", ["flac", "mp3", "wav"])
def test_corrupt_audio_with_the_right_magic_bytes_is_rejected_as_invalid(
    app: Flask, client: FlaskClient, audio_files: AudioFactory, fmt: str
) -> None:
    response = upload(client, user_token(client), audio_files.corrupt(fmt).read_bytes(), f"broken.{fmt}")
    body = assert_error(response, 400, "FILE_INVALID")
    assert body["details"]["format"] == fmt
    assert "could not be decoded" in body["message"]
    reason = body["details"]["reason"]
    assert "/tmp" not in reason and "oriel-probe" not in reason
    assert upload_count(app) == 0


def test_a_truncated_upload_is_rejected_as_invalid(client: FlaskClient, audio_files: AudioFactory) -> None:
    response = upload(client, user_token(client), audio_files.truncated("wav").read_bytes(), "cut.wav")
    assert_error(response, 400, "FILE_INVALID")


def test_an_empty_file_is_invalid(client: FlaskClient) -> None:
    assert_error(upload(client, user_token(client), b"", "empty.mp3"), 400, "FILE_INVALID")


def test_no_file_field_is_file_missing(client: FlaskClient) -> None:
    token = user_token(client)
    response = client.post(
        "/api/uploads", data={"other": "x"}, headers=bearer(token), content_type="multipart/form-data"
    )
    assert_error(response, 400, "FILE_MISSING")
    assert_error(client.post("/api/uploads", json={"file": "x"}, headers=bearer(token)), 400, "FILE_MISSING")


def test_uploads_need_a_token(client: FlaskClient, audio_files: AudioFactory) -> None:
    response = client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(audio_files.make("mp3").read_bytes()), "a.mp3")},
        content_type="multipart/form-data",
    )
    assert_error(response, 401, "TOKEN_MISSING")


def test_a_file_over_max_upload_mb_is_413_file_too_large_with_the_limit(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(MAX_UPLOAD_MB=1)
    client = app.test_client()
    token = user_token(client)
    limit = 1024 * 1024
    # Just over the limit: the body still fits in the multipart slack, so the file's own size is what is refused.
    body = assert_error(upload(client, token, b"RIFF" + b"\0" * limit, "big.wav"), 413, "FILE_TOO_LARGE")
    assert body["details"] == {"max_mb": 1, "max_bytes": limit}
    # Far over: refused from Content-Length before the body is read.
    assert_error(upload(client, token, b"\0" * (3 * limit), "huge.wav"), 413, "FILE_TOO_LARGE")
    assert upload_count(app) == 0


def test_a_body_over_flasks_max_content_length_is_still_file_too_large(make_app: Callable[..., Flask]) -> None:
    app = make_app(MAX_UPLOAD_MB=1, MAX_CONTENT_LENGTH=512 * 1024)  # a stricter body cap than the file limit
    client = app.test_client()
    body = assert_error(upload(client, user_token(client), b"\0" * (700 * 1024), "big.wav"), 413, "FILE_TOO_LARGE")
    assert body["details"]["max_mb"] == 1


def test_the_stored_filename_is_sanitised(client: FlaskClient, audio_files: AudioFactory) -> None:
    data = audio_files.make("mp3").read_bytes()
    response = upload(client, user_token(client), data, "../../etc/päss wd.mp3")
    name = response.get_json()["upload"]["filename"]
    assert name == "etc_pass_wd.mp3"


def test_sniff_recognises_id3_fronted_mp3_and_adts_aac() -> None:
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\0" * 10  # a 10-byte tag body
    assert sniff(id3 + b"\xff\xfb\x90\x64" + b"\0" * 20).name == "mp3"  # type: ignore[union-attr]
    assert sniff(b"\xff\xf1\x50\x80" + b"\0" * 20).name == "aac"  # type: ignore[union-attr]
    assert sniff(PNG_1X1) is None
    assert sniff(b"\xff\xfb\xf0\x00" + b"\0" * 20) is None  # reserved bitrate index: not a frame header


def test_an_upload_goes_to_the_bucket_when_it_works(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
    audio_files: AudioFactory,
) -> None:
    app = make_app(**FAST, GCS_BUCKET=gcs_bucket, GCS_ENDPOINT=gcs_emulator.url, GCS_TIMEOUT=2.0)
    client = app.test_client()
    data = audio_files.make("ogg").read_bytes()
    body = upload(client, user_token(client), data, "a.ogg").get_json()["upload"]
    assert body["location"] == "bucket" and body["degraded"] is False
    with app.app_context():
        key = db.session.get(Upload, body["id"]).storage_key  # type: ignore[union-attr]
    blob = gcs_emulator.client().bucket(gcs_bucket).blob(key)
    assert blob.download_as_bytes(timeout=5, retry=None) == data


def test_when_the_bucket_is_down_the_upload_is_kept_locally_and_says_degraded(
    make_app: Callable[..., Flask],
    make_fault_proxy: Callable[..., FaultProxy],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    audio_files: AudioFactory,
    tmp_path: Path,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url)
    app = make_app(**FAST, GCS_BUCKET=gcs_bucket, GCS_ENDPOINT=proxy.url, GCS_TIMEOUT=0.5)
    client = app.test_client()
    token = user_token(client)
    proxy.down()
    data = audio_files.make("flac").read_bytes()
    response = upload(client, token, data, "a.flac")
    assert response.status_code == 201
    body = response.get_json()["upload"]
    assert body["location"] == "local" and body["degraded"] is True
    with app.app_context():
        row = db.session.get(Upload, body["id"])
        assert row is not None and row.degraded is True
        assert get_storage().read(row.storage_key) == data  # readable from the fallback copy meanwhile
