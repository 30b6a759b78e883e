"""A local HTTP endpoint that records what is POSTed to it (alert webhooks), and can be told to fail."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.harness.peers._net import LocalWSGIServer


@dataclass(frozen=True)
class Delivery:
    """One received request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    status: int

    @property
    def accepted(self) -> bool:
        """Whether the receiver answered 2xx."""
        return 200 <= self.status < 300

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass
class _Failure:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    """Accepts any POST/PUT on any path with 200 (or `status`), recording each; `url` is its base URL."""

    status: int = 200
    deliveries: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._failures: list[_Failure] = []
        self._server = LocalWSGIServer(self._wsgi, name="webhook-receiver")

    @property
    def url(self) -> str:
        """Base URL; append any path (e.g. `receiver.url + "/alerts"`)."""
        return self._server.url

    def start(self) -> WebhookReceiver:
        """Serve on a free loopback port."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

    def reset(self) -> None:
        """Forget deliveries and queued failures."""
        with self._changed:
            self.deliveries.clear()
            self._failures.clear()

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        body: str = '{"error": "receiver failing on purpose"}',
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` requests with `status` (they are still recorded, as failed attempts)."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(int(retry_after) if float(retry_after).is_integer() else retry_after)
        with self._changed:
            self._failures.extend([_Failure(status, body.encode(), extra)] * times)

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of the requests answered with 2xx, in order."""
        with self._changed:
            return [d.json for d in self.deliveries if d.accepted]

    def wait_for(self, count: int, *, timeout: float = 5.0) -> list[Delivery]:
        """Block until `count` requests arrived (accepted or failed), or raise TimeoutError."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.deliveries) >= count, timeout=timeout):
                raise TimeoutError(f"webhook receiver got {len(self.deliveries)} requests, wanted {count}")
            return list(self.deliveries)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        with self._changed:
            failure = self._failures.pop(0) if self._failures else None
            status = failure.status if failure else self.status
            headers = dict(request.headers.items())
            self.deliveries.append(Delivery(request.method, request.path, headers, body, time.time(), status))
            self._changed.notify_all()
        if failure is not None:
            response = Response(
                failure.body, status=failure.status, headers=failure.headers, mimetype="application/json"
            )
        else:
            response = Response('{"ok": true}', status=self.status, mimetype="application/json")
        return response(environ, start_response)
