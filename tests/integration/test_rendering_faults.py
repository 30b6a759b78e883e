"""Rendering's fault matrix through `run_render`: FFmpeg missing, hanging, killed, or refusing bad input.

Each fault is a real executable put in place of FFmpeg (`FFMPEG_BINARY`), so the adapter's process
handling is what is tested: the classification, the attempts, what the user sees on the render, the
`rendering` breaker, and that nothing is lost (the credit comes back once, the user is told).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.app.errors import RenderingError, RenderingTimeoutError
from backend.app.extensions import db
from backend.app.models import EmailOutbox, Upload
from backend.app.renders.runner import run_render
from backend.app.resilience.classifier import ErrorKind, classify, is_breaker_failure
from backend.app.resilience.recovery import get_breaker
from backend.app.services import credits, get_storage
from backend.app.services.rendering import Renderer, RenderSettings, RenderSpec
from tests.harness.app import bearer, login, read_log
from tests.harness.peers.audio import AudioFactory


def script(folder: Path, name: str, body: str) -> Path:
    """An executable shell script standing in for FFmpeg."""
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def alive(pid: int) -> bool:
    """Whether `pid` is a live (non-zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def fault_app(make_app: Callable[..., Flask]) -> Flask:
    """Renders dispatched by the test; a breaker that judges after two calls; short timeouts."""
    return make_app(
        RETRY_SLEEP_ENABLED=False,
        RENDER_TIMEOUT_SECONDS=0.5,
        RENDER_MIN_FREE_DISK_MB=0,
        RENDER_MIN_FREE_MEMORY_MB=0,
        CIRCUIT_BREAKERS={"rendering": {"min_calls": 2}},
    )


def queue_renders(app: Flask, client: FlaskClient, audio: bytes, count: int) -> tuple[int, list[int]]:
    """Register a user with `count` credits, upload `audio` once and queue `count` renders."""
    app.config["FREE_RENDER_CREDITS"] = count
    token = login(client, "faults@example.com")["access_token"]
    user_id = client.get("/api/me", headers=bearer(token)).get_json()["user"]["id"]
    response = client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(audio), "a.wav")},
        headers=bearer(token),
        content_type="multipart/form-data",
    )
    upload_id = response.get_json()["upload"]["id"]
    ids = []
    for _ in range(count):
        answer = client.post(
            "/api/renders",
            json={"upload_id": upload_id, "preset": "waveform", "resolution": "320x180", "fps": 24},
            headers=bearer(token),
        )
        assert answer.status_code == 202, answer.get_json()
        ids.append(answer.get_json()["render"]["id"])
    return user_id, ids


def use_ffmpeg(app: Flask, binary: Path | str) -> None:
    """Swap the FFmpeg the renderer runs (the renderer is rebuilt from the config on next use)."""
    app.config["FFMPEG_BINARY"] = str(binary)
    app.extensions.pop("renderer", None)


FAULTS: dict[str, dict[str, Any]] = {
    # FFmpeg accepts the input but never finishes (a hang): killed at the timeout.
    "hangs": {
        "body": 'sleep 30 &\necho $! > "{pidfile}"\nwait',
        "code": "RENDERING_TIMEOUT",
        "kind": ErrorKind.TRANSIENT,
        "recoverable": True,
        "breaker": "open",
    },
    # FFmpeg dies by a signal (OOM killer): the machine, not the input.
    "killed": {
        "body": "kill -9 $$",
        "code": "FFMPEG_ERROR",
        "kind": ErrorKind.TRANSIENT,
        "recoverable": True,
        "breaker": "open",
    },
    # FFmpeg refuses the input (the 400 of a local tool): permanent, the breaker ignores it.
    "bad_input": {
        "body": 'echo "[mp3 @ 0x5581] Invalid data found when processing input {folder}/x.wav" >&2\nexit 1',
        "code": "FFMPEG_ERROR",
        "kind": ErrorKind.PERMANENT,
        "recoverable": False,
        "breaker": "closed",
    },
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_rendering_fault_matrix(fault_app: Flask, audio_files: AudioFactory, tmp_path: Path, fault: str) -> None:
    spec = FAULTS[fault]
    client = fault_app.test_client()
    user_id, render_ids = queue_renders(fault_app, client, audio_files.make("wav").read_bytes(), 2)
    pidfile = tmp_path / "child.pid"
    use_ffmpeg(fault_app, script(tmp_path, "ffmpeg", spec["body"].format(pidfile=pidfile, folder=tmp_path)))

    with fault_app.app_context():
        assert credits.balance(user_id) == 0
        for render_id in render_ids:
            run_render(render_id)
        assert get_breaker("rendering").state.value == spec["breaker"]
        assert credits.balance(user_id) == 2, "every failed render's credit came back"
        emails = db.session.query(EmailOutbox).filter(EmailOutbox.dedup_key.like("render-failed:%")).count()
        assert emails == 2

    token = login(client, "faults@example.com")["access_token"]
    render = client.get(f"/api/renders/{render_ids[0]}", headers=bearer(token)).get_json()["render"]
    assert render["status"] == "failed" and render["credit_refunded"] is True
    assert render["error"]["code"] == spec["code"]
    assert render["error"]["recoverable"] is spec["recoverable"]
    assert str(tmp_path) not in str(render["error"])
    if fault == "hangs":
        assert not alive(int(pidfile.read_text())), "FFmpeg's child was killed with its process group"
    if fault == "killed":
        assert render["error"]["details"]["exit_code"] == -9

    calls = [line for line in read_log(fault_app, "performance.log") if line.get("service") == "rendering"]
    assert [line["attempts"] for line in calls] == [1, 1], "rendering is never retried in-process"


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_classified_as_the_matrix_says(
    make_app: Callable[..., Flask], audio_files: AudioFactory, tmp_path: Path, fault: str
) -> None:
    spec = FAULTS[fault]
    pidfile = tmp_path / "child.pid"
    binary = script(tmp_path, "ffmpeg", spec["body"].format(pidfile=pidfile, folder=tmp_path))
    renderer = Renderer(RenderSettings(ffmpeg=str(binary), timeout_seconds=0.5, min_free_disk_mb=0))
    with make_app().app_context(), pytest.raises(RenderingError) as caught:
        renderer.render(
            audio_files.make("wav"),
            tmp_path / "out.mp4",
            RenderSpec.parse("waveform", "320x180", 24),
            duration_seconds=1,
        )
    assert caught.value.code == spec["code"]
    assert classify(caught.value).kind is spec["kind"]
    assert is_breaker_failure(caught.value) is (spec["breaker"] == "open")
    if fault == "hangs":
        assert isinstance(caught.value, RenderingTimeoutError)


def test_a_missing_ffmpeg_fails_the_render_with_its_real_error_and_refunds(
    fault_app: Flask, audio_files: AudioFactory, tmp_path: Path
) -> None:
    client = fault_app.test_client()
    user_id, [render_id] = queue_renders(fault_app, client, audio_files.make("wav").read_bytes(), 1)
    use_ffmpeg(fault_app, tmp_path / "no-such-ffmpeg")
    with fault_app.app_context():
        run_render(render_id)
        assert credits.balance(user_id) == 1
    token = login(client, "faults@example.com")["access_token"]
    error = client.get(f"/api/renders/{render_id}", headers=bearer(token)).get_json()["render"]["error"]
    assert error["code"] == "RENDERING_FAILED"
    assert "FFmpeg binary was not found" in error["message"]
    assert str(tmp_path) not in str(error)


def test_storage_losing_the_upload_fails_the_render_with_not_found_and_refunds(
    fault_app: Flask, audio_files: AudioFactory
) -> None:
    client = fault_app.test_client()
    user_id, [render_id] = queue_renders(fault_app, client, audio_files.make("wav").read_bytes(), 1)
    with fault_app.app_context():
        key = db.session.get(Upload, 1).storage_key  # type: ignore[union-attr]
        os.remove(get_storage()._local_path(key))
        run_render(render_id)
        assert credits.balance(user_id) == 1
    token = login(client, "faults@example.com")["access_token"]
    assert client.get(f"/api/renders/{render_id}", headers=bearer(token)).get_json()["render"]["error"]["code"] == (
        "NOT_FOUND"
    )


def test_a_bug_during_the_render_fails_it_without_leaking_refunds_and_reraises(
    fault_app: Flask, audio_files: AudioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = fault_app.test_client()
    user_id, [render_id] = queue_renders(fault_app, client, audio_files.make("wav").read_bytes(), 1)

    def broken_renderer() -> Renderer:
        raise KeyError("internal-detail-42")

    monkeypatch.setattr("backend.app.renders.runner.get_renderer", broken_renderer)
    with fault_app.app_context():
        with pytest.raises(KeyError):
            run_render(render_id)
        assert credits.balance(user_id) == 1
    token = login(client, "faults@example.com")["access_token"]
    error = client.get(f"/api/renders/{render_id}", headers=bearer(token)).get_json()["render"]["error"]
    assert error["code"] == "INTERNAL_ERROR" and error["status"] == 500
    assert "internal-detail-42" not in str(error) and "KeyError" not in str(error)
