"""JWT attacks against a user endpoint and an admin endpoint: `alg: none`, algorithm confusion (RS256 signed
with the attacker's key; HS256 signed with a public key as the HMAC secret; the header claiming RS256 over an
HMAC signature), tampered claims (an admin's id in a user's token, re-signed with a guessed key or not at all),
expired tokens, refresh tokens used as access tokens. Every one is a 401 envelope, none leaks, each is logged.

The full admin matrix (every admin endpoint x no token / expired / tampered / user / admin) lives in
tests/integration/test_admin_matrix.py; this file covers the token forgeries it does not.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from backend.app.edge.rejection_log import flush_rejections
from tests.harness.app import ADMIN_EMAIL, TEST_JWT_SECRET_KEY, TEST_SECRET_KEY, bearer, login, read_log
from tests.harness.contract import assert_error, assert_no_leak

TARGETS = ("/api/me", "/admin/api/monitoring/errors/stats")
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = _RSA.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    head, body, sig = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731 - local helper
    return json.loads(base64.urlsafe_b64decode(pad(head))), json.loads(base64.urlsafe_b64decode(pad(body))), sig


def _raw(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)])


def _hmac_sign(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    import hashlib
    import hmac

    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _forgeries(user_token: str, admin_claims: dict[str, Any]) -> dict[str, str]:
    """Every forged token, built from a real user's token and an admin's claims."""
    header, claims, _ = _segments(user_token)
    escalated = {**claims, "sub": admin_claims["sub"]}
    expired = {**claims, "exp": int(time.time()) - 60, "iat": int(time.time()) - 3600}
    return {
        "alg none": _raw({"alg": "none", "typ": "JWT"}, escalated),
        "alg None": _raw({"alg": "None", "typ": "JWT"}, escalated),
        "alg none with the user's signature": _raw({"alg": "none"}, escalated) + _segments(user_token)[2],
        "RS256 with the attacker's key": jwt.encode(escalated, _RSA, algorithm="RS256"),
        "HS256 with the public key as secret": _hmac_sign({"alg": "HS256", "typ": "JWT"}, escalated, PUBLIC_PEM),
        "RS256 header over an HMAC signature": _hmac_sign({"alg": "RS256", "typ": "JWT"}, escalated, PUBLIC_PEM),
        "HS512 with the real secret": jwt.encode(escalated, TEST_JWT_SECRET_KEY, algorithm="HS512"),
        "claims changed, signature kept": ".".join(
            [user_token.split(".")[0], _b64(json.dumps(escalated).encode()), user_token.split(".")[2]]
        ),
        "signed with SECRET_KEY (the wrong secret)": jwt.encode(escalated, TEST_SECRET_KEY, algorithm="HS256"),
        "signed with an empty secret": _hmac_sign(header, escalated, b""),
        "jku header to an attacker's keys": _hmac_sign(
            {**header, "jku": "http://127.0.0.1:9/keys.json", "kid": "x"}, escalated, b"attacker"
        ),
        "expired, signed with the real secret": jwt.encode(expired, TEST_JWT_SECRET_KEY, algorithm="HS256"),
        "no exp, signed with a guessed secret": jwt.encode(
            {k: v for k, v in escalated.items() if k != "exp"}, "secret", algorithm="HS256"
        ),
        "truncated": user_token[: len(user_token) // 2],
        "four segments": user_token + ".AAAA",
        "not base64": "!!!.@@@.###",
    }


@pytest.fixture
def tokens(app: Flask) -> dict[str, dict[str, Any]]:
    client = app.test_client()
    user = login(client, "victim@example.com")
    admin = login(client, ADMIN_EMAIL)
    return {"user": user, "admin": admin}


@pytest.mark.parametrize("target", TARGETS)
def test_every_forged_token_is_401_and_logged(app: Flask, tokens: dict[str, dict[str, Any]], target: str) -> None:
    client = app.test_client()
    _, admin_claims, _ = _segments(tokens["admin"]["access_token"])
    forged = _forgeries(tokens["user"]["access_token"], admin_claims)
    for name, token in forged.items():
        response = client.get(target, headers=bearer(token))
        error = assert_error(response, 401)
        assert error["code"] in {"TOKEN_INVALID", "TOKEN_EXPIRED"}, (name, error)
        assert_no_leak(response.get_data(as_text=True), TEST_JWT_SECRET_KEY, TEST_SECRET_KEY)
    # The real tokens still work: the rejections were about the forgeries, not a broken setup.
    assert client.get("/api/me", headers=bearer(tokens["user"]["access_token"])).status_code == 200
    admin_ok = client.get("/admin/api/monitoring/errors/stats", headers=bearer(tokens["admin"]["access_token"]))
    assert admin_ok.status_code == 200
    flush_rejections(app)  # repeated rejections are logged in aggregate: every one is in a line's count
    rejected = [line for line in read_log(app, "security.log") if line.get("event_type") == "token_rejected"]
    assert sum(line["count"] for line in rejected) == len(forged)
    for line in rejected:
        assert TEST_JWT_SECRET_KEY not in json.dumps(line)


def test_expired_token_says_expired(make_app: Callable[..., Flask]) -> None:
    app = make_app(JWT_ACCESS_TOKEN_EXPIRES_SECONDS=1)
    token = login(app.test_client(), "short@example.com")["access_token"]
    time.sleep(2.1)
    for target in TARGETS:
        assert_error(app.test_client().get(target, headers=bearer(token)), 401, "TOKEN_EXPIRED")


def test_refresh_token_is_no_access_token_anywhere(app: Flask, tokens: dict[str, dict[str, Any]]) -> None:
    client = app.test_client()
    for target in TARGETS:
        response = client.get(target, headers=bearer(tokens["admin"]["refresh_token"]))
        assert response.status_code == 401, response.get_json()
    # And an access token cannot refresh.
    response = client.post("/api/auth/refresh", headers=bearer(tokens["user"]["access_token"]))
    assert response.status_code == 401


def test_a_users_token_is_403_on_admin_endpoints_and_the_attempt_is_logged(
    app: Flask, tokens: dict[str, dict[str, Any]]
) -> None:
    response = app.test_client().get(
        "/admin/api/monitoring/errors/stats", headers=bearer(tokens["user"]["access_token"])
    )
    assert_error(response, 403, "ADMIN_REQUIRED")
    events = {line.get("event_type") for line in read_log(app, "security.log")}
    assert "authorization_denied" in events, events
