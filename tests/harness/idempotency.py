"""A logged-in caller sending keyed writes (`Idempotency-Key`), and the rows they leave."""

from __future__ import annotations

import io
import uuid
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.services import credits
from tests.harness.app import bearer, login
from tests.harness.renders import SMALL

SETTINGS: dict[str, Any] = {
    "RETRY_SLEEP_ENABLED": False,
    "RENDER_DISPATCH": "none",  # the render itself is not under test: only what the POST did
    "RENDER_MIN_FREE_DISK_MB": 0,
    "RENDER_MIN_FREE_MEMORY_MB": 0,
    "RATELIMIT_ENABLED": False,
}


class Caller:
    """A logged-in user of one app, with a few credits."""

    def __init__(self, app: Flask, email: str = "idem@example.com", credit: int = 5) -> None:
        self.app = app
        client = app.test_client()
        self.token = login(client, email)["access_token"]
        self.id = client.get("/api/me", headers=bearer(self.token)).get_json()["user"]["id"]
        if credit:
            with app.app_context():
                credits.grant(self.id, credit, "test credits", f"test:{uuid.uuid4().hex}")

    def headers(self, key: str | None) -> dict[str, str]:
        return {**bearer(self.token), **({"Idempotency-Key": key} if key is not None else {})}

    def upload(self, data: bytes, key: str | None = None, name: str = "song.wav", client: FlaskClient | None = None):
        return (client or self.app.test_client()).post(
            "/api/uploads",
            data={"file": (io.BytesIO(data), name)},
            headers=self.headers(key),
            content_type="multipart/form-data",
        )

    def render(self, upload_id: int, key: str | None = None, client: FlaskClient | None = None, **choices: Any):
        body = {"upload_id": upload_id, **(choices or SMALL)}
        return (client or self.app.test_client()).post("/api/renders", json=body, headers=self.headers(key))

    def balance(self) -> int:
        with self.app.app_context():
            return credits.balance(self.id)


def count(app: Flask, model: type[Any]) -> int:
    """How many rows of `model` the app's database holds."""
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model)) or 0
