"""Property-based: whatever a client sends, errors are JSON envelopes and nothing leaks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.app.error_catalog import lookup
from tests.harness.app import TEST_JWT_SECRET_KEY, TEST_SECRET_KEY
from tests.harness.contract import LEAK_PATTERNS, assert_error

KNOWN_PATHS = [
    "/api/auth/register",
    "/api/auth/login",
    "/api/auth/refresh",
    "/api/auth/logout",
    "/api/me",
    "/api/errors/catalog",
    "/api/openapi.json",
    "/admin/api/monitoring/health/check",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/xml",
    "",
    "application/vnd.api+json",
    "\x00bad",
]
PASSWORD_MARK = "PW-CANARY-"

segment = st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"), min_size=0, max_size=12)
paths = st.one_of(
    st.sampled_from(KNOWN_PATHS),
    st.builds(lambda p, s: p + "/" + s, st.sampled_from(KNOWN_PATHS), segment),
    st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
credential_bodies = st.fixed_dictionaries(
    {"email": st.one_of(st.emails(), st.text(max_size=20)), "password": st.text(min_size=0, max_size=40)},
    optional={"extra": json_values},
).map(lambda body: {**body, "password": PASSWORD_MARK + body["password"]})
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    credential_bodies.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=100).map(str.encode),
)
request_ids = st.one_of(st.none(), st.text(max_size=140), st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True))
auth_headers = st.one_of(
    st.none(),
    st.text(max_size=60).map(lambda t: "Bearer " + t),
    st.sampled_from(["Bearer", "Basic abc", "Bearer a.b.c", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."]),
)


def _header_safe(value: str) -> str:
    return value.encode("latin-1", "replace").decode("latin-1")


@pytest.fixture
def fuzz_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(
        RATELIMIT_DEFAULT="100000 per minute",
        RATELIMIT_LOGIN="100000 per minute",
        RATELIMIT_REGISTER="100000 per minute",
        MAX_UPLOAD_MB=1,
    )


@pytest.mark.slow
@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    path=paths,
    method=st.sampled_from(METHODS),
    body=bodies,
    content_type=st.sampled_from(CONTENT_TYPES),
    request_id=request_ids,
    authorization=auth_headers,
    query=st.text(max_size=30),
)
def test_any_request_gets_a_json_error_and_leaks_nothing(
    fuzz_app: Flask,
    path: str,
    method: str,
    body: bytes,
    content_type: str,
    request_id: str | None,
    authorization: str | None,
    query: str,
) -> None:
    # Raw WSGI environ values: the test client would refuse control characters in headers, a proxy may not.
    environ: dict[str, Any] = {"PATH_INFO": path}
    if content_type:
        environ["CONTENT_TYPE"] = _header_safe(content_type)
    if request_id is not None:
        environ["HTTP_X_REQUEST_ID"] = _header_safe(request_id)
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = _header_safe(authorization)
    response = fuzz_app.test_client().open("/", method=method, data=body, query_string=query, environ_overrides=environ)
    # The client's own valid request ID is echoed back; it is not a leak (it may read "SELECT").
    rid = response.headers.get("X-Request-ID", "")
    text = response.get_data(as_text=True).replace(f'"{rid}"', '""')
    if response.status_code >= 400:
        if method == "HEAD":
            assert response.mimetype == "application/json"
        else:
            error = assert_error(response, response.status_code)
            assert lookup(error["code"]) is not None
    for pattern in LEAK_PATTERNS:
        assert not pattern.search(text), (pattern.pattern, text[:300])
    for secret in (TEST_SECRET_KEY, TEST_JWT_SECRET_KEY, PASSWORD_MARK):
        assert secret not in text
