"""#13 point 8: every slow-call threshold lies below its adapter's timeout, so a slow peer trips its breaker.

A dependency that answers in 4-9 s against a 10 s timeout never fails a call, so only the slow-call
rule can see it. The thresholds come from the configured timeouts (half of each), and a slow but
answering peer (the fault proxy delays each answer, the calls succeed) opens the breaker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from backend.app.resilience.recovery import get_breaker
from backend.app.resilience.state import adapter_timeouts
from backend.app.services import get_email, get_storage
from tests.harness.app import read_log
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.gcs_emulator import GCSEmulator
from tests.harness.peers.sendgrid_peer import SendGridPeer


def _thresholds(app: Flask) -> dict[str, tuple[float, float]]:
    timeouts = adapter_timeouts(app.config)
    with app.app_context():
        return {name: (get_breaker(name).config.slow_call_seconds, timeout) for name, timeout in timeouts.items()}


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"STRIPE_TIMEOUT": 30.0, "GCS_TIMEOUT": 2.0, "SENDGRID_TIMEOUT": 1.0},
        {"SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"connect_timeout": 3}}},
        {"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://nobody@127.0.0.1:1/none", "DATABASE_CONNECT_TIMEOUT": 2},
    ],
)
def test_point8_every_slow_call_threshold_is_below_its_adapter_timeout(
    make_app: Callable[..., Flask], settings: dict[str, Any]
) -> None:
    thresholds = _thresholds(make_app(**settings))
    assert {"stripe", "storage", "email"} <= set(thresholds)
    for name, (slow, timeout) in thresholds.items():
        assert slow is not None and 0 < slow < timeout, (name, slow, timeout)
    if "SQLALCHEMY_ENGINE_OPTIONS" in settings:
        assert thresholds["database"] == (1.5, 3.0)
    if "DATABASE_CONNECT_TIMEOUT" in settings:  # PostgreSQL: the connect timeout the app really sets
        assert thresholds["database"] == (1.0, 2.0)


def test_point8_an_explicit_threshold_at_or_above_the_timeout_is_warned_about(make_app: Callable[..., Flask]) -> None:
    app = make_app(SENDGRID_TIMEOUT=5.0, CIRCUIT_BREAKERS={"email": {"slow_call_seconds": 15}})
    assert _thresholds(app)["email"] == (15, 5.0)  # an operator's explicit choice is kept...
    warnings = [line["message"] for line in read_log(app, "app.log") if line["level"] == "WARNING"]
    assert any("email slow_call_seconds=15" in message for message in warnings), warnings  # ...and flagged


FAST = {"RETRY_SLEEP_ENABLED": False}


def test_point8_a_slow_but_answering_sendgrid_opens_the_email_breaker(
    make_app: Callable[..., Flask], sendgrid_peer: SendGridPeer, make_fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = make_fault_proxy(sendgrid_peer.url, max_hold=5.0)
    app = make_app(
        **FAST,
        SENDGRID_API_KEY=sendgrid_peer.api_key,
        SENDGRID_API_HOST=proxy.url,
        SENDGRID_TIMEOUT=1.0,  # slow-call threshold 0.5 s
        CIRCUIT_BREAKERS={"email": {"min_calls": 3}},
    )
    proxy.slow(0.7)  # answers every time, just slowly: between the threshold and the timeout
    with app.test_request_context():
        results = [get_email().send("u@example.com", "Hi", "Text", dedup_key=f"slow-{n}") for n in range(3)]
        assert [r.status for r in results] == ["sent"] * 3  # every call succeeded
        snapshot = get_breaker("email").snapshot()
    assert snapshot["state"] == "open", snapshot
    assert len(sendgrid_peer.messages) == 3


def test_point8_a_slow_but_answering_bucket_opens_the_storage_breaker(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    gcs_signing_credentials: Any,
    make_fault_proxy: Callable[..., FaultProxy],
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url, max_hold=5.0)
    app = make_app(
        **FAST,
        GCS_BUCKET=gcs_bucket,
        GCS_ENDPOINT=proxy.url,
        GCS_TIMEOUT=1.0,
        GCS_SIGNING_CREDENTIALS=gcs_signing_credentials,
        CIRCUIT_BREAKERS={"storage": {"min_calls": 3}},
    )
    proxy.slow(0.7)
    with app.test_request_context():
        stored = [get_storage().save(f"slow/{n}.bin", b"x", "application/octet-stream") for n in range(3)]
        assert [s.location for s in stored] == ["bucket"] * 3
        assert get_breaker("storage").state.value == "open"
