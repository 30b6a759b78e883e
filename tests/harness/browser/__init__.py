"""Headless Chromium against the real app on a loopback server: the live server, pages, the test page's files.

Chromium is Debian's (/usr/bin/chromium, installed by `make test`), driven by Playwright for Python; no
browser is ever downloaded. Screenshots go to tests/artifacts/ (git-ignored). The test page and its
scripts (client_page.html, page.js, unit.js) live beside this module.
"""

from __future__ import annotations

import io
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.serving import make_server

from backend.app.extensions import db
from backend.app.models import User
from backend.app.services import credits
from tests.harness.app import ADMIN_EMAIL, require_service
from tests.harness.peers.audio import AudioFactory

CHROMIUM = "/usr/bin/chromium"
PAGE_DIR = Path(__file__).resolve().parent  # client_page.html, page.js, unit.js
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # tests/artifacts/, git-ignored
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct-horse-battery"
DESKTOP = {"width": 1280, "height": 800}
WAIT_MS = 15_000


def load_playwright() -> Any:
    """Playwright's `sync_playwright`, or a skip (a failure in CI) naming what is missing."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        require_service("Chromium", f"{CHROMIUM} is missing (apt-get install chromium; `make test` does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        require_service("Playwright", f"playwright is not installed ({exc}); see requirements-dev.txt")
    return sync_playwright


class LiveServer:
    """The app on 127.0.0.1 (a real threaded HTTP server), with the test page beside it at /__tests__/."""

    def __init__(self, app: Flask) -> None:
        wsgi = SharedDataMiddleware(app.wsgi_app, {"/__tests__": str(PAGE_DIR)})
        self.server = make_server("127.0.0.1", 0, wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()


def user_with_upload(app: Flask, audio_files: AudioFactory, email: str) -> tuple[int, int]:
    """An account with 5 credits and one upload, made through the API; (user id, upload id)."""
    client = app.test_client()
    client.post("/api/auth/register", json={"email": email, "password": PASSWORD})
    token = client.post("/api/auth/login", json={"email": email, "password": PASSWORD}).get_json()["access_token"]
    wav = audio_files.make("wav", seconds=0.5).read_bytes()
    response = client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(wav), "tone.wav")},
        headers={"Authorization": f"Bearer {token}"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.get_json()
    with app.app_context():
        user_id = db.session.scalars(select(User.id).where(User.email == email)).one()
        credits.grant(user_id, 5, "browser test", f"test:{uuid.uuid4().hex}")
    return user_id, response.get_json()["upload"]["id"]


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Debian Chromium (never downloaded), closed after the test."""
    sync_playwright = load_playwright()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS[1:])
        try:
            yield instance
        finally:
            instance.close()


class Page:
    """A page in its own context at a viewport, recording console errors and uncaught exceptions."""

    def __init__(self, browser: Any, base_url: str, viewport: dict[str, int]) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))
        self.page.goto(f"{base_url}/admin")
        self.page.wait_for_selector("body[data-ready='true']", timeout=WAIT_MS)

    def sign_in(self, email: str = ADMIN_EMAIL) -> None:
        """Sign in through the page's form (the token stays in the module's memory)."""
        self.page.fill("#email", email)
        self.page.fill("#password", PASSWORD)
        self.page.click("#login-form button[type=submit]")
        self.page.wait_for_selector("body[data-refreshed]", timeout=WAIT_MS)

    def refreshed(self) -> None:
        """Click Refresh and wait for the reload it starts to finish."""
        before = self.page.get_attribute("body", "data-refreshed")
        self.page.click("#refresh")
        self.page.wait_for_function(
            "(b) => document.body.dataset.refreshed !== b", arg=before, timeout=WAIT_MS, polling=50
        )

    def shot(self, name: str, *, full_page: bool = True) -> None:
        """A screenshot (the whole page, or what the viewport shows) under tests/artifacts/."""
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=full_page)
