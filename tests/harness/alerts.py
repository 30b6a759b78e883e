"""Synthetic SLO traffic at known error ratios (the table in test_alerts_burn's docstring)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

HOUR_ROW = 60_000  # an hourly row stands for 60 minutes of 1,000 requests


def add_rows(now: datetime, group: str, minutes_ago: range, total: int, bad: int) -> list[dict[str, Any]]:
    """Rows of `total` requests with `bad` 5xx at each of `minutes_ago` before `now`'s minute."""
    base = now.replace(second=0, microsecond=0)
    return [
        {"minute": base - timedelta(minutes=k), "endpoint_group": group, "total": total, "bad": bad}
        for k in minutes_ago
    ]


def traffic(now: datetime) -> list[dict[str, Any]]:
    """The four groups' synthetic traffic of the table above."""
    rows: list[dict[str, Any]] = []
    clean_3d = range(360, 4320, 60)
    rows += add_rows(now, "a", range(0, 60), 1000, 20)
    rows += add_rows(now, "a", range(60, 360), 1000, 0)
    rows += add_rows(now, "a", clean_3d, HOUR_ROW, 0)
    rows += add_rows(now, "b", range(0, 360), 1000, 8)
    rows += add_rows(now, "b", clean_3d, HOUR_ROW, 0)
    rows += add_rows(now, "c", range(0, 4320, 60), HOUR_ROW, 90)
    rows += add_rows(now, "d", range(0, 6), 1000, 0)
    rows += add_rows(now, "d", range(6, 60), 1000, 20)
    rows += add_rows(now, "d", range(60, 360), 1000, 0)
    rows += add_rows(now, "d", clean_3d, HOUR_ROW, 0)
    return rows
