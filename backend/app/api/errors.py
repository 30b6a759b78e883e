"""The error API of seed 004: the catalog of error codes (more endpoints arrive with monitoring)."""

from __future__ import annotations

from typing import Any

from ..error_catalog import entries
from ..openapi import documented
from ..schemas import CatalogOut
from . import bp


@bp.get("/api/errors/catalog")
@documented("Every error code the API can return", tag="errors", responses={200: CatalogOut})
def catalog() -> dict[str, Any]:
    """Every error code with its status, meaning and whether a retry can succeed."""
    return {"errors": [entry.as_dict() for entry in entries()]}
