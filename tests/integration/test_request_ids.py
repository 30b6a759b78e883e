"""X-Request-ID reuse and validation, and W3C traceparent."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.harness.app import read_log
from tests.harness.contract import assert_error


def test_valid_incoming_request_id_is_reused(client: FlaskClient) -> None:
    response = client.get("/nope", headers={"X-Request-ID": "client-abc:123.4_5"})
    assert assert_error(response, 404)["request_id"] == "client-abc:123.4_5"


@pytest.mark.parametrize(
    "bad", ["has space", "x" * 129, "new\nline", "trailing-newline\n", "<script>", "semi;colon", ""]
)
def test_invalid_incoming_request_id_is_replaced_and_reported(app: Flask, bad: str) -> None:
    response = app.test_client().get("/nope", environ_overrides={"HTTP_X_REQUEST_ID": bad})
    rid = assert_error(response, 404)["request_id"]
    assert rid != bad and len(rid) == 32
    rejected = [line for line in read_log(app, "security.log") if line.get("event_type") == "request_id_rejected"]
    assert len(rejected) == 1 and rejected[0]["request_id"] == rid
    assert "\n" not in rejected[0]["rejected_value"]


def test_traceparent_trace_id_is_logged_beside_request_id(app: Flask) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = app.test_client().get("/nope", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    rid = assert_error(response, 404)["request_id"]
    lines = [line for line in read_log(app, "performance.log") if line.get("request_id") == rid]
    assert lines and lines[0]["trace_id"] == trace


@pytest.mark.parametrize(
    "bad",
    ["garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01"],
)
def test_invalid_traceparent_is_ignored(app: Flask, bad: str) -> None:
    rid = assert_error(app.test_client().get("/nope", headers={"traceparent": bad}), 404)["request_id"]
    lines = [line for line in read_log(app, "performance.log") if line.get("request_id") == rid]
    assert lines and lines[0]["trace_id"] is None
