"""A local OTLP/HTTP traces receiver: decodes each ExportTraceServiceRequest with opentelemetry-proto.

It answers `POST /v1/traces` (protobuf) as a collector does (200 with an empty ExportTraceServiceResponse) and
records every span with its resource's service name and the request headers. `hang()` makes it hold every
request until `stop()` or `release()`, as a stuck collector does: what the app does then is the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from werkzeug.wrappers import Request, Response

from tests.harness.peers._net import LocalWSGIServer

TRACES_PATH = "/v1/traces"
_STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}
_KIND_NAMES = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(any_value: Any) -> Any:
    """The Python value of an OTLP AnyValue (scalars; arrays as lists)."""
    which = any_value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    return getattr(any_value, which) if which else None


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector saw it (ids as lowercase hex, as in `traceparent`)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    status: str
    status_message: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    service_name: str | None
    headers: dict[str, str]
    resource: dict[str, Any] = field(default_factory=dict)


@dataclass
class OTLPReceiver:
    """Records the spans POSTed to `url + "/v1/traces"`; `url` is the base to give as OTEL_EXPORTER_OTLP_ENDPOINT."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._release = threading.Event()
        self._release.set()
        self._server = LocalWSGIServer(self._wsgi, name="otlp-receiver")

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        return self._server.url

    def start(self) -> OTLPReceiver:
        """Serve on a free loopback port."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Release hung requests and stop serving."""
        self._release.set()
        self._server.stop()

    def reset(self) -> None:
        """Forget the spans received (a hang stays as it is)."""
        with self._changed:
            self.spans.clear()
            self.requests = 0

    def hang(self) -> None:
        """Hold every request from now on without answering (until `release` or `stop`)."""
        self._release.clear()

    def release(self) -> None:
        """Answer again (held requests too)."""
        self._release.set()

    def named(self, name: str) -> list[ReceivedSpan]:
        """The spans received with this name."""
        with self._changed:
            return [span for span in self.spans if span.name == name]

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], *, timeout: float = 10.0) -> list[ReceivedSpan]:
        """Block until `predicate(spans)` holds, then the spans; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.spans), timeout=timeout):
                names = [span.name for span in self.spans]
                raise TimeoutError(f"OTLP receiver: condition not met; spans so far: {names}")
            return list(self.spans)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._changed:
            self.requests += 1
            self._changed.notify_all()
        self._release.wait()
        if request.method != "POST" or request.path != TRACES_PATH:
            return Response("not found", status=404)(environ, start_response)
        if request.content_type != "application/x-protobuf":
            return Response("OTLP/HTTP protobuf only", status=415)(environ, start_response)
        export = ExportTraceServiceRequest()
        export.ParseFromString(request.get_data())
        headers = dict(request.headers.items())
        received = list(_spans(export, headers))
        with self._changed:
            self.spans.extend(received)
            self._changed.notify_all()
        body = ExportTraceServiceResponse().SerializeToString()
        return Response(body, status=200, mimetype="application/x-protobuf")(environ, start_response)


def _spans(export: ExportTraceServiceRequest, headers: dict[str, str]) -> list[ReceivedSpan]:
    found = []
    for resource_spans in export.resource_spans:
        resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        kind=_KIND_NAMES.get(span.kind, str(span.kind)),
                        status=_STATUS_NAMES.get(span.status.code, str(span.status.code)),
                        status_message=span.status.message,
                        attributes={item.key: _value(item.value) for item in span.attributes},
                        events=[
                            {"name": event.name, **{item.key: _value(item.value) for item in event.attributes}}
                            for event in span.events
                        ],
                        service_name=resource.get("service.name"),
                        headers=headers,
                        resource=resource,
                    )
                )
    return found
