"""Query strings go through one parser: a bad value is a 422 naming the parameter, never a silent default (#16)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from flask import Flask

from tests.harness.app import ADMIN_EMAIL, bearer, login

BACKEND = Path(__file__).resolve().parents[2] / "backend"


def _admin(app: Flask) -> dict[str, str]:
    return bearer(login(app.test_client(), ADMIN_EMAIL)["access_token"])


def _fields(response: object) -> dict[str, str]:
    body = response.get_json()  # type: ignore[attr-defined]
    assert response.status_code == 422, body  # type: ignore[attr-defined]
    assert body["error"]["code"] == "VALIDATION_ERROR"
    return body["error"]["details"]["fields"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("archived=abc", "archived"),  # read as false before: the admin saw live letters and thought none archived
        ("archived=2", "archived"),
        ("page=0", "page"),
        ("page=x", "page"),
        ("per_page=101", "per_page"),
        ("since=yesterday", "since"),
        ("analysis=bogus", "analysis"),
        ("colour=red", "colour"),  # a typo'd parameter is reported, not ignored
    ],
)
def test_dead_letter_list_refuses_a_bad_parameter(app: Flask, query: str, field: str) -> None:
    response = app.test_client().get(f"/admin/api/monitoring/dead-letters?{query}", headers=_admin(app))
    assert field in _fields(response)


@pytest.mark.parametrize("value", ["1", "true", "YES", "0", "false", "no", ""])
def test_dead_letter_flags_read_every_spelling_of_yes_and_no(app: Flask, value: str) -> None:
    response = app.test_client().get(f"/admin/api/monitoring/dead-letters?archived={value}", headers=_admin(app))
    assert response.status_code == 200 and response.get_json()["page"] == 1


def test_dead_letter_list_keeps_its_defaults_and_reads_its_filters(app: Flask) -> None:
    base = "/admin/api/monitoring/dead-letters"
    headers = _admin(app)
    client = app.test_client()
    body = client.get(base, headers=headers).get_json()
    assert (body["page"], body["per_page"], body["total"]) == (1, 50, 0)
    body = client.get(f"{base}?page=2&per_page=5&since=2026-01-01T00:00:00Z&kind=&analysis=", headers=headers)
    assert body.status_code == 200 and (body.get_json()["page"], body.get_json()["per_page"]) == (2, 5)


@pytest.mark.parametrize(
    ("query", "field"), [("limit=abc", "limit"), ("limit=0", "limit"), ("severity=loud", "severity")]
)
def test_notifications_refuse_a_bad_parameter(app: Flask, query: str, field: str) -> None:
    headers = bearer(login(app.test_client())["access_token"])
    assert field in _fields(app.test_client().get(f"/api/errors/notifications?{query}", headers=headers))


def test_notifications_read_a_severity_in_any_case(app: Flask) -> None:
    headers = bearer(login(app.test_client())["access_token"])
    response = app.test_client().get("/api/errors/notifications?severity=high&limit=5", headers=headers)
    assert response.status_code == 200 and response.get_json() == {"notifications": []}


def test_dashboard_chart_refuses_an_unknown_window(app: Flask) -> None:
    client, headers = app.test_client(), _admin(app)
    assert "window" in _fields(client.get("/admin/api/dashboard/timeseries?window=7d", headers=headers))
    assert client.get("/admin/api/dashboard/timeseries?window=24h", headers=headers).get_json()["window"] == "24h"


def test_no_view_reads_the_query_string_by_hand() -> None:
    # `request.args.get(..., type=int)` falls back to the default on bad input: only validation.py may read args.
    readers = []
    for path in BACKEND.rglob("*.py"):
        if path.name == "validation.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "args" and ast.unparse(node.value) == "request":
                readers.append(f"{path.relative_to(BACKEND)}:{node.lineno}")
    assert readers == []


def test_a_download_refuses_a_redirect_flag_it_cannot_read(app: Flask) -> None:
    # Read before the render is looked up: a bad query is the caller's to fix whatever the render's state.
    headers = bearer(login(app.test_client())["access_token"])
    assert "redirect" in _fields(app.test_client().get("/api/renders/1/download?redirect=maybe", headers=headers))
    assert app.test_client().get("/api/renders/1/download?redirect=1", headers=headers).status_code == 404
