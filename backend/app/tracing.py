"""OpenTelemetry traces (issue #17): spans for requests, SQL, Redis and job runs, exported by OTLP/HTTP.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is configured; without it
`init_tracing` returns at once, none of the trace SDK, exporter, instrumentations or propagators is imported,
and the hooks here cost one dict lookup.
On, each app gets its own `TracerProvider` (tests build many apps in one process; a gunicorn worker or
`flask jobs worker` builds one) with a `BatchSpanProcessor` and the OTLP/HTTP protobuf exporter. The SDK reads
the other standard variables itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS
and _TIMEOUT, OTEL_TRACES_SAMPLER and _ARG, OTEL_BSP_* (queue size, batch size, delay).

What is traced: every request (the Flask instrumentation; the route is the span name), every SQL statement
of the app's engines, Redis commands, and every job run, a child of the request (or job) that enqueued it:
`current_traceparent()` is stored on the job record and `job_span` continues it. SQL and Redis calls made
outside any request or job (a worker polling for jobs) start no trace of their own (`_NoOrphanClientSpans`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_app_context

from .signals import error_occurred, job_failed, send, spans_dropped

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

EXTENSION = "tracing"
DEFAULT_SERVICE_NAME = "oriel-signal-fx"
TRACES_PATH = "/v1/traces"  # appended to the generic endpoint, as the OTLP exporter specification says
ERROR_CODE_ATTRIBUTE = "oriel.error_code"
TRACER_NAME = "backend.app"


class DropCounter:
    """The batch processor's metrics hook (the SDK's `ProcessorMetricsT`): spans exported and dropped, by reason.

    Each drop is also announced (`spans_dropped`), so /metrics counts it without tracing importing monitoring.
    """

    def __init__(self, app: Flask) -> None:
        self._app = weakref.ref(app)  # the exporter thread outlives nothing: it must not keep the app alive
        self.exported = 0
        self.dropped: dict[str, int] = {}

    def register_queue_size(self, get_queue_size: Any) -> None:
        """The SDK offers a queue-size reader; the queue's bound is the number that matters here."""

    def finish_items(self, count: int) -> None:
        """`count` spans were handed to the exporter."""
        self.exported += count

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        """`count` spans were dropped (runs in the thread that ended the span: no I/O, never raises)."""
        self.dropped[error_type] = self.dropped.get(error_type, 0) + count
        app = self._app()
        if app is not None:
            send(spans_dropped, app, count=count, reason=error_type)


@dataclass
class Tracing:
    """One app's tracing: its provider (batch processor and exporter inside), its tracer, its drop counts."""

    provider: TracerProvider
    tracer: Tracer
    endpoint: str
    counts: DropCounter

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Export what the batch processor holds now; False if it did not finish in time."""
        return bool(self.provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        """Flush and stop the exporter thread (graceful shutdown; later spans are dropped)."""
        self.provider.shutdown()


def traces_endpoint(config: Mapping[str, Any]) -> str | None:
    """The OTLP/HTTP traces URL the config asks for, or None when tracing is off."""
    specific = (config.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip()
    if specific:
        return specific  # used as given, path included (the specification's rule for the per-signal variable)
    generic = (config.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    return f"{generic.rstrip('/')}{TRACES_PATH}" if generic else None


def tracing_of(app: Flask) -> Tracing | None:
    """The app's tracing, or None when it is off."""
    tracing: Tracing | None = app.extensions.get(EXTENSION)
    return tracing


def init_tracing(app: Flask) -> Tracing | None:
    """Trace the app when an OTLP endpoint is configured (call last in create_app: engines exist, WSGI is final)."""
    endpoint = traces_endpoint(app.config)
    if endpoint is None:
        return None  # off: opentelemetry is never imported
    tracing = _build(app, endpoint)
    app.extensions[EXTENSION] = tracing
    _instrument(app, tracing)
    error_occurred.connect(_on_error_occurred, sender=app, weak=False)
    job_failed.connect(_on_job_failed, sender=app, weak=False)
    logger.info("Tracing on: spans exported to %s", endpoint, extra={"event_type": "tracing_on"})
    return tracing


def _build(app: Flask, endpoint: str) -> Tracing:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    # The SDK's own reader of OTEL_TRACES_SAMPLER(_ARG), what TracerProvider() would use, wrapped.
    sampler = _NoOrphanClientSpans(_get_from_env_or_default())
    provider = TracerProvider(resource=resource, sampler=sampler)
    # Bounded (OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default): a slow or dead collector costs dropped spans, never a
    # request's time; the exporter's own thread waits at most OTEL_EXPORTER_OTLP_TIMEOUT (10 s) per batch.
    # The SDK restarts that thread in a forked child (os.register_at_fork), so a gunicorn worker forked from a
    # preloading master exports from its own thread, and flushes at exit (the provider's atexit shutdown).
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
    counts = DropCounter(app)
    _count_with(processor, counts)
    provider.add_span_processor(processor)
    return Tracing(provider=provider, tracer=provider.get_tracer(TRACER_NAME), endpoint=endpoint, counts=counts)


def _count_with(processor: Any, counts: DropCounter) -> None:
    """Give the SDK's batch processor our counter as its metrics hook.

    The SDK counts drops only into an OpenTelemetry MeterProvider and only with
    OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED; its hook object is the one place each drop is seen, so it is
    replaced here (an SDK without it leaves drops uncounted, said once, and tracing works on).
    """
    inner = getattr(processor, "_batch_processor", None)
    if inner is None or not hasattr(inner, "_metrics"):
        logger.warning("Tracing: this OpenTelemetry SDK hides its batch processor; dropped spans are not counted")
        return
    inner._metrics = counts


def _instrument(app: Flask, tracing: Tracing) -> None:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import EngineTracer
    from opentelemetry.metrics import NoOpMeterProvider

    from .extensions import db

    FlaskInstrumentor.instrument_app(app, tracer_provider=tracing.provider, enable_commenter=False)
    # SQLAlchemyInstrumentor is one per process and instruments once; each app's engines need their own
    # provider, so each engine gets the instrumentation's own EngineTracer directly.
    sql_tracer = tracing.provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    connections = NoOpMeterProvider().get_meter("sqlalchemy").create_up_down_counter("db.client.connections.usage")
    with app.app_context():
        for engine in db.engines.values():
            EngineTracer(sql_tracer, engine, connections)
    # Redis clients are built in many places (breakers, limiter, dispatch): the class is instrumented once per
    # process, and each command's span goes to the provider of the app whose context runs it.
    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=_current_app_provider())


def _current_app_provider() -> Any:
    """A TracerProvider whose tracers start spans with the provider of the current app (none: no span)."""
    from opentelemetry import trace

    class _AppTracer(trace.Tracer):
        def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._args, self._kwargs = args, kwargs

        def _target(self) -> trace.Tracer:
            tracing = tracing_of(current_app) if has_app_context() else None
            if tracing is None:
                return trace.NoOpTracer()
            return tracing.provider.get_tracer(*self._args, **self._kwargs)

        def start_span(self, *args: Any, **kwargs: Any) -> Span:
            return self._target().start_span(*args, **kwargs)

        def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
            return self._target().start_as_current_span(*args, **kwargs)

    class _AppProvider(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return _AppTracer(args, kwargs)

    return _AppProvider()


class _NoOrphanClientSpans:
    """The configured sampler, except that a client span (SQL, Redis) with no parent starts no trace."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def should_sample(
        self, parent_context: Any, trace_id: int, name: str, kind: Any = None, *rest: Any, **kwargs: Any
    ) -> Any:
        """Drop a root CLIENT span (a worker's poll), else ask the configured sampler."""
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult
        from opentelemetry.trace import SpanKind, get_current_span

        if kind is SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, *rest, **kwargs)

    def get_description(self) -> str:
        """The name trace tooling shows."""
        return f"NoOrphanClientSpans{{{self._inner.get_description()}}}"


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the span running now (for a job record), or None when tracing is off."""
    if not has_app_context() or tracing_of(current_app) is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def job_span(app: Flask, *, kind: str, job_id: int, attempt: int, traceparent: str | None) -> Any:
    """A context manager: the span of one job run, child of the request that enqueued it (off: nothing)."""
    tracing = tracing_of(app)
    if tracing is None:
        return nullcontext()
    return _job_span(tracing, kind=kind, job_id=job_id, attempt=attempt, traceparent=traceparent)


@contextmanager
def _job_span(tracing: Tracing, *, kind: str, job_id: int, attempt: int, traceparent: str | None) -> Iterator[Span]:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract({"traceparent": traceparent}) if traceparent else None
    attributes = {"oriel.job.kind": kind, "oriel.job.id": job_id, "oriel.job.attempt": attempt}
    with tracing.tracer.start_as_current_span(
        f"job {kind}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def _mark_error(code: str, exception: BaseException | None, *, failed: bool) -> None:
    """Record our error code on the span running now; `failed` sets its status to ERROR."""
    from opentelemetry.trace import Status, StatusCode, get_current_span

    span = get_current_span()
    if not span.is_recording():
        return
    span.set_attribute(ERROR_CODE_ATTRIBUTE, code)
    if exception is not None:
        span.record_exception(exception)
    if failed:
        span.set_status(Status(StatusCode.ERROR, code))


def _on_error_occurred(app: Flask, *, error: Any, exception: BaseException | None = None, **_: Any) -> None:
    """An error answered: its code on the request span; a 5xx is the server's failure, so status ERROR.

    A 4xx keeps the status unset, as OpenTelemetry's HTTP conventions say for server spans: the client erred,
    and a trace viewer would otherwise paint every 404 and validation error red.
    """
    _mark_error(str(error.code), exception, failed=int(error.status_code) >= 500)


def _on_job_failed(app: Flask, *, error: BaseException, **_: Any) -> None:
    """A job attempt failed: the job span gets status ERROR and the error's code."""
    code = getattr(error, "code", None)
    _mark_error(str(code) if isinstance(code, str) else type(error).__name__, error, failed=True)
