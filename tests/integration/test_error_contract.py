"""Every error status, produced through the real app, comes back in the JSON envelope."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient

from backend.app.errors import (
    DatabaseError,
    ExternalServiceError,
    PaymentError,
    RenderingError,
    ValidationError,
)
from tests.harness.app import read_log
from tests.harness.contract import assert_error, assert_no_leak

SECRET_IN_EXCEPTION = "sk_test_CANARY0123456789 at /srv/app/secret.py password=hunter2hunter2"


def test_unknown_route_is_404_envelope(client: FlaskClient) -> None:
    assert_error(client.get("/definitely/not/here"), 404, "NOT_FOUND")


def test_trailing_and_double_slashes_never_redirect(client: FlaskClient) -> None:
    assert client.get("/api/errors/catalog/").status_code == 200
    assert_error(client.get("//api/errors/catalog"), 404, "NOT_FOUND")


def test_wrong_method_is_405_with_allow_header(client: FlaskClient) -> None:
    response = client.delete("/api/errors/catalog")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["Allow"]


def test_body_over_limit_is_413(make_app: Callable[..., Flask]) -> None:
    app = make_app(MAX_UPLOAD_MB=1)
    big = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 10)
    response = app.test_client().post("/api/auth/register", data=big, content_type="application/json")
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    response = client.post("/api/auth/register", data="email=a@b.c", content_type="text/plain")
    error = assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert error["details"]["expected"] == "application/json"


def test_malformed_json_is_400_with_its_own_code(client: FlaskClient) -> None:
    response = client.post("/api/auth/register", data='{"email": ', content_type="application/json")
    assert_error(response, 400, "MALFORMED_JSON")


def test_invalid_utf8_body_is_malformed_json(client: FlaskClient) -> None:
    response = client.post("/api/auth/register", data=b"\xff\xfe{", content_type="application/json")
    assert_error(response, 400, "MALFORMED_JSON")


def test_field_problems_are_422_with_details_fields(client: FlaskClient) -> None:
    response = client.post("/api/auth/register", json={"email": "not-an-email", "extra": 1})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert set(error["details"]["fields"]) == {"email", "password", "extra"}


def test_json_that_is_not_an_object_is_422(client: FlaskClient) -> None:
    error = assert_error(client.post("/api/auth/register", json=[1, 2]), 422, "VALIDATION_ERROR")
    assert "body" in error["details"]["fields"]


@pytest.fixture
def boom_app(make_app: Callable[..., Flask]) -> Flask:
    """The real app plus routes that fail in every way a view can."""
    app = make_app()

    @app.get("/__test/unhandled")
    def unhandled() -> None:
        raise RuntimeError(SECRET_IN_EXCEPTION)

    @app.get("/__test/abort/<int:status>")
    def aborts(status: int) -> None:
        abort(status)

    @app.get("/__test/raise/<kind>")
    def raises(kind: str) -> None:
        errors = {
            "validation": ValidationError("Email is required", field="email"),
            "payment": PaymentError(
                "Payment declined", "PAYMENT_DECLINED", {"reason": "insufficient_funds"}, recoverable=True
            ),
            "rendering": RenderingError("FFmpeg encoding failed", "FFMPEG_ERROR", {"exit_code": 1, "duration": "30s"}),
            "external": ExternalServiceError("Storage is down", retry_after=30),
            "database": DatabaseError(),
        }
        raise errors[kind]

    @app.before_request
    def failing_hook() -> None:
        from flask import request

        if request.path == "/__test/hook":
            raise RuntimeError("hook failed " + SECRET_IN_EXCEPTION)

    return app


def test_unhandled_exception_is_generic_500_and_traceback_is_logged(boom_app: Flask) -> None:
    response = boom_app.test_client().get("/__test/unhandled")
    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert "unexpected" in error["message"].lower()
    assert_no_leak(response.get_data(as_text=True), "sk_test_CANARY0123456789", "hunter2hunter2", "RuntimeError")
    lines = [line for line in read_log(boom_app, "errors.log") if line.get("request_id") == error["request_id"]]
    assert lines, "the 500 must be in errors.log under its request ID"
    record = lines[0]
    assert record["exc_type"] == "RuntimeError"
    assert "Traceback (most recent call last)" in record["traceback"]
    assert "unhandled" in record["traceback"]  # the view's frame is there
    assert "sk_test_CANARY0123456789" not in record["traceback"]  # redacted even in the log
    assert record["path"] == "/__test/unhandled" and record["method"] == "GET"


def test_error_raised_in_before_request_hook_is_enveloped(boom_app: Flask) -> None:
    response = boom_app.test_client().get("/__test/hook")
    assert_error(response, 500, "INTERNAL_ERROR")
    assert_no_leak(response.get_data(as_text=True), "hunter2hunter2")


@pytest.mark.parametrize(
    ("status", "code", "recoverable"),
    [
        (400, "BAD_REQUEST", False),
        (401, "UNAUTHORIZED", False),
        (403, "FORBIDDEN", False),
        (404, "NOT_FOUND", False),
        (409, "CONFLICT", False),
        (422, "UNPROCESSABLE_ENTITY", False),
        (429, "RATE_LIMITED", True),
        (500, "INTERNAL_ERROR", False),
        (502, "BAD_GATEWAY", True),
        (503, "SERVICE_UNAVAILABLE", True),
        (504, "GATEWAY_TIMEOUT", True),
    ],
)
def test_abort_with_any_status_is_enveloped(boom_app: Flask, status: int, code: str, recoverable: bool) -> None:
    error = assert_error(boom_app.test_client().get(f"/__test/abort/{status}"), status, code)
    assert error["recoverable"] is recoverable


@pytest.mark.parametrize(
    ("kind", "status", "code", "recoverable"),
    [
        ("validation", 422, "VALIDATION_ERROR", False),
        ("payment", 402, "PAYMENT_DECLINED", True),
        ("rendering", 500, "FFMPEG_ERROR", False),
        ("external", 503, "EXTERNAL_SERVICE_UNAVAILABLE", True),
        ("database", 500, "DATABASE_ERROR", False),
    ],
)
def test_raised_api_errors_keep_code_status_and_details(
    boom_app: Flask, kind: str, status: int, code: str, recoverable: bool
) -> None:
    error = assert_error(boom_app.test_client().get(f"/__test/raise/{kind}"), status, code)
    assert error["recoverable"] is recoverable
    if kind == "validation":
        assert error["details"] == {"fields": {"email": "Email is required"}}
    if kind == "payment":
        assert error["details"] == {"reason": "insufficient_funds"}
    if kind == "external":
        assert error["retry_after"] == 30


def test_request_id_header_on_success_too(client: FlaskClient) -> None:
    response = client.get("/api/errors/catalog")
    assert response.status_code == 200
    assert response.headers["X-Request-ID"]
