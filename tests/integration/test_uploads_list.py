"""`GET /api/uploads` and `GET /api/renders` through the real app (#13 point 12): the caller's own rows, newest
first, a page at a time (`limit`, `before` → `next_before`), login required, and every bad query value a 422.

One upload goes through `POST /api/uploads` (real audio, real probe) to show the list returns what the upload
returned; the pagination cases insert rows directly, since listing only reads them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.app.extensions import db
from backend.app.models import Render, Upload
from tests.harness.app import bearer, login
from tests.harness.contract import assert_error
from tests.harness.peers.audio import AudioFactory

LISTS = ("/api/uploads", "/api/renders")


class Account:
    """A registered, logged-in user of `client`."""

    def __init__(self, client: FlaskClient, email: str) -> None:
        self.client = client
        self.headers = bearer(login(client, email)["access_token"])
        self.id: int = client.get("/api/me", headers=self.headers).get_json()["user"]["id"]

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers)

    def page(self, path: str) -> dict[str, Any]:
        response = self.get(path)
        assert response.status_code == 200, response.get_json()
        return response.get_json()


def add_uploads(app: Flask, user_id: int, count: int) -> list[int]:
    """`count` upload rows of `user_id`, oldest first; their ids."""
    with app.app_context():
        rows = [
            Upload(
                user_id=user_id,
                filename=f"take-{n}.wav",
                format="wav",
                content_type="audio/wav",
                size=1000 + n,
                duration_seconds=1.0,
                storage_key=f"uploads/{user_id}/{n}.wav",
                location="local",
            )
            for n in range(count)
        ]
        for row in rows:  # one flush each, so ids follow the order of creation
            db.session.add(row)
            db.session.flush()
        db.session.commit()
        return [row.id for row in rows]


def add_renders(app: Flask, user_id: int, upload_id: int, count: int) -> list[int]:
    """`count` queued render rows of `user_id` for `upload_id`, oldest first; their ids."""
    with app.app_context():
        rows = [
            Render(user_id=user_id, upload_id=upload_id, preset="waveform", resolution="320x180", fps=24)
            for _ in range(count)
        ]
        for row in rows:
            db.session.add(row)
            db.session.flush()
        db.session.commit()
        return [row.id for row in rows]


def walk(account: Account, path: str, key: str, limit: int) -> tuple[list[int], list[int]]:
    """Follow `next_before` from the first page to the last: every id seen, and each page's size."""
    seen: list[int] = []
    sizes: list[int] = []
    url = f"{path}?limit={limit}"
    for _ in range(50):  # a cursor that never ends would fail here, not hang
        body = account.page(url)
        seen += [row["id"] for row in body[key]]
        sizes.append(len(body[key]))
        if body["next_before"] is None:
            return seen, sizes
        assert body["next_before"] == seen[-1]
        url = f"{path}?limit={limit}&before={body['next_before']}"
    raise AssertionError("next_before never ended")


def test_point12_uploads_list_returns_what_each_upload_returned_newest_first(
    app: Flask, client: FlaskClient, audio_files: AudioFactory
) -> None:
    account = Account(client, "lister@example.com")
    assert account.page("/api/uploads") == {"uploads": [], "next_before": None}
    posted = []
    for fmt in ("wav", "mp3"):
        response = client.post(
            "/api/uploads",
            data={"file": (io.BytesIO(audio_files.make(fmt, seconds=0.5).read_bytes()), f"tone.{fmt}")},
            headers=account.headers,
            content_type="multipart/form-data",
        )
        assert response.status_code == 201, response.get_json()
        posted.append(response.get_json()["upload"])
    assert account.page("/api/uploads") == {"uploads": posted[::-1], "next_before": None}


def test_point12_uploads_page_by_before_without_repeats_or_gaps_while_new_ones_arrive(app: Flask) -> None:
    account = Account(app.test_client(), "pages@example.com")
    ids = add_uploads(app, account.id, 7)
    first = account.page("/api/uploads?limit=3")
    assert [u["id"] for u in first["uploads"]] == ids[::-1][:3] and first["next_before"] == ids[4]
    newer = add_uploads(app, account.id, 2)  # arrive between two page loads: they shift nothing
    rest, sizes = walk(account, "/api/uploads", "uploads", 3)
    assert rest == (ids + newer)[::-1] and sizes == [3, 3, 3]
    second = account.page(f"/api/uploads?limit=3&before={first['next_before']}")
    assert [u["id"] for u in second["uploads"]] == ids[::-1][3:6]
    # A last page that is exactly full says so: no empty page to fetch after it.
    exact = account.page(f"/api/uploads?limit=3&before={ids[3]}")
    assert [u["id"] for u in exact["uploads"]] == ids[:3][::-1] and exact["next_before"] is None
    assert account.page(f"/api/uploads?before={ids[0]}") == {"uploads": [], "next_before": None}
    assert len(account.page("/api/uploads")["uploads"]) == 9  # default limit 50


def test_point12_renders_page_exactly_like_uploads(app: Flask) -> None:
    account = Account(app.test_client(), "renders@example.com")
    [upload_id] = add_uploads(app, account.id, 1)
    ids = add_renders(app, account.id, upload_id, 5)
    seen, sizes = walk(account, "/api/renders", "renders", 2)
    assert seen == ids[::-1] and sizes == [2, 2, 1]
    body = account.page(f"/api/renders?limit=1&before={ids[2]}")
    assert [r["id"] for r in body["renders"]] == [ids[1]] and body["next_before"] == ids[1]


def test_point12_lists_show_only_the_callers_own_rows(app: Flask) -> None:
    client = app.test_client()
    alice, bob = Account(client, "alice@example.com"), Account(client, "bob@example.com")
    alice_uploads = add_uploads(app, alice.id, 3)
    bob_uploads = add_uploads(app, bob.id, 2)
    alice_renders = add_renders(app, alice.id, alice_uploads[0], 2)
    assert [u["id"] for u in bob.page("/api/uploads")["uploads"]] == bob_uploads[::-1]
    assert [u["id"] for u in alice.page("/api/uploads")["uploads"]] == alice_uploads[::-1]
    # A cursor is only a bound: Bob paging "before" one of Alice's ids still sees only his own rows.
    after_all = max(alice_uploads + bob_uploads) + 1
    assert [u["id"] for u in bob.page(f"/api/uploads?before={after_all}&limit=100")["uploads"]] == bob_uploads[::-1]
    assert bob.page(f"/api/uploads?before={alice_uploads[-1]}")["uploads"] == []
    assert bob.page("/api/renders") == {"renders": [], "next_before": None}
    assert [r["id"] for r in alice.page("/api/renders")["renders"]] == alice_renders[::-1]


@pytest.mark.parametrize("path", LISTS)
def test_point12_lists_need_a_valid_access_token(app: Flask, path: str) -> None:
    client = app.test_client()
    tokens = login(client, "tokens@example.com")
    assert_error(client.get(path), 401, "TOKEN_MISSING")
    assert_error(client.get(path, headers=bearer("not-a-jwt")), 401, "TOKEN_INVALID")
    assert_error(client.get(path, headers=bearer(tokens["refresh_token"])), 401, "TOKEN_WRONG_TYPE")


BAD_QUERIES: list[tuple[str, str]] = [
    ("limit=0", "limit"),
    ("limit=101", "limit"),
    ("limit=-1", "limit"),
    ("limit=abc", "limit"),
    ("limit=2.5", "limit"),
    ("limit=", "limit"),
    ("before=0", "before"),
    ("before=-5", "before"),
    ("before=seven", "before"),
    ("before=2147483648", "before"),  # beyond INTEGER: a 422, never a database error
    ("before=99999999999999999999999", "before"),
    ("limt=5", "limt"),  # a typo is reported, not ignored in favour of the default
    ("limit=5&limit=500", "limit"),  # which one would count? refused
]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize(("query", "field"), BAD_QUERIES)
def test_point12_a_bad_query_value_is_a_422_naming_it_never_a_silent_default(
    make_app: Callable[..., Flask], path: str, query: str, field: str
) -> None:
    app = make_app()
    account = Account(app.test_client(), "query@example.com")
    error = assert_error(account.get(f"{path}?{query}"), 422, "VALIDATION_ERROR")
    assert field in error["details"]["fields"], error


def test_point12_the_openapi_document_describes_both_lists_alike(app: Flask) -> None:
    spec = app.test_client().get("/api/openapi.json").get_json()
    uploads, renders = spec["paths"]["/api/uploads"]["get"], spec["paths"]["/api/renders"]["get"]
    for operation in (uploads, renders):
        assert [p["name"] for p in operation["parameters"] if p["in"] == "query"] == ["limit", "before"]
        assert {"200", "401", "422"} <= set(operation["responses"])
        assert operation["security"] == [{"bearerAuth": []}]
    schemas = spec["components"]["schemas"]
    assert set(schemas["UploadList"]["properties"]) == {"uploads", "next_before"}
    assert set(schemas["RenderList"]["properties"]) == {"renders", "next_before"}
