"""The OpenAPI 3.1 document, built from the URL map and each view's `@documented(...)` metadata.

Every route must be documented (a test enforces it), so the document cannot silently fall behind
the API; later suites fuzz the API from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flask import Flask
from pydantic import BaseModel

from .routing import MAX_BIGINT

F = TypeVar("F", bound=Callable[..., Any])
Auth = Literal["user", "refresh", "admin"] | None
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class OperationDoc:
    """What the OpenAPI document says about one view."""

    summary: str
    tag: str
    request: type[BaseModel] | None = None
    request_content: str = "application/json"
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    auth: Auth = None
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str, str], ...] = ()  # (name, JSON type, description)
    headers: tuple[tuple[str, str], ...] = ()  # (request header name, description)
    response_content: str = "application/json"  # a model-less success of another type (an HTML page)


def documented(
    summary: str,
    *,
    tag: str,
    request: type[BaseModel] | None = None,
    request_content: str = "application/json",
    responses: dict[int, type[BaseModel] | None] | None = None,
    auth: Auth = None,
    errors: Iterable[int] = (),
    query: Iterable[tuple[str, str, str]] = (),
    headers: Iterable[tuple[str, str]] = (),
    response_content: str = "application/json",
) -> Callable[[F], F]:
    """Attach OpenAPI metadata to a view function."""
    doc = OperationDoc(
        summary,
        tag,
        request,
        request_content,
        dict(responses or {200: None}),
        auth,
        tuple(errors),
        tuple(query),
        tuple(headers),
        response_content,
    )

    def decorate(view: F) -> F:
        view._openapi = doc  # type: ignore[attr-defined]
        return view

    return decorate


def operation_doc(view: Callable[..., Any]) -> OperationDoc | None:
    """The metadata attached by `documented`, if any."""
    return getattr(view, "_openapi", None)


_CONVERTER = re.compile(r"<(?:(?P<conv>[a-z]+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")
_MAX_ARG = re.compile(r"\bmax=(\d+)")
_CONVERTER_TYPES = {"int": "integer", "float": "number", None: "string", "string": "string", "path": "string"}


def _path_schema(conv: str | None, args: str | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _CONVERTER_TYPES.get(conv, "string")}
    if conv == "int":  # the routing.IdConverter bounds: unsigned, at most the id column's largest value
        found = _MAX_ARG.search(args or "")
        schema.update(minimum=0, maximum=int(found[1]) if found else MAX_BIGINT)
    return schema


def _openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params = [
        {"name": m["name"], "in": "path", "required": True, "schema": _path_schema(m["conv"], m["args"])}
        for m in _CONVERTER.finditer(rule)
    ]
    return _CONVERTER.sub(lambda m: "{" + m["name"] + "}", rule), params


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            self.components.setdefault(name, sub)
        self.components.setdefault(model.__name__, schema)
        return {"$ref": _REF.format(model=model.__name__)}

    def request_ref(self, model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=_REF, mode="validation")
        for name, sub in schema.pop("$defs", {}).items():
            self.components.setdefault(name, sub)
        self.components.setdefault(model.__name__, schema)
        return {"$ref": _REF.format(model=model.__name__)}


ERROR_ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details", "timestamp", "recoverable", "status", "request_id", "doc_url"],
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
                "message": {"type": "string"},
                "details": {"type": "object"},
                "timestamp": {"type": "string", "format": "date-time"},
                "recoverable": {"type": "boolean"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "request_id": {"type": "string"},
                "doc_url": {"type": "string"},
                "retry_after": {"type": "integer", "minimum": 0},
            },
        }
    },
}

_ERROR_DESCRIPTIONS = {
    400: "Bad request (for example MALFORMED_JSON)",
    401: "Missing, invalid, expired or revoked token, or wrong credentials",
    402: "Payment required or failed",
    403: "Authenticated but not allowed (ADMIN_REQUIRED)",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported content type",
    422: "Invalid fields (VALIDATION_ERROR, details.fields)",
    429: "Rate limited (retry_after and Retry-After)",
    500: "Unexpected error (request_id only)",
    503: "A dependency is unavailable (retry_after when known)",
}


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_DESCRIPTIONS.get(status, "Error"),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }


def _operation(
    doc: OperationDoc, endpoint: str, method: str, path_params: list[dict[str, Any]], schemas: _Schemas
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": f"{endpoint}.{method.lower()}", "summary": doc.summary, "tags": [doc.tag]}
    params = list(path_params)
    params += [
        {"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d} for n, t, d in doc.query
    ]
    params += [
        {"name": n, "in": "header", "required": False, "schema": {"type": "string"}, "description": d}
        for n, d in doc.headers
    ]
    if params:
        op["parameters"] = params
    if doc.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {doc.request_content: {"schema": schemas.request_ref(doc.request)}},
        }
    responses: dict[str, Any] = {}
    for status, model in doc.responses.items():
        entry: dict[str, Any] = {"description": "Success"}
        if model is not None:
            entry["content"] = {"application/json": {"schema": schemas.ref(model)}}
        elif doc.response_content != "application/json":
            entry["content"] = {doc.response_content: {"schema": {"type": "string"}}}
        responses[str(status)] = entry
    statuses = set(doc.errors) | {429, 500}
    if doc.request is not None:
        statuses |= {400, 413, 415, 422}
    if doc.auth is not None:
        statuses.add(401)
        op["security"] = [{"bearerAuth": []}]
    if doc.auth == "admin":
        statuses.add(403)
    for status in sorted(statuses):
        responses[str(status)] = _error_response(status)
    responses["default"] = _error_response(0)
    op["responses"] = responses
    return op


def build_openapi(app: Flask) -> dict[str, Any]:
    """The OpenAPI document for every documented route of `app`."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        doc = operation_doc(view) if view is not None else None
        if doc is None:
            continue
        path, path_params = _openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(doc, rule.endpoint, method, path_params, schemas)
    schemas.components["ErrorEnvelope"] = ERROR_ENVELOPE_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Oriel Signal FX Pro API",
            "version": "1.0.0",
            "description": "Every non-2xx response is an ErrorEnvelope; codes are listed at /api/errors/catalog.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def undocumented_endpoints(app: Flask) -> list[str]:
    """Routes with no OpenAPI metadata (static files excepted)."""
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions.get(rule.endpoint)
        if view is None or operation_doc(view) is None:
            missing.append(rule.rule)
    return sorted(missing)
