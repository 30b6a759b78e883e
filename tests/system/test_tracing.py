"""OpenTelemetry traces (issue #17): off unless configured, exported by OTLP/HTTP to a protocol-true receiver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from sqlalchemy import text

from backend.app.errors import ValidationError
from backend.app.extensions import db
from backend.app.jobs import JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.redis_client import make_redis_client
from backend.app.resilience.retry import RetryPolicy
from backend.app.tracing import tracing_of
from bench.harness import base_env, gunicorn
from tests.harness.metrics import sample
from tests.harness.peers._net import free_port
from tests.harness.peers.otlp import OTLPReceiver

ROOT = Path(__file__).resolve().parents[2]


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
    # Redis is instrumented once per process (the class, not a client): undone so later tests run unwrapped.
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor().uninstrument()


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


# -- point 2: request, SQL, Redis and job spans; errors on the span ---------------------------------------------


def _traced_routes(app: Flask) -> None:
    """Routes that do what the assertions look for (a parameterised rule, SQL, Redis, errors, a job)."""

    def item(item_id: int) -> dict[str, Any]:
        db.session.execute(text("SELECT 1")).scalar_one()
        return {"id": item_id}

    def cached() -> dict[str, Any]:
        make_redis_client(app.config["REDIS_URL"]).get("oriel-test-tracing")
        return {"ok": True}

    def invalid() -> None:
        raise ValidationError("Not like that.")

    def broken() -> None:
        raise RuntimeError("boom")

    def start_job() -> dict[str, Any]:
        return {"job_id": enqueue(request.args["kind"]).id}

    app.add_url_rule("/test/items/<int:item_id>", view_func=item)
    app.add_url_rule("/test/cached", view_func=cached)
    app.add_url_rule("/test/invalid", view_func=invalid)
    app.add_url_rule("/test/broken", view_func=broken)
    app.add_url_rule("/test/jobs", view_func=start_job, methods=["POST"])


def _run_jobs(app: Flask) -> int:
    options = WorkerOptions(
        install_signals=False, schedule=False, poll_seconds=0.02, heartbeat_seconds=0.1, burst=True, max_seconds=20.0
    )
    return Worker(app, options).run()


def test_the_route_is_the_request_span_name_and_each_sql_statement_its_child(
    make_traced_app: Callable[..., Flask], otlp_receiver: OTLPReceiver
) -> None:
    app = make_traced_app()
    _traced_routes(app)
    assert app.test_client().get("/test/items/7").status_code == 200
    _flush(app)
    spans = otlp_receiver.wait_for(lambda spans: bool([s for s in spans if s.name == "GET /test/items/<int:item_id>"]))
    request_span = next(s for s in spans if s.name == "GET /test/items/<int:item_id>")
    sql = [s for s in spans if s.parent_span_id == request_span.span_id and s.kind == "CLIENT"]
    assert any(s.attributes.get("db.statement") == "SELECT 1" for s in sql), [s.attributes for s in sql]
    assert request_span.attributes.get("http.route") == "/test/items/<int:item_id>"


def test_redis_commands_are_children_of_the_request(
    make_traced_app: Callable[..., Flask], otlp_receiver: OTLPReceiver
) -> None:
    app = make_traced_app(REDIS_URL="redis://127.0.0.1:6379/0")
    _traced_routes(app)
    assert app.test_client().get("/test/cached").status_code == 200
    _flush(app)
    spans = otlp_receiver.wait_for(lambda spans: any(s.name == "GET /test/cached" for s in spans))
    request_span = next(s for s in spans if s.name == "GET /test/cached")
    redis_spans = [s for s in spans if s.attributes.get("db.system") == "redis"]
    get = [s for s in redis_spans if s.name == "GET" and s.parent_span_id == request_span.span_id]
    assert get and get[0].trace_id == request_span.trace_id, [(s.name, s.parent_span_id) for s in redis_spans]


def test_a_client_error_records_our_code_and_a_server_error_also_sets_the_status(
    make_traced_app: Callable[..., Flask], otlp_receiver: OTLPReceiver
) -> None:
    app = make_traced_app()
    _traced_routes(app)
    client = app.test_client()
    assert client.get("/test/invalid").status_code == 422
    assert client.get("/test/broken").status_code == 500
    _flush(app)
    spans = otlp_receiver.wait_for(lambda spans: {"GET /test/invalid", "GET /test/broken"} <= {s.name for s in spans})
    invalid = next(s for s in spans if s.name == "GET /test/invalid")
    broken = next(s for s in spans if s.name == "GET /test/broken")
    assert invalid.attributes["oriel.error_code"] == "VALIDATION_ERROR"
    assert invalid.status == "UNSET"  # the client's error, as OpenTelemetry's HTTP conventions say
    assert broken.attributes["oriel.error_code"] == "INTERNAL_ERROR"
    assert broken.status == "ERROR"
    assert any(event["name"] == "exception" for event in broken.events)


def test_a_job_run_is_a_child_of_the_request_that_enqueued_it(
    make_traced_app: Callable[..., Flask], otlp_receiver: OTLPReceiver, kinds: Callable[[JobKind], JobKind]
) -> None:
    def handler(ctx: JobContext) -> None:
        db.session.execute(text("SELECT 2")).scalar_one()

    def failing(ctx: JobContext) -> None:
        raise ValidationError("Recipient address is invalid.")

    kinds(JobKind("test.traced", handler))
    kinds(JobKind("test.traced_failing", failing, policy=RetryPolicy(max_attempts=1)))
    app = make_traced_app()
    _traced_routes(app)
    client = app.test_client()
    job_id = client.post("/test/jobs?kind=test.traced").get_json()["job_id"]
    client.post("/test/jobs?kind=test.traced_failing")
    assert _run_jobs(app) == 2
    _flush(app)
    spans = otlp_receiver.wait_for(lambda spans: len([s for s in spans if s.name.startswith("job ")]) == 2)
    requests = [s for s in spans if s.name == "POST /test/jobs"]
    job = next(s for s in spans if s.name == "job test.traced")
    parent = next(s for s in requests if s.span_id == job.parent_span_id)
    assert job.trace_id == parent.trace_id and job.kind == "CONSUMER"
    assert job.attributes["oriel.job.id"] == job_id and job.attributes["oriel.job.attempt"] == 1
    assert any(s.parent_span_id == job.span_id and s.attributes.get("db.statement") == "SELECT 2" for s in spans)
    failed = next(s for s in spans if s.name == "job test.traced_failing")
    assert failed.status == "ERROR" and failed.attributes["oriel.error_code"] == "VALIDATION_ERROR"
    assert failed.parent_span_id in {s.span_id for s in requests}
    # The worker's polling (claims, heartbeats) runs outside any request or job: it starts no trace.
    assert all(s.parent_span_id for s in spans if s.kind == "CLIENT"), [s.name for s in spans if not s.parent_span_id]


# -- point 4: fork-safe, flushed at exit, a slow or dead collector costs nothing but dropped spans ---------------


def test_a_forked_worker_exports_from_its_own_thread(
    make_traced_app: Callable[..., Flask], otlp_receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: the batch thread exports soon
    app = make_traced_app()  # built before the fork, as gunicorn's preload builds it in the master
    pid = os.fork()
    if pid == 0:  # the child: a request, then time for the batch thread, then exit without any flush
        code = 1
        try:
            code = 0 if app.test_client().get("/healthz").status_code == 200 else 1
            time.sleep(1.0)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    otlp_receiver.wait_for(lambda spans: any(s.name == "GET /healthz" for s in spans), timeout=5)


_EXIT_WITHOUT_FLUSH = """
import sys, tempfile
from backend.app import create_app
from config import TestingConfig
folder = tempfile.mkdtemp()
app = create_app(
    TestingConfig, SQLALCHEMY_DATABASE_URI="sqlite://", LOG_DIR=folder, LOCAL_STORAGE_DIR=folder,
    OTEL_EXPORTER_OTLP_ENDPOINT=sys.argv[1],
)
assert app.test_client().get("/healthz").status_code == 200
"""


def test_spans_still_queued_are_flushed_when_the_process_exits(otlp_receiver: OTLPReceiver) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"  # ten minutes: only the exit can send the span
    result = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_FLUSH, otlp_receiver.url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [s.name for s in otlp_receiver.spans] == ["GET /healthz"]


@pytest.mark.parametrize("collector", ["hanging", "down"])
def test_a_hanging_or_dead_collector_never_slows_a_request_and_drops_are_counted(
    make_app: Callable[..., Flask],
    otlp_receiver: OTLPReceiver,
    monkeypatch: pytest.MonkeyPatch,
    collector: str,
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # seconds: how long the exporter's thread waits
    endpoint = otlp_receiver.url if collector == "hanging" else f"http://127.0.0.1:{free_port()}"
    if collector == "hanging":
        otlp_receiver.hang()
    app = make_app(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    client = app.test_client()
    try:
        slowest = 0.0
        for _ in range(60):
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.5, f"a request took {slowest:.3f} s"
        if collector == "hanging":
            # The exporter did reach the collector and is held there (its thread may get there after the
            # requests on a busy machine: wait for it, bounded).
            deadline = time.monotonic() + 10
            while otlp_receiver.requests < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert otlp_receiver.requests >= 1
        tracing = tracing_of(app)
        assert tracing is not None
        counted = tracing.counts.dropped["queue_full"]  # before the scrape: its own span may be dropped too
        text = client.get("/metrics").get_data(as_text=True)
        assert sample(text, "oriel_trace_spans_dropped_total", reason="queue_full") == counted >= 40
    finally:
        otlp_receiver.release()
        tracing = tracing_of(app)
        if tracing is not None:
            tracing.shutdown()


@pytest.mark.timeout(120)
def test_preloaded_gunicorn_workers_each_export_and_flush_on_graceful_shutdown(
    tmp_path: Path, migrated_sqlite_template: Path, otlp_receiver: OTLPReceiver
) -> None:
    env = base_env(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url})
    env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"  # ten minutes: only each worker's graceful exit can send its spans
    env["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] = "process"  # process.pid on each span's resource
    shutil.copy(migrated_sqlite_template, tmp_path / "bench.db")
    sent = 40
    # Sync workers take one connection at a time, so concurrent clients spread over them (as in test_metrics).
    with gunicorn(env, workers=2, threads=1, worker_class="sync", preload=True, ready_path="/healthz") as server:
        url = server.url("/api/errors/system-health")

        def hit(_: int) -> int:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status)

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(hit, range(sent))) == [200] * sent
        master = server.process.pid
    spans = otlp_receiver.wait_for(
        lambda spans: len([s for s in spans if s.name == "GET /api/errors/system-health"]) >= sent, timeout=20
    )
    served = [s for s in spans if s.name == "GET /api/errors/system-health"]
    pids = {s.resource.get("process.pid") for s in served}
    assert len(served) == sent
    assert master not in pids and len(pids) >= 2, pids  # forked workers, each from its own batch thread
