"""OpenTelemetry traces (issue #17): a span for every request, exported by OTLP/HTTP.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is configured: then
`init_tracing` returns at once, none of the trace SDK, exporter, instrumentations or propagators is imported,
and the hooks here cost one dict lookup.
On, each app gets its own `TracerProvider` (tests build many apps in one process; a gunicorn worker or
`flask jobs worker` builds one) with a `BatchSpanProcessor` and the OTLP/HTTP protobuf exporter. The SDK reads
the other standard variables itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS
and _TIMEOUT, OTEL_TRACES_SAMPLER and _ARG, OTEL_BSP_* (queue size, batch size, delay).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

logger = logging.getLogger(__name__)

EXTENSION = "tracing"
DEFAULT_SERVICE_NAME = "oriel-signal-fx"
TRACES_PATH = "/v1/traces"  # appended to the generic endpoint, as the OTLP exporter specification says
TRACER_NAME = "backend.app"


@dataclass
class Tracing:
    """One app's tracing: its provider (batch processor and exporter inside) and the tracer of its own spans."""

    provider: TracerProvider
    tracer: Tracer
    endpoint: str

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
    tracing = _build(endpoint)
    app.extensions[EXTENSION] = tracing
    _instrument(app, tracing)
    logger.info("Tracing on: spans exported to %s", endpoint, extra={"event_type": "tracing_on"})
    return tracing


def _build(endpoint: str) -> Tracing:
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
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Tracing(provider=provider, tracer=provider.get_tracer(TRACER_NAME), endpoint=endpoint)


def _instrument(app: Flask, tracing: Tracing) -> None:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor.instrument_app(app, tracer_provider=tracing.provider, enable_commenter=False)


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
