"""Multiwindow burn-rate alerts: synthetic traffic at known error ratios fires exactly the predicted alerts.

Objective 99.9% (budget 0.1%). Each group gets a traffic shape and three rules (one per window pair):

| group | traffic (minutes ago)                                | 1h_5m (14.4x) | 6h_30m (6x) | 3d_6h (1x) |
|-------|------------------------------------------------------|---------------|-------------|------------|
| a     | 2% errors for the last hour, clean before            | fires (20x)   | 3.3x over 6h| 0.3x over 3d|
| b     | 0.8% errors for the last 6 hours, clean before       | 8x            | fires (8x)  | 0.7x       |
| c     | 0.15% errors for 3 days                              | 1.5x          | 1.5x        | fires (1.5x)|
| d     | 2% errors 6-59 minutes ago, the last 5 minutes clean | 18x but 0x/5m | 3x          | 0.3x       |
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from backend.app.extensions import db
from backend.app.models import SloMinute
from backend.app.monitoring.alerts import evaluate_all
from backend.app.monitoring.alerts.slo import BURN_WINDOWS
from tests.harness.alerts import traffic
from tests.harness.app import ADMIN_EMAIL, bearer, login


def test_burn_rate_alerts_fire_exactly_as_predicted(make_app: Callable[..., Flask], webhook_receiver: Any) -> None:
    """Exactly a/1h_5m, b/6h_30m and c/3d_6h fire; d (recovered 5 minutes ago) does not."""
    app = make_app(SLOS={"*": {"objective": 0.999, "window_days": 30}})
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    for group in "abcd":
        for window in BURN_WINDOWS:
            rule = {
                "name": f"{group}-{window.name}",
                "kind": "slo_burn",
                "params": {
                    "group": group,
                    "long_seconds": window.long_seconds,
                    "short_seconds": window.short_seconds,
                    "factor": window.factor,
                },
                "channels": [{"type": "webhook", "url": webhook_receiver.url + "/burn"}],
            }
            assert client.post("/admin/api/monitoring/alerts/configure", headers=headers, json=rule).status_code == 200
    now = datetime.now(UTC)
    with app.app_context():
        db.session.execute(SloMinute.__table__.insert(), traffic(now))
        db.session.commit()
        result = evaluate_all(app, now)
    # The default rules (every group, no channels) fire too: each pair has a group burning that fast.
    defaults = {"slo-burn-page-1h": "firing", "slo-burn-page-6h": "firing", "slo-burn-ticket-3d": "firing"}
    assert result["events"] == {"a-1h_5m": "firing", "b-6h_30m": "firing", "c-3d_6h": "firing", **defaults}
    assert result["deliveries"] == {"sent": 3, "retrying": 0, "failed": 0, "cancelled": 0}
    texts = sorted(body["rule"] for body in webhook_receiver.bodies)
    assert texts == ["a-1h_5m", "b-6h_30m", "c-3d_6h"]

    budgets = {
        b["group"]: b
        for b in client.get("/admin/api/monitoring/slo", headers=headers).get_json()["budgets"]
        if b["group"] in "abcd"
    }
    # c spent 1.5 budgets over its window (0.15% against 0.1%): half a budget over.
    assert abs(budgets["c"]["budget_remaining"] - (-0.5)) < 1e-6
    firing = {(g, w["window"]) for g, b in budgets.items() for w in b["burn"] if w["firing"]}
    assert firing == {("a", "1h_5m"), ("b", "6h_30m"), ("c", "3d_6h")}
    d_fast = next(w for w in budgets["d"]["burn"] if w["window"] == "1h_5m")
    assert d_fast["long_burn_rate"] == 18.0 and d_fast["short_burn_rate"] == 0.0

    # Evaluating again changes nothing: one alert per condition.
    with app.app_context():
        assert evaluate_all(app, now)["events"] == {}
    assert len(webhook_receiver.deliveries) == 3
