"""The browser client (/static/js/oriel-client.js) in headless Chromium against the real app on a real
loopback server: a 429 is retried after its Retry-After, a 422 is not retried and its field errors reach
the page, and a render whose response is lost is retried with the same Idempotency-Key and happens once.
#13 point 12: an expired access token is refreshed once (shared by concurrent calls), a refused refresh
ends the session clearly, a write the server does not de-duplicate is never sent twice, and the client's
list of de-duplicated writes is the server's `@idempotent` views.

Chromium is Debian's (/usr/bin/chromium, installed by `make test`), driven by Playwright for Python; no
browser is ever downloaded. Screenshots go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.edge.idempotency import idempotent
from backend.app.extensions import db
from backend.app.models import Render, Upload, User
from backend.app.services import credits
from tests.harness.app import bearer
from tests.harness.browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    LiveServer,
    load_playwright,
    user_with_upload,
)
from tests.harness.peers.audio import AudioFactory

SMALL = {"preset": "waveform", "resolution": "320x180", "fps": 24}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """Open the test page of a live server in a fresh headless Chromium profile."""
    sync_playwright = load_playwright()
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


LOGIN_JS = """async ([email, password]) => {
  const { data } = await window.oriel.api.post("/api/auth/login", { email, password });
  window.oriel.api.setToken(data.access_token);
  return window.oriel.api.hasToken();
}"""


LOGIN_WITH_REFRESH_JS = """async ([email, password]) => {
  const { data } = await window.oriel.api.post("/api/auth/login", { email, password });
  window.oriel.api.setTokens({ access: data.access_token, refresh: data.refresh_token });
  return { refresh: data.refresh_token, held: window.oriel.api.hasRefreshToken() };
}"""
SHORT_TOKENS = {"JWT_ACCESS_TOKEN_EXPIRES_SECONDS": 2}  # whole seconds in the JWT: at least 1 s of life
TOKEN_EXPIRY_WAIT = 3.2


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
    _, upload_id = user_with_upload(app, audio_files, "limited@example.com")
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
    user_with_upload(app, audio_files, "fields@example.com")
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
    user_id, upload_id = user_with_upload(app, audio_files, "lossy@example.com")
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
    """tests/harness/browser/unit.js: what is and is not retried, waits, keys, deadline (fetch, sleep, clock faked)."""
    with LiveServer(make_app()) as server:
        page = browser_page(server.url)
        result = page.evaluate("async () => (await import('/__tests__/unit.js')).run()")
    assert result["ran"] >= 7 and result["failures"] == [], result["failures"]


@pytest.mark.parametrize(("group", "at_least"), [("refresh", 6), ("ambiguous", 4), ("jitter", 1)])
def test_point12_the_client_unit_checks_pass_in_chromium(
    make_app: Callable[..., Flask], browser_page: Callable[[str], Any], group: str, at_least: int
) -> None:
    """tests/harness/browser/unit.js "point12 <group>": refresh once, no repeat of a non-de-duplicated write, jitter."""
    with LiveServer(make_app()) as server:
        page = browser_page(server.url)
        result = page.evaluate("async (prefix) => (await import('/__tests__/unit.js')).run(prefix)", f"point12 {group}")
    assert result["ran"] >= at_least and result["failures"] == [], (result["names"], result["failures"])


PARALLEL_JS = """async (body) => {
  const api = window.oriel.api;
  window.oriel.attempts.length = 0;
  const calls = [api.get("/api/me"), api.get("/api/uploads?limit=5"), api.post("/api/renders", body)];
  const results = await Promise.all(calls);
  return {
    results: results.map(({ status, attempts, idempotencyKey, data }) => ({ status, attempts, idempotencyKey, data })),
    trace: [...window.oriel.attempts],
  };
}"""


def test_point12_an_expired_access_token_is_refreshed_once_for_concurrent_calls_and_the_render_happens_once(
    make_app: Callable[..., Flask], audio_files: AudioFactory, browser_page: Callable[[str], Any]
) -> None:
    app = _app(make_app, **SHORT_TOKENS)
    user_id, upload_id = user_with_upload(app, audio_files, "expiring@example.com")
    with app.app_context():
        before = credits.balance(user_id)
    with LiveServer(app) as server:
        page = browser_page(server.url)
        assert page.evaluate(LOGIN_WITH_REFRESH_JS, ["expiring@example.com", PASSWORD])["held"] is True
        time.sleep(TOKEN_EXPIRY_WAIT)  # the access token expires; the refresh token (30 days) does not
        outcome = page.evaluate(PARALLEL_JS, {"upload_id": upload_id, **SMALL})
        _screenshot(page, "token-refreshed")
    me, uploads, render = outcome["results"]
    assert (me["status"], uploads["status"], render["status"]) == (200, 200, 202), outcome
    assert me["data"]["user"]["email"] == "expiring@example.com"
    assert [u["id"] for u in uploads["data"]["uploads"]] == [upload_id]
    assert me["attempts"] == uploads["attempts"] == render["attempts"] == 2  # refused once, sent again once
    trace = outcome["trace"]
    refreshes = [a for a in trace if a["url"].endswith("/api/auth/refresh")]
    assert len(refreshes) == 1 and refreshes[0]["status"] == 200, trace  # three calls, one refresh
    others = [a for a in trace if a not in refreshes]
    assert sorted(a["status"] for a in others) == [200, 200, 202, 401, 401, 401], trace
    writes = [a for a in others if a["method"] == "POST"]
    assert [w["status"] for w in writes] == [401, 202]
    assert writes[0]["key"] == writes[1]["key"] == render["idempotencyKey"]  # the resend kept its key
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Render)) == 1
        assert credits.balance(user_id) == before - 1


def test_point12_a_revoked_refresh_token_ends_the_session_once_with_a_clear_error(
    make_app: Callable[..., Flask], browser_page: Callable[[str], Any]
) -> None:
    app = _app(make_app, **SHORT_TOKENS)
    app.test_client().post("/api/auth/register", json={"email": "revoked@example.com", "password": PASSWORD})
    with LiveServer(app) as server:
        page = browser_page(server.url)
        refresh = page.evaluate(LOGIN_WITH_REFRESH_JS, ["revoked@example.com", PASSWORD])["refresh"]
        logout = app.test_client().post("/api/auth/logout", headers=bearer(refresh))  # signed out elsewhere
        assert logout.status_code == 200, logout.get_json()
        time.sleep(TOKEN_EXPIRY_WAIT)
        ended = page.evaluate("async () => window.oriel.run((api) => api.get('/api/me'))")
        state = page.evaluate(
            "() => ({ lost: [...window.oriel.authLost], token: window.oriel.api.hasToken(),"
            " refresh: window.oriel.api.hasRefreshToken() })"
        )
        after = page.evaluate("async () => window.oriel.run((api) => api.get('/api/me'))")
        _screenshot(page, "session-ended")
    assert not ended["ok"], ended
    error = ended["error"]
    assert (error["code"], error["status"], error["cause"], error["recoverable"]) == (
        "SESSION_ENDED",
        401,
        "TOKEN_REVOKED",
        False,
    )
    assert "sign in again" in error["message"]
    assert [(a["url"].rsplit("/", 1)[-1], a["status"]) for a in ended["trace"]] == [("me", 401), ("refresh", 401)]
    assert state == {"lost": ["TOKEN_REVOKED"], "token": False, "refresh": False}
    # Nothing stale is sent afterwards: the next call goes without a token and is simply TOKEN_MISSING.
    assert after["error"]["code"] == "TOKEN_MISSING" and len(after["trace"]) == 1
    assert after["trace"][0]["hasAuthorization"] is False


def test_point12_writes_the_server_does_not_de_duplicate_are_not_sent_again_when_their_answer_is_lost(
    make_app: Callable[..., Flask], browser_page: Callable[[str], Any]
) -> None:
    app = _app(make_app)
    reached: list[tuple[str, int]] = []
    with LiveServer(app) as server:
        page = browser_page(server.url)

        def lose_the_answer(route: Any) -> None:
            served = route.fetch()  # the app does the work...
            reached.append((route.request.url.rsplit("/", 1)[-1], served.status))
            if route.request.url.endswith("/report"):
                route.abort("connectionreset")  # ...and the connection drops on the way back
            else:
                route.fulfill(status=504, body="<html>gateway timeout</html>", content_type="text/html")  # a proxy

        page.route("**/api/errors/report", lose_the_answer)
        page.route("**/api/auth/register", lose_the_answer)
        report = page.evaluate(
            "async () => window.oriel.run((api) => api.post('/api/errors/report', {message: 'boom', code: 'X'}))"
        )
        register = page.evaluate(
            "async (body) => window.oriel.run((api) => api.post('/api/auth/register', body))",
            {"email": "once@example.com", "password": PASSWORD},
        )
        _screenshot(page, "not-repeated")
    assert reached == [("report", 202), ("register", 201)]  # each reached the app exactly once
    for result, code in ((report, "NETWORK_ERROR"), (register, "HTTP_504")):
        assert not result["ok"] and len(result["trace"]) == 1, result
        assert result["error"]["code"] == code and result["error"]["ambiguous"] is True, result
        assert "not sent again" in result["error"]["message"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User).where(User.email == "once@example.com")) == 1


def test_point12_the_clients_deduplicated_writes_are_exactly_the_servers_idempotent_views(
    make_app: Callable[..., Flask], browser_page: Callable[[str], Any]
) -> None:
    """If a view gains or loses `@idempotent`, DEDUPLICATED_WRITES in oriel-client.js must follow."""
    app = make_app()
    marker = idempotent(lambda: None).__code__  # every view wrapped by @idempotent runs this code object

    def is_idempotent(view: Any) -> bool:
        while view is not None:
            if getattr(view, "__code__", None) is marker:
                return True
            view = getattr(view, "__wrapped__", None)
        return False

    server_side = {
        f"{method} {rule.rule}"
        for rule in app.url_map.iter_rules()
        if is_idempotent(app.view_functions[rule.endpoint])
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    with LiveServer(app) as server:
        page = browser_page(server.url)
        client_side = page.evaluate("async () => [...(await import('/static/js/oriel-client.js')).DEDUPLICATED_WRITES]")
    assert len(server_side) >= 3
    assert set(client_side) == server_side
