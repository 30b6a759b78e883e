"""#15 point 12: the dashboard in headless Chromium, in a far time zone and a month/day locale.

One date format ("YYYY-MM-DD HH:MM", UTC) on the chart's axis, in its tooltips and in the tables, so the same
minute reads the same everywhere; codes and kinds never break inside a word at 375 px (each piece between
the breaks allowed after "_" or "." is measured on one line); every table fits a 375 px screen with its key
columns visible, without scrolling sideways.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from backend.app.monitoring import flush_error_stats
from tests.harness.app import ADMIN_EMAIL, bearer, login
from tests.harness.browser import ARTIFACTS, PASSWORD, WAIT_MS, LiveServer
from tests.harness.failed_work import DEAD_LETTER_KIND, dead_letter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PHONE = {"width": 375, "height": 812}
# Key columns (1-based) that must stay on screen at 375 px; the others may hide on a phone.
KEY_COLUMNS = {
    "groups": (1, 3, 4, 5),  # code, 24 h, status, actions
    "recent": (1, 2, 5, 6),  # when, code, message, request id
    "breakers": (1, 2, 4),  # service, state, actions
    "dlq": (1, 2, 4, 5),  # id, kind, error, actions
    "inbox": (2, 3, 4, 6),  # item, error, age, actions
    "alerts": (1, 2, 4, 6),  # name, kind, state, actions
}


def utc_minute(iso: str) -> str:
    """What the dashboard must show for `iso`: its UTC minute as YYYY-MM-DD HH:MM."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


@pytest.fixture
def busy_app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    """An app with error groups, recent errors, a dead letter (so a failed-work item) and an alert rule."""
    from backend.app.jobs import REGISTRY

    app = make_app(HEALTH_PROBE_DEADLINE=0.5, RETRY_SLEEP_ENABLED=False)
    client = app.test_client()
    admin = bearer(login(client, ADMIN_EMAIL, PASSWORD)["access_token"])
    client.post("/api/auth/register", json={"email": "artist@example.com", "password": PASSWORD})
    user = bearer(login(client, "artist@example.com", PASSWORD)["access_token"])
    assert client.get("/api/renders/987654", headers=user).status_code == 404
    assert client.get("/api/me", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert client.post("/api/renders", json={"preset": 3}, headers=user).status_code in (400, 422)
    rule = {
        "name": "payments-unavailable",
        "kind": "error_rate",
        "params": {"threshold": 0.5, "window_seconds": 300},
        "channels": [{"type": "webhook", "url": "https://hooks.example.com/oriel"}],
        "severity": "HIGH",
    }
    assert client.post("/admin/api/monitoring/alerts/configure", json=rule, headers=admin).status_code in (200, 201)
    dead_letter(app)
    flush_error_stats(app)
    yield app
    REGISTRY.unregister(DEAD_LETTER_KIND)


def _sign_in(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/admin")
    page.wait_for_selector("body[data-ready='true']", timeout=WAIT_MS)
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("body[data-refreshed]", timeout=WAIT_MS)
    for selector in ("#recent td.when", "#groups tr[data-group]", "tr[data-dead-letter]", "tr[data-inbox-item]",
                     "#alerts tr[data-rule]", "#chart svg .axis-label"):  # fmt: skip
        page.wait_for_selector(selector, timeout=WAIT_MS)


DATES_JS = """() => ({
  axis: [...document.querySelectorAll('#chart .axis-label')].map((n) => [n.textContent, n.dataset.at]),
  tips: [...document.querySelectorAll('#chart .point')]
    .map((n) => [n.querySelector('title').textContent, n.dataset.at]),
  when: [...document.querySelectorAll('#recent td.when')].map((n) => [n.textContent, n.dataset.at]),
  age: [...document.querySelectorAll('#inbox td.age')].map((n) => [n.title, n.dataset.at]),
})"""

# Every word of a code between its allowed breaks (<wbr> after "_" or ".", spaces) must sit on one line.
BROKEN_CODES_JS = r"""() => {
  const broken = [];
  let pieces = 0;
  for (const node of document.querySelectorAll('code.code')) {
    if (!node.getClientRects().length) continue;  // in a column hidden on a phone
    for (const child of node.childNodes) {
      if (child.nodeType !== Node.TEXT_NODE || !child.textContent.trim()) continue;
      for (const word of child.textContent.matchAll(/\S+/g)) {  // a space is a fine place to wrap
        const range = document.createRange();
        range.setStart(child, word.index);
        range.setEnd(child, word.index + word[0].length);
        const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        pieces += 1;
        if (lines.size > 1) broken.push(`${node.textContent} (${word[0]} on ${lines.size} lines)`);
      }
    }
  }
  return { pieces, broken };
}"""

LAYOUT_JS = """(keys) => {
  const out = { page: [document.documentElement.scrollWidth, window.innerWidth], tables: {} };
  for (const [id, columns] of Object.entries(keys)) {
    const table = document.getElementById(id);
    const box = table.parentElement;
    const heads = [...table.querySelectorAll('thead th')];
    const row = table.querySelector('tbody tr:not(:has(td.empty))');
    const cells = row ? [...row.children] : [];
    const visible = (n) => {
      const r = n && n.getBoundingClientRect();
      return !!r && r.width > 0 && r.left >= 0 && r.right <= window.innerWidth + 0.5;
    };
    out.tables[id] = {
      fits: table.scrollWidth <= box.clientWidth && box.scrollWidth <= box.clientWidth,
      widths: [table.scrollWidth, box.clientWidth],
      hidden: columns.filter((c) => !visible(heads[c - 1]) || !visible(cells[c - 1]))
        .map((c) => heads[c - 1]?.textContent || c),
      row: !!row,
    };
  }
  return out;
}"""


def test_point12_one_date_format_no_code_broken_mid_word_and_every_table_fits_375px(
    busy_app: Flask,
    browser: Any,
) -> None:
    with LiveServer(busy_app) as server:
        # A month/day locale and a zone far from UTC: the old axis (day/month, local) and tables (toLocaleString)
        # disagreed here.
        context = browser.new_context(viewport=PHONE, locale="en-US", timezone_id="America/Los_Angeles")
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        _sign_in(page, server.url)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-375-layout.png"), full_page=True)

        for viewport in (PHONE, {"width": 1280, "height": 800}):
            page.set_viewport_size(viewport)
            before = page.get_attribute("body", "data-refreshed")
            page.click("#refresh")
            page.wait_for_function("(b) => document.body.dataset.refreshed !== b", arg=before, timeout=WAIT_MS)
            dates = page.evaluate(DATES_JS)
            assert dates["axis"] and dates["tips"] and dates["when"] and dates["age"], dates
            for text, at in dates["axis"] + dates["when"]:
                assert text == utc_minute(at), (text, at)
            for text, at in dates["tips"] + dates["age"]:
                assert text.startswith(utc_minute(at)), (text, at)
            # The same minute reads the same in the table and on the chart: the event's bucket is titled with it.
            tips = {text.split(" UTC")[0] for text, _ in dates["tips"]}
            assert {text for text, _ in dates["when"]} <= tips, (dates["when"], sorted(tips)[-3:])

        page.set_viewport_size(PHONE)
        before = page.get_attribute("body", "data-refreshed")
        page.click("#refresh")
        page.wait_for_function("(b) => document.body.dataset.refreshed !== b", arg=before, timeout=WAIT_MS)
        codes = page.evaluate(BROKEN_CODES_JS)
        assert codes["pieces"] >= 6 and not codes["broken"], codes
        recent_codes = page.locator("#recent code.code").all_inner_texts()
        assert len(recent_codes) >= 3 and any("_" in c for c in recent_codes), recent_codes
        assert page.locator("#dlq code.code", has_text=DEAD_LETTER_KIND).count() == 1

        layout = page.evaluate(LAYOUT_JS, {k: list(v) for k, v in KEY_COLUMNS.items()})
        assert layout["page"][0] <= layout["page"][1], layout["page"]  # nothing scrolls sideways
        for table, seen in layout["tables"].items():
            assert seen["row"], table
            assert seen["fits"], (table, seen["widths"])
            assert not seen["hidden"], (table, seen["hidden"])
        assert not errors, errors
        context.close()
