"""The browser client (/static/js/oriel-client.js) in headless Chromium against the real app on a real
loopback server: a 429 is retried after its Retry-After, a 422 is not retried and its field errors reach
the page, and a render whose response is lost is retried with the same Idempotency-Key and happens once.

Chromium is Debian's (/usr/bin/chromium, installed by `make test`), driven by Playwright for Python; no
browser is ever downloaded. Screenshots go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import io
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.serving import make_server

from backend.app import credits
from backend.app.extensions import db
from backend.app.models import Render, Upload, User
from tests.conftest import require_service
from tests.peers.audio import AudioFactory

CHROMIUM = "/usr/bin/chromium"
PAGE_DIR = Path(__file__).parent / "browser"
ARTIFACTS = Path(__file__).parent / "artifacts"
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
SMALL = {"preset": "waveform", "resolution": "320x180", "fps": 24}

pytestmark = pytest.mark.timeout(120)


def _playwright() -> Any:
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


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """Open the test page of a live server in a fresh headless Chromium profile."""
    sync_playwright = _playwright()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a new, empty user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS[1:],  # --headless comes from headless=True
        )
        try:

            def open_page(base_url: str) -> Any:
                page = context.new_page()
                page.goto(f"{base_url}/__tests__/client_page.html")
                page.wait_for_function("window.orielReady === true", timeout=10_000)
                return page

            yield open_page
        finally:
            context.close()


def _screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


def _user_with_upload(app: Flask, audio_files: AudioFactory, email: str) -> tuple[int, int]:
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


LOGIN_JS = """async ([email, password]) => {
  const { data } = await window.oriel.api.post("/api/auth/login", { email, password });
  window.oriel.api.setToken(data.access_token);
  return window.oriel.api.hasToken();
}"""


def _app(make_app: Callable[..., Flask], **extra: Any) -> Flask:
    return make_app(
        RETRY_SLEEP_ENABLED=False,
        RENDER_DISPATCH="none",
        RENDER_MIN_FREE_DISK_MB=0,
        RENDER_MIN_FREE_MEMORY_MB=0,
        **extra,
    )


def test_a_429_is_retried_after_its_retry_after(
    make_app: Callable[..., Flask], audio_files: AudioFactory, browser_page: Callable[[str], Any]
) -> None:
    app = _app(make_app, RATELIMIT_RENDER="1 per 4 seconds")
    _, upload_id = _user_with_upload(app, audio_files, "limited@example.com")
    with LiveServer(app) as server:
        page = browser_page(server.url)
        assert page.evaluate(LOGIN_JS, ["limited@example.com", PASSWORD]) is True
        first = page.evaluate(
            "async (body) => window.oriel.run((api) => api.post('/api/renders', body))",
            {"upload_id": upload_id, **SMALL},
        )
        assert first["ok"] and first["status"] == 202, first
        second = page.evaluate(
            "async (body) => window.oriel.run((api) => api.post('/api/renders', body))",
            {"upload_id": upload_id, **SMALL, "fps": 30},
        )
        _screenshot(page, "429-retried")
    assert second["ok"] and second["status"] == 202 and second["attempts"] == 2, second
    limited, retried = second["trace"]
    assert limited["status"] == 429 and retried["status"] == 202
    stated = int(limited["retryAfter"])
    assert stated >= 1
    waited_ms = retried["at"] - limited["doneAt"]  # measured in the page, by the page's clock
    assert stated * 1000 - 50 <= waited_ms <= stated * 1000 + 3000, (stated, waited_ms)
    assert limited["key"] == retried["key"] == second["idempotencyKey"]  # one logical call, one key
    assert all(a["hasAuthorization"] and "access_token" not in a["url"] for a in second["trace"])
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Render)) == 2


def test_a_422_is_not_retried_and_its_field_errors_reach_the_page(
    make_app: Callable[..., Flask], audio_files: AudioFactory, browser_page: Callable[[str], Any]
) -> None:
    app = _app(make_app)
    _user_with_upload(app, audio_files, "fields@example.com")
    with LiveServer(app) as server:
        page = browser_page(server.url)
        page.evaluate(LOGIN_JS, ["fields@example.com", PASSWORD])
        result = page.evaluate(
            "async () => window.oriel.run((api) => api.post('/api/renders', {upload_id: 'seven', fps: 1000}))"
        )
        shown = page.locator("#fields li").all_inner_texts()
        message = page.locator("#error-message").inner_text()
        _screenshot(page, "422-fields")
    assert not result["ok"]
    error = result["error"]
    assert (error["status"], error["code"], error["recoverable"], error["attempts"]) == (
        422,
        "VALIDATION_ERROR",
        False,
        1,
    )
    assert len(result["trace"]) == 1  # not retried
    assert {"upload_id", "fps"} <= set(error["fields"]) and error["requestId"]
    assert any(line.startswith("upload_id: ") for line in shown) and any(line.startswith("fps: ") for line in shown)
    assert message.startswith("VALIDATION_ERROR: ")


def test_a_render_whose_response_is_lost_is_retried_with_the_same_key_and_happens_once(
    make_app: Callable[..., Flask], audio_files: AudioFactory, browser_page: Callable[[str], Any]
) -> None:
    app = _app(make_app)
    user_id, upload_id = _user_with_upload(app, audio_files, "lossy@example.com")
    with app.app_context():
        before = credits.balance(user_id)
    seen: list[dict[str, Any]] = []
    with LiveServer(app) as server:
        page = browser_page(server.url)
        page.evaluate(LOGIN_JS, ["lossy@example.com", PASSWORD])

        def lose_first_response(route: Any) -> None:
            request = route.request
            seen.append({"key": request.headers.get("idempotency-key")})
            if len(seen) == 1:
                served = route.fetch()  # the server really processes the render...
                seen[0]["server_status"] = served.status
                route.abort("connectionreset")  # ...and its answer never reaches the page
            else:
                route.continue_()

        page.route("**/api/renders", lose_first_response)
        result = page.evaluate(
            "async (body) => window.oriel.run((api) => api.post('/api/renders', body))",
            {"upload_id": upload_id, **SMALL},
        )
        _screenshot(page, "lost-response-retried")
    assert seen[0]["server_status"] == 202
    assert result["ok"] and result["status"] == 202 and result["attempts"] == 2, result
    assert result["replayed"] is True  # the second attempt got the stored answer
    lost, retried = result["trace"]
    assert "error" in lost and retried["status"] == 202
    assert seen[0]["key"] == seen[1]["key"] == result["idempotencyKey"]
    with app.app_context():
        renders = db.session.scalars(select(Render)).all()
        assert len(renders) == 1 and renders[0].id == result["data"]["render"]["id"]
        assert credits.balance(user_id) == before - 1
        assert db.session.scalar(select(func.count()).select_from(Upload)) == 1


def test_the_retry_policy_unit_checks_pass_in_chromium(
    make_app: Callable[..., Flask], browser_page: Callable[[str], Any]
) -> None:
    """tests/browser/unit.js: what is and is not retried, waits, keys, deadline (fetch, sleep and clock injected)."""
    with LiveServer(make_app()) as server:
        page = browser_page(server.url)
        result = page.evaluate("async () => (await import('/__tests__/unit.js')).run()")
    assert result["ran"] >= 7 and result["failures"] == [], result["failures"]
