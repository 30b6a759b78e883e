"""Accounts and tokens: the happy path, and every token failure with its own code."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import jwt as pyjwt
from flask import Flask
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token

from tests.harness.app import ADMIN_EMAIL, TEST_JWT_SECRET_KEY, bearer, login, read_log, register
from tests.harness.contract import assert_error


def test_register_login_me_refresh_logout(client: FlaskClient) -> None:
    response = register(client, "Someone@Example.com")
    assert response.status_code == 201
    assert response.get_json()["user"]["email"] == "someone@example.com"
    tokens = login(client, "someone@example.com")
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
    me = client.get("/api/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200 and me.get_json()["user"]["is_admin"] is False
    refreshed = client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert refreshed.status_code == 200
    new_access = refreshed.get_json()["access_token"]
    assert client.get("/api/me", headers=bearer(new_access)).status_code == 200
    assert client.post("/api/auth/logout", headers=bearer(new_access)).status_code == 200
    assert_error(client.get("/api/me", headers=bearer(new_access)), 401, "TOKEN_REVOKED")


def test_passwords_are_stored_as_argon2_hashes(app: Flask) -> None:
    from backend.app.extensions import db
    from backend.app.models import User

    register(app.test_client(), "hash@example.com", "correct-horse-battery")
    with app.app_context():
        user = db.session.query(User).filter_by(email="hash@example.com").one()
        assert user.password_hash.startswith("$argon2id$")
        assert "correct-horse-battery" not in user.password_hash


def test_duplicate_email_is_409_email_taken(client: FlaskClient) -> None:
    register(client, "dup@example.com")
    error = assert_error(register(client, "DUP@example.com"), 409, "EMAIL_TAKEN")
    assert "email" in error["details"]["fields"]


def test_wrong_password_and_unknown_user_look_the_same(app: Flask) -> None:
    client = app.test_client()
    register(client, "known@example.com")
    wrong = client.post("/api/auth/login", json={"email": "known@example.com", "password": "nope-nope"})
    unknown = client.post("/api/auth/login", json={"email": "ghost@example.com", "password": "nope-nope"})
    assert assert_error(wrong, 401, "INVALID_CREDENTIALS")["message"] == assert_error(unknown, 401)["message"]
    events = [line["event_type"] for line in read_log(app, "security.log")]
    assert events.count("login_failed") == 2


def test_missing_token_is_token_missing(client: FlaskClient) -> None:
    assert_error(client.get("/api/me"), 401, "TOKEN_MISSING")


def test_malformed_and_tampered_tokens_are_token_invalid(client: FlaskClient) -> None:
    tokens = login(client)
    assert_error(client.get("/api/me", headers=bearer("not.a.jwt")), 401, "TOKEN_INVALID")
    head, payload, sig = tokens["access_token"].split(".")
    tampered = f"{head}.{payload}.{sig[::-1]}"
    assert_error(client.get("/api/me", headers=bearer(tampered)), 401, "TOKEN_INVALID")
    forged = pyjwt.encode({"sub": "1", "type": "access", "jti": "x"}, "another-secret-key-of-some-length", "HS256")
    assert_error(client.get("/api/me", headers=bearer(forged)), 401, "TOKEN_INVALID")


def test_alg_none_token_is_rejected(client: FlaskClient) -> None:
    login(client)
    unsigned = pyjwt.encode({"sub": "1", "type": "access", "jti": "x", "fresh": False}, None, algorithm="none")
    assert_error(client.get("/api/me", headers=bearer(unsigned)), 401, "TOKEN_INVALID")


def test_expired_token_is_token_expired(app: Flask) -> None:
    client = app.test_client()
    login(client)
    with app.app_context():
        token = create_access_token(identity="1", expires_delta=timedelta(seconds=-10))
    assert_error(client.get("/api/me", headers=bearer(token)), 401, "TOKEN_EXPIRED")


def test_refresh_token_cannot_be_used_as_access_token(client: FlaskClient) -> None:
    tokens = login(client)
    assert_error(client.get("/api/me", headers=bearer(tokens["refresh_token"])), 401, "TOKEN_WRONG_TYPE")
    assert_error(client.post("/api/auth/refresh", headers=bearer(tokens["access_token"])), 401, "TOKEN_WRONG_TYPE")


def test_token_of_deleted_user_is_rejected(app: Flask) -> None:
    client = app.test_client()
    token = pyjwt.encode(
        {"sub": "999", "type": "access", "jti": "gone", "fresh": False, "exp": 4_000_000_000},
        TEST_JWT_SECRET_KEY,
        "HS256",
    )
    assert_error(client.get("/api/me", headers=bearer(token)), 401, "TOKEN_USER_UNKNOWN")


def test_admin_is_decided_by_admin_emails_on_every_request(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    user_token = login(client, "plain@example.com")["access_token"]
    admin_token = login(client, ADMIN_EMAIL)["access_token"]
    assert_error(client.get("/admin/api/monitoring/health/check", headers=bearer(user_token)), 403, "ADMIN_REQUIRED")
    ok = client.get("/admin/api/monitoring/health/check", headers=bearer(admin_token))
    assert ok.status_code == 200 and ok.get_json()["checks"]["database"] == "ok"
    # Removing the admin from ADMIN_EMAILS takes effect on the next request, token unchanged.
    app.config["ADMIN_EMAILS"] = frozenset()
    assert_error(client.get("/admin/api/monitoring/health/check", headers=bearer(admin_token)), 403, "ADMIN_REQUIRED")
    denials = [line for line in read_log(app, "security.log") if line["event_type"] == "authorization_denied"]
    assert len(denials) == 2
