"""A load balancer stand-in: a reverse proxy on 127.0.0.1 that appends the client to `X-Forwarded-For`.

It does what nginx's `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for` does: whatever
`X-Forwarded-For` the client sent is kept and the address of the socket the request came from is
appended, so the last hop is the one this proxy vouches for. `X-Forwarded-Proto` is set to `proto`
("https": the proxy terminated TLS). Clients reach it from different loopback addresses
(127.0.0.2, 127.0.0.3...: all of 127.0.0.0/8 is loopback on Linux) to play different users.
"""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.harness.peers._net import LOOPBACK

# Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)


class ForwardingProxy:
    """Reverse proxy on 127.0.0.1:<free port> to an http:// upstream, adding X-Forwarded-For/-Proto."""

    def __init__(self, upstream: str, *, proto: str = "https", timeout: float = 30.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname != LOOPBACK:
            raise ValueError(f"upstream must be http://127.0.0.1:<port>, got {upstream!r}")
        self._upstream = (parts.hostname, parts.port or 80)
        self.proto = proto
        self.timeout = timeout
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.forwarded = 0

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The URL clients use instead of the upstream's."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ForwardingProxy:
        """Listen on a free loopback port and serve in a thread."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
                headers = [(k, v) for k, v in headers if k.lower() not in ("x-forwarded-for", "x-forwarded-proto")]
                sent = self.headers.get_all("X-Forwarded-For") or []
                chain = ", ".join([*sent, self.client_address[0]])
                headers += [("X-Forwarded-For", chain), ("X-Forwarded-Proto", proxy.proto)]
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=proxy.timeout)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in headers:
                        upstream.putheader(key, value)
                    upstream.endheaders(body)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                proxy.forwarded += 1
                self.send_response_only(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward  # noqa: N815

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="forwarding-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def bound_session_address(source: str) -> Any:
    """A `requests` adapter whose connections leave from `source` (a 127.x.y.z address): one user."""
    from requests.adapters import HTTPAdapter

    class SourceAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["source_address"] = (source, 0)
            super().init_poolmanager(*args, **kwargs)

    return SourceAdapter()


def loopback_alias_works(source: str = "127.0.0.2") -> bool:
    """Whether a socket can leave from `source` on this machine (Linux: the whole 127/8 is loopback)."""
    with socket.socket() as probe:
        try:
            probe.bind((source, 0))
        except OSError:
            return False
    return True
