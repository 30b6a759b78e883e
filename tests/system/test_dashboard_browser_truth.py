"""The dashboard tells the truth about budgets, error rates and missing features (#15 points 4 and 5).

Headless Chromium against the real app on a loopback server (the set-up of test_dashboard_browser).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from backend.app.extensions import db
from backend.app.models import SloMinute
from backend.app.monitoring import flush_error_stats
from tests.harness.app import ADMIN_EMAIL, login
from tests.harness.browser import DESKTOP, PASSWORD, WAIT_MS, LiveServer, Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_point4_and_5_exhausted_budgets_split_rates_and_features_not_set_up(
    make_app: Callable[..., Flask],
    browser: Any,
) -> None:
    app = make_app(SLOS={"*": {"objective": 0.999, "window_days": 30}})
    client = app.test_client()
    assert login(client, ADMIN_EMAIL, PASSWORD)["access_token"]
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    with app.app_context():
        # One bad answer in seven against 99.9%: the gauge once read "-14186%".
        db.session.add(SloMinute(minute=minute, endpoint_group="spent", total=7, bad=1, not_configured=0))
        db.session.commit()
    for _ in range(4):
        assert client.get("/no/such/page").status_code == 404  # client errors, not an outage
    flush_error_stats(app)

    with LiveServer(app) as server:
        desk = Page(browser, server.url, DESKTOP)
        desk.sign_in()
        page = desk.page
        gauge = page.wait_for_selector(".gauge[data-slo='spent']", timeout=WAIT_MS)
        assert gauge.get_attribute("data-exhausted") == "true" and gauge.get_attribute("data-state") == "bad"
        times = "\u00d7"  # the multiplication sign the gauge writes
        assert f"exhausted: 142.9{times} the budget spent" in gauge.inner_text()
        assert page.text_content(".gauge[data-slo='spent'] svg text.pct") == f"142.9{times}"  # not "-14186%"

        rate = page.wait_for_selector("#rates [data-rate='5m']", timeout=WAIT_MS)
        assert rate.inner_text().startswith("5m: 0.00% 5xx (0)")
        assert "4xx (4)" in rate.inner_text()

        stripe = page.wait_for_selector("#degradation [data-degraded='stripe']", timeout=WAIT_MS)
        assert stripe.get_attribute("data-state") == "not_configured"
        assert "not set up" in stripe.inner_text() and "Buying credits is not available" in stripe.inner_text()
        assert "Every feature works normally" not in page.inner_text("#degradation")
        assert desk.console_errors == []
