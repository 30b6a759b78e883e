"""Loopback plumbing shared by the peers: free ports, readiness waits, a threaded WSGI server."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 10.0, host: str = LOOPBACK) -> None:
    """Block until something accepts TCP connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.1f}s") from None
            time.sleep(0.02)


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without the per-request access log (it would flood the test output)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log at DEBUG through our logger instead of werkzeug's stderr handler."""
        logger.debug("%s %s -> %s", self.command, self.path, code)

    def log_error(self, format: str, *args: Any) -> None:
        """Route werkzeug's error lines to our logger."""
        logger.debug(format, *args)


class LocalWSGIServer:
    """A threaded WSGI server on 127.0.0.1 (port chosen by the kernel) that starts and stops fast."""

    def __init__(self, app: Callable[..., Any], *, name: str = "peer") -> None:
        self._app = app
        self._name = name
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (only after start)."""
        if self._server is None:
            raise RuntimeError(f"{self._name} is not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321 (no trailing slash)."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> LocalWSGIServer:
        """Bind and serve in a daemon thread."""
        self._server = make_server(LOOPBACK, 0, self._app, threaded=True, request_handler=_QuietHandler)
        # A short poll interval so stop() returns in ~50 ms instead of werkzeug's 0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self._name, daemon=True
        )
        self._thread.start()
        logger.debug("%s listening on %s", self._name, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
