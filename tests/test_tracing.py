"""OpenTelemetry traces (issue #17): off unless configured, exported by OTLP/HTTP to a protocol-true receiver."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from backend.app.tracing import tracing_of
from tests.peers.otlp import OTLPReceiver

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_traced_app(make_app: Callable[..., Flask], otlp_receiver: OTLPReceiver) -> Iterator[Callable[..., Flask]]:
    """Build apps that export to this test's receiver; each app's exporter is shut down afterwards."""
    built: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        app = make_app(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.url, **overrides)
        built.append(app)
        return app

    yield factory
    for app in built:
        tracing = tracing_of(app)
        if tracing is not None:
            tracing.shutdown()


def _flush(app: Flask) -> None:
    tracing = tracing_of(app)
    assert tracing is not None, "tracing is off"
    assert tracing.flush()


# -- point 1: off unless configured ---------------------------------------------------------------------------


# redis-py (imported by portalocker, so by the log handler) loads opentelemetry.sdk.metrics for its own optional
# metrics whenever the SDK is installed; what tracing adds is the trace SDK, the exporter, the instrumentations
# and the propagators, and none of those may load while it is off.
_TRACING_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter",
    "opentelemetry.instrumentation",
    "opentelemetry.propagate",
    "opentelemetry.proto",
)

_PROBE = f"""
import sys, tempfile
from backend.app import create_app
from config import TestingConfig
folder = tempfile.mkdtemp()
settings = dict(SQLALCHEMY_DATABASE_URI="sqlite://", LOG_DIR=folder, LOCAL_STORAGE_DIR=folder)
app = create_app(TestingConfig, **settings, OTEL_EXPORTER_OTLP_ENDPOINT=sys.argv[1] or None)
assert app.test_client().get("/healthz").status_code == 200
assert app.test_client().get("/nope").status_code == 404
print(sorted(name for name in sys.modules if name.startswith({_TRACING_MODULES!r})))
"""


def _tracing_modules_loaded(endpoint: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, endpoint], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_without_an_endpoint_no_tracing_module_is_ever_imported(app: Flask) -> None:
    assert _tracing_modules_loaded("") == "[]"
    assert "opentelemetry.sdk.trace" in _tracing_modules_loaded("http://127.0.0.1:9")  # the probe sees them
    assert tracing_of(app) is None


def test_with_an_endpoint_each_request_is_exported_by_otlp_http_protobuf(
    make_traced_app: Callable[..., Flask], otlp_receiver: OTLPReceiver
) -> None:
    app = make_traced_app()
    assert app.test_client().get("/healthz").status_code == 200
    _flush(app)
    spans = otlp_receiver.wait_for(lambda spans: any(s.name == "GET /healthz" for s in spans))
    request_span = next(s for s in spans if s.name == "GET /healthz")
    assert request_span.kind == "SERVER"
    assert request_span.service_name == "oriel-signal-fx"  # our default when OTEL_SERVICE_NAME is unset
    assert request_span.headers["Content-Type"] == "application/x-protobuf"


def test_the_standard_otel_variables_are_honoured(
    make_traced_app: Callable[..., Flask], otlp_receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "oriel-canary")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    app = make_traced_app()
    app.test_client().get("/healthz")
    _flush(app)
    span = otlp_receiver.wait_for(lambda spans: bool(spans))[0]
    assert span.service_name == "oriel-canary"
    assert span.headers["X-Tenant"] == "acme"


def test_the_sampler_variable_can_switch_every_span_off(
    make_traced_app: Callable[..., Flask], otlp_receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    app = make_traced_app()
    app.test_client().get("/healthz")
    _flush(app)
    assert otlp_receiver.requests == 0 and otlp_receiver.spans == []
