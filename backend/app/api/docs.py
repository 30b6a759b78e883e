"""The OpenAPI document of the whole API."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..edge.openapi import build_openapi, documented
from . import bp


@bp.get("/api/openapi.json")
@documented("This OpenAPI document", tag="meta")
def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built once per process."""
    spec = current_app.extensions.get("openapi_document")
    if spec is None:
        spec = build_openapi(current_app)  # type: ignore[arg-type]
        current_app.extensions["openapi_document"] = spec
    return spec
