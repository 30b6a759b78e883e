"""The error catalog and the OpenAPI document: complete, valid, and in step with the docs."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from backend.app.edge.openapi import undocumented_endpoints
from backend.app.error_catalog import CODE_PATTERN, entries, render_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def test_catalog_lists_every_code_with_status_meaning_and_recoverable(client: FlaskClient) -> None:
    body = client.get("/api/errors/catalog").get_json()
    codes = {entry["code"]: entry for entry in body["errors"]}
    assert len(codes) == len(body["errors"]) == len(entries())
    for code in (
        "VALIDATION_ERROR",
        "MALFORMED_JSON",
        "TOKEN_EXPIRED",
        "TOKEN_MISSING",
        "TOKEN_REVOKED",
        "TOKEN_INVALID",
        "RATE_LIMITED",
        "INTERNAL_ERROR",
        "DATABASE_UNAVAILABLE",
        "NOT_FOUND",
        "METHOD_NOT_ALLOWED",
        "PAYLOAD_TOO_LARGE",
        "UNSUPPORTED_MEDIA_TYPE",
        "PAYMENT_DECLINED",
        "CIRCUIT_OPEN",
        "SERVICE_NOT_CONFIGURED",
    ):
        assert code in codes, code
    for entry in codes.values():
        assert CODE_PATTERN.match(entry["code"])
        assert 400 <= entry["status"] <= 599
        assert entry["meaning"] and isinstance(entry["recoverable"], bool)


def test_docs_errors_md_is_generated_from_the_catalog(app: Flask) -> None:
    # `app` is built so every module that registers codes has been imported.
    assert DOCS.read_text(encoding="utf-8") == render_markdown(), "docs/errors.md is stale: run `make docs`"


def test_openapi_document_is_valid_and_covers_every_route(app: Flask) -> None:
    assert undocumented_endpoints(app) == []
    spec = app.test_client().get("/api/openapi.json").get_json()
    validate(spec)
    rules = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    operations = sum(len(methods) for methods in spec["paths"].values())
    assert operations == len(rules)
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert set(envelope["properties"]["error"]["required"]) >= {"code", "message", "request_id", "status"}
    login = spec["paths"]["/api/auth/login"]["post"]
    assert {"400", "415", "422", "429", "500", "default"} <= set(login["responses"])
    me = spec["paths"]["/api/me"]["get"]
    assert me["security"] == [{"bearerAuth": []}] and "401" in me["responses"]
