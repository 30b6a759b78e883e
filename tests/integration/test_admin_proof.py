"""Admin rights need proof (#14 point 5): registering an ADMIN_EMAILS address makes a plain user.

Proof is `flask users create-admin EMAIL` (an operator) or the emailed link (the mailbox owner, through the
local SendGrid peer), which also replaces the registrant's password so an unexpected click hands nothing to a
stranger.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.harness.app import ADMIN_EMAIL, bearer, read_log
from tests.harness.contract import assert_error
from tests.harness.peers.sendgrid_peer import SendGridPeer

STATS = "/admin/api/monitoring/errors/stats"
PASSWORD = "registrant-password"
OWNER_PASSWORD = "mailbox-owner-password"


def _register_and_login(client: FlaskClient, email: str = ADMIN_EMAIL, password: str = PASSWORD) -> dict[str, Any]:
    registered = client.post("/api/auth/register", json={"email": email, "password": password})
    assert registered.status_code == 201, registered.get_json()
    answer = client.post("/api/auth/login", json={"email": email, "password": password})
    assert answer.status_code == 200
    return {"user": registered.get_json()["user"], **answer.get_json()}


def _cli(app: Flask, *args: str, stdin: str | None = None) -> Any:
    return app.test_cli_runner().invoke(args=["users", *args], input=stdin)


def test_point5_registering_a_listed_address_makes_a_plain_user(app: Flask) -> None:
    client = app.test_client()
    session = _register_and_login(client)
    assert session["user"]["is_admin"] is False
    headers = bearer(session["access_token"])
    assert client.get("/api/me", headers=headers).get_json()["user"]["is_admin"] is False
    assert_error(client.get(STATS, headers=headers), 403, "ADMIN_REQUIRED")


def test_point5_cli_creates_or_promotes_admins_of_listed_addresses_only(app: Flask) -> None:
    created = _cli(app, "create-admin", ADMIN_EMAIL, "--password-stdin", stdin="operator-password\n")
    assert created.exit_code == 0 and f"created admin {ADMIN_EMAIL}" in created.output
    client = app.test_client()
    token = client.post("/api/auth/login", json={"email": ADMIN_EMAIL, "password": "operator-password"}).get_json()
    assert client.get(STATS, headers=bearer(token["access_token"])).status_code == 200
    refused = _cli(app, "create-admin", "someone@example.com", "--password-stdin", stdin="whatever-password\n")
    assert refused.exit_code != 0 and "not in ADMIN_EMAILS" in refused.output
    app.config["ADMIN_EMAILS"] = frozenset({ADMIN_EMAIL, "ops@example.com"})
    assert _cli(app, "create-admin", "ops@example.com").exit_code != 0  # a new account needs a password
    assert _cli(app, "create-admin", "ops@example.com", "--password-stdin", stdin="short\n").exit_code != 0
    granted = [r for r in read_log(app, "security.log") if r["event_type"] == "admin_granted"]
    assert [(r["via"], r["user_id"]) for r in granted] == [("cli", 1)]


def test_point5_promoting_an_existing_account_and_taking_it_over(app: Flask) -> None:
    client = app.test_client()
    squatter = _register_and_login(client)  # someone registered the admin address first
    promoted = _cli(app, "create-admin", ADMIN_EMAIL)
    assert promoted.exit_code == 0 and "keeps the password" in promoted.output
    assert client.get(STATS, headers=bearer(squatter["access_token"])).status_code == 200
    # The operator did not register it: replacing the password locks the registrant out, tokens included.
    time.sleep(1.05)  # JWT `iat` has whole seconds
    taken = _cli(app, "create-admin", ADMIN_EMAIL, "--password-stdin", stdin="operator-password\n")
    assert taken.exit_code == 0
    assert_error(client.get(STATS, headers=bearer(squatter["access_token"])), 401, "TOKEN_REVOKED")
    assert_error(client.post("/api/auth/login", json={"email": ADMIN_EMAIL, "password": PASSWORD}), 401)
    fresh = client.post("/api/auth/login", json={"email": ADMIN_EMAIL, "password": "operator-password"}).get_json()
    assert client.get(STATS, headers=bearer(fresh["access_token"])).status_code == 200
    revoked = _cli(app, "revoke-admin", ADMIN_EMAIL)
    assert revoked.exit_code == 0
    assert_error(client.get(STATS, headers=bearer(fresh["access_token"])), 403, "ADMIN_REQUIRED")
    assert [r["event_type"] for r in read_log(app, "security.log") if r["event_type"].startswith("admin_")] == [
        "admin_granted",
        "admin_revoked",
    ]


def _mail_app(make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, **extra: Any) -> Flask:
    settings: dict[str, Any] = {
        "SENDGRID_API_KEY": SendGridPeer.api_key,
        "SENDGRID_API_HOST": sendgrid_peer.url,
        "SENDGRID_TIMEOUT": 1.0,
        "RETRY_SLEEP_ENABLED": False,
        "PUBLIC_BASE_URL": "https://oriel.example",
    }
    return make_app(**{**settings, **extra})


def _mailed_token(sendgrid_peer: SendGridPeer) -> str:
    [message] = [m for m in sendgrid_peer.messages if ADMIN_EMAIL in m.recipients]
    text = " ".join(part["value"] for part in message.body["content"])
    match = re.search(r"https://oriel\.example/admin/#verify=([A-Za-z0-9_.\-]+)", text)
    assert match is not None, text
    return match.group(1)


def test_point5_the_mailbox_owner_proves_the_address_and_takes_the_account(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    app = _mail_app(make_app, sendgrid_peer)
    client = app.test_client()
    squatter = _register_and_login(client)
    assert squatter["user"]["is_admin"] is False
    token = _mailed_token(sendgrid_peer)
    time.sleep(1.05)  # JWT `iat` has whole seconds
    verified = client.post("/api/auth/verify-admin", json={"token": token, "password": OWNER_PASSWORD})
    assert verified.status_code == 200, verified.get_json()
    assert verified.get_json()["user"]["is_admin"] is True
    # Whoever registered it is out: the old password and its tokens no longer work.
    assert_error(client.get("/api/me", headers=bearer(squatter["access_token"])), 401, "TOKEN_REVOKED")
    assert_error(client.post("/api/auth/login", json={"email": ADMIN_EMAIL, "password": PASSWORD}), 401)
    owner = client.post("/api/auth/login", json={"email": ADMIN_EMAIL, "password": OWNER_PASSWORD}).get_json()
    assert client.get(STATS, headers=bearer(owner["access_token"])).status_code == 200
    # The token is spent; a tampered one is refused.
    again = client.post("/api/auth/verify-admin", json={"token": token, "password": OWNER_PASSWORD})
    assert_error(again, 400, "ADMIN_VERIFICATION_INVALID")
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert_error(client.post("/api/auth/verify-admin", json={"token": tampered, "password": OWNER_PASSWORD}), 400)
    events = [r["event_type"] for r in read_log(app, "security.log")]
    assert "admin_verification_sent" in events and "admin_verification_rejected" in events
    assert [r["via"] for r in read_log(app, "security.log") if r["event_type"] == "admin_granted"] == ["email"]


def test_point5_expired_or_unlisted_tokens_are_refused(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer
) -> None:
    app = _mail_app(make_app, sendgrid_peer, ADMIN_VERIFICATION_MAX_AGE_SECONDS=1)
    client = app.test_client()
    _register_and_login(client)
    token = _mailed_token(sendgrid_peer)
    time.sleep(2.1)
    expired = client.post("/api/auth/verify-admin", json={"token": token, "password": OWNER_PASSWORD})
    assert "expired" in assert_error(expired, 400, "ADMIN_VERIFICATION_INVALID")["message"]
    app.config["ADMIN_VERIFICATION_MAX_AGE_SECONDS"] = 3600
    app.config["ADMIN_EMAILS"] = frozenset()  # taken off the list after the mail went out
    unlisted = client.post("/api/auth/verify-admin", json={"token": token, "password": OWNER_PASSWORD})
    assert_error(unlisted, 400, "ADMIN_VERIFICATION_INVALID")


@pytest.mark.parametrize("missing", ["PUBLIC_BASE_URL", "SENDGRID_API_KEY"])
def test_point5_no_link_is_mailed_without_sendgrid_or_a_public_base_url(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, missing: str
) -> None:
    app = _mail_app(make_app, sendgrid_peer, **{missing: None})
    session = _register_and_login(app.test_client())
    assert session["user"]["is_admin"] is False
    assert sendgrid_peer.messages == []  # a link from the request's Host header could point anywhere
