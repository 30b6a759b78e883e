"""Regression (found by the fuzzer): a path id larger than any id column could hold was a 500 DATABASE_ERROR on
PostgreSQL (the driver refuses the parameter); it is a 404 now, and the OpenAPI document states the bounds."""

from __future__ import annotations

import pytest
from flask import Flask

from backend.app.edge.routing import MAX_BIGINT, MAX_INT
from tests.harness.app import ADMIN_EMAIL, bearer, login
from tests.harness.contract import assert_error


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/admin/api/monitoring/dead-letters/{MAX_BIGINT + 1}"),
        ("POST", f"/admin/api/monitoring/dead-letters/{2**64}/requeue"),
        ("POST", f"/admin/api/monitoring/dead-letters/{2**70}/archive"),
        ("GET", f"/api/renders/{MAX_INT + 1}"),
        ("GET", f"/api/renders/{MAX_BIGINT}/download"),
    ],
)
def test_ids_no_column_can_hold_are_not_found(pg_app: Flask, method: str, path: str) -> None:
    client = pg_app.test_client()
    token = login(client, ADMIN_EMAIL)["access_token"]
    assert_error(client.open(path, method=method, headers=bearer(token)), 404)


def test_openapi_states_the_id_bounds(app: Flask) -> None:
    paths = app.test_client().get("/api/openapi.json").get_json()["paths"]
    render = paths["/api/renders/{render_id}"]["get"]["parameters"][0]["schema"]
    job = paths["/admin/api/monitoring/dead-letters/{job_id}"]["get"]["parameters"][0]["schema"]
    assert (render["minimum"], render["maximum"]) == (0, MAX_INT)
    assert (job["minimum"], job["maximum"]) == (0, MAX_BIGINT)


@pytest.mark.postgres
def test_render_of_an_upload_id_no_column_can_hold_is_422(pg_app: Flask) -> None:
    """Found by the fuzzer: POST /api/renders {"upload_id": 439964821563} was a 500 DATABASE_ERROR."""
    client = pg_app.test_client()
    token = login(client)["access_token"]
    response = client.post("/api/renders", json={"upload_id": 439964821563, "preset": "cqt"}, headers=bearer(token))
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert "upload_id" in str(error["details"])


@pytest.mark.postgres
@pytest.mark.parametrize("error_id", [str(MAX_INT + 1), "99999999999", "9" * 40, "9" * 4000])
def test_acknowledging_a_group_id_no_column_can_hold_is_404(pg_app: Flask, error_id: str) -> None:
    client = pg_app.test_client()
    token = login(client, ADMIN_EMAIL)["access_token"]
    response = client.post(f"/api/errors/acknowledge/{error_id}", json={}, headers=bearer(token))
    assert_error(response, 404)
    # A longer URL than the app accepts (4,096 bytes) is refused before routing, in the envelope too.
    longer = client.post(f"/api/errors/acknowledge/{error_id}{'9' * 5000}", json={}, headers=bearer(token))
    assert_error(longer, 414, "REQUEST_URI_TOO_LONG")
