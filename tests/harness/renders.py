"""Renders through the app: a render app, a logged-in user starting renders, credits, the videos made."""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.services import credits
from backend.app.timeutil import utcnow
from tests.harness.app import bearer, login
from tests.harness.peers.audio import ffmpeg_exe
from tests.harness.peers.sendgrid_peer import SendGridPeer

DEDUP_HEADER = "X-Oriel-Dedup-Key"


SMALL = {"preset": "waveform", "resolution": "320x180", "fps": 24}


def render_app(make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer | None = None, **extra: Any) -> Flask:
    """An app with local storage and, when given, SendGrid pointed at the peer."""
    settings: dict[str, Any] = {
        "RETRY_SLEEP_ENABLED": False,
        "RENDER_MIN_FREE_DISK_MB": 0,
        "RENDER_MIN_FREE_MEMORY_MB": 0,
    }
    if sendgrid_peer is not None:
        settings.update(SENDGRID_API_KEY=sendgrid_peer.api_key, SENDGRID_API_HOST=sendgrid_peer.url, SENDGRID_TIMEOUT=2)
    settings.update(extra)
    return make_app(**settings)


class User:
    """A logged-in test user."""

    def __init__(self, client: FlaskClient, email: str) -> None:
        self.client = client
        self.token = login(client, email)["access_token"]
        self.id = client.get("/api/me", headers=self.headers).get_json()["user"]["id"]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    def upload(self, data: bytes, name: str = "song.mp3") -> int:
        response = self.client.post(
            "/api/uploads",
            data={"file": (io.BytesIO(data), name)},
            headers=self.headers,
            content_type="multipart/form-data",
        )
        assert response.status_code == 201, response.get_json()
        return response.get_json()["upload"]["id"]

    def start(self, upload_id: int, **choices: Any) -> Any:
        return self.client.post(
            "/api/renders", json={"upload_id": upload_id, **(choices or SMALL)}, headers=self.headers
        )

    def get(self, render_id: int) -> dict[str, Any]:
        response = self.client.get(f"/api/renders/{render_id}", headers=self.headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["render"]


def balance(app: Flask, user_id: int) -> int:
    """The user's render credits."""
    with app.app_context():
        return credits.balance(user_id)


def video_facts(path: Path) -> dict[str, str]:
    """Codec and size of a rendered file, read back by FFmpeg itself."""
    stderr = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, check=False).stderr
    text = stderr.decode("utf-8", "replace")
    video = re.search(r"Video: (\w+).*?, (\d+x\d+)", text)
    audio = re.search(r"Audio: (\w+)", text)
    duration = re.search(r"Duration: ([\d:.]+)", text)
    assert video and audio and duration, text
    return {"video": video[1], "size": video[2], "audio": audio[1], "duration": duration[1]}


class Clock:
    """A clock the test moves; the worker reads it for claims, leases, failures and retry times."""

    def __init__(self) -> None:
        self.now = utcnow() + timedelta(seconds=1)  # after the job's enqueue time, so it is due

    def __call__(self) -> datetime:
        return self.now


def attempt(app: Flask, clock: Clock) -> int:
    """One burst of a real worker at the clock's time (top of the jitter range: rng returns the ceiling)."""
    options = WorkerOptions(burst=True, schedule=False, install_signals=False, poll_seconds=0.05, lease_seconds=60)
    return Worker(app, options, clock=clock, rng=lambda low, high: high).run()
