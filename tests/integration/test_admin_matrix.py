"""Every admin endpoint x {no token, expired, tampered, user, admin} → 401, 401, 401, 403, 2xx.

The endpoints are read from the URL map (every rule under `/admin/`), so an endpoint added later is
covered without touching this file; one that needs a request body or a resource id gets it from
the tables below, and an unknown one fails here until it is added.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask_jwt_extended import create_access_token

from backend.app.extensions import db
from backend.app.jobs import enqueue
from backend.app.models import User
from tests.harness.app import ADMIN_EMAIL, bearer, login
from tests.harness.contract import assert_error, assert_no_leak

#: JSON bodies for POST endpoints that need one (endpoint name → body).
BODIES: dict[str, dict[str, Any]] = {
    "dead_letters.requeue_matching_view": {"kind": "maintenance.noop"},
    "failed_work.discard_view": {"reason": "matrix"},
    "monitoring.add_fault": {"service": "storage", "mode": "fail", "rate": 0.0, "duration_seconds": 5},
    "monitoring.configure_alert": {
        "name": "matrix",
        "kind": "breaker_open",
        "params": {"service": "storage"},
        "channels": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
    },
}


def _dead_letter(app: Flask) -> int:
    with app.app_context():
        job = enqueue("maintenance.noop", {"n": 1}, idempotency_key=uuid.uuid4().hex)
        job.status = "dead"
        job.dead_at = job.created_at
        db.session.commit()
        return int(job.id)


def _alert_rule(app: Flask) -> int:
    from datetime import UTC, datetime

    from backend.app.models import AlertRule

    with app.app_context():
        now = datetime.now(UTC)
        rule = AlertRule(
            name=f"matrix-{uuid.uuid4().hex[:8]}",
            kind="dead_letters",
            params={},
            channels=[],
            state="ok",
            notified=False,
            version=0,
            created_at=now,
            updated_at=now,
        )
        db.session.add(rule)
        db.session.commit()
        return int(rule.id)


def _url_args(app: Flask, rule: Any) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for name in rule.arguments:
        if name == "service":
            args[name] = "storage"
        elif name in ("job_id", "item_id"):  # item_id: a failed-work item of kind "job" is a dead letter
            args[name] = _dead_letter(app)
        elif name == "kind":
            args[name] = "job"
        elif name == "request_id":  # a request that started a job: its trace is found
            with app.app_context():
                args[name] = enqueue("maintenance.noop", {}, request_id=uuid.uuid4().hex).request_id
        elif name == "rule_id":  # a fresh rule each time: one of the calls deletes it
            args[name] = _alert_rule(app)
        else:  # pragma: no cover - a new kind of path argument needs a value here
            pytest.fail(f"no sample value for <{name}> in {rule.rule}")
    return args


def _admin_rules(app: Flask) -> list[tuple[Any, str]]:
    rules = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin/"):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            rules.append((rule, method))
    return rules


@pytest.fixture
def matrix_app(make_app: Callable[..., Flask]) -> Flask:
    """An app with the fault-injection endpoints on (they are admin endpoints like the rest)."""
    return make_app(FAULT_INJECTION_ENABLED=True, RATELIMIT_ENABLED=False)


def _tokens(app: Flask) -> dict[str, dict[str, str]]:
    client = app.test_client()
    admin = login(client, ADMIN_EMAIL)["access_token"]
    user = login(client, "plain@example.com")["access_token"]
    with app.app_context():
        admin_id = db.session.execute(db.select(User.id).where(User.email == ADMIN_EMAIL)).scalar_one()
        expired = create_access_token(identity=str(admin_id), expires_delta=timedelta(seconds=-30))
    head, payload, signature = admin.split(".")
    tampered = ".".join([head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]])
    return {
        "none": {},
        "expired": bearer(expired),
        "tampered": bearer(tampered),
        "user": bearer(user),
        "admin": bearer(admin),
    }


EXPECTED = {"none": 401, "expired": 401, "tampered": 401, "user": 403}


def test_every_admin_endpoint_enforces_admin_auth(matrix_app: Flask) -> None:
    """401 without, with an expired or a tampered token; 403 for a user; 2xx for an admin; no leak."""
    tokens = _tokens(matrix_app)
    client = matrix_app.test_client()
    rules = _admin_rules(matrix_app)
    assert len(rules) >= 10, rules  # the monitoring and dead-letter APIs at least
    seen = set()
    for rule, method in rules:
        for who, headers in tokens.items():
            url = rule.build(_url_args(matrix_app, rule), append_unknown=False)[1] if rule.arguments else rule.rule
            body = BODIES.get(rule.endpoint, {}) if method != "GET" else None
            response = client.open(url, method=method, headers=headers, json=body)
            where = f"{method} {url} as {who}"
            if who == "admin":
                assert 200 <= response.status_code < 300, (where, response.get_data(as_text=True)[:300])
            else:
                error = assert_error(response, EXPECTED[who])
                assert error["code"] in {
                    "TOKEN_MISSING",
                    "TOKEN_EXPIRED",
                    "TOKEN_INVALID",
                    "ADMIN_REQUIRED",
                }, (where, error)
                text = response.get_data(as_text=True)
                assert_no_leak(text)
                # Nothing about the endpoint's own data leaks into a refusal.
                assert not re.search(r"breaker|queue|probe|dead_letter|sink", text.split('"doc_url"')[0]), where
        seen.add(rule.endpoint)
    assert "monitoring.health_services" in seen and "monitoring.reset_breaker" in seen
