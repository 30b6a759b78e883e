"""A fault-injecting HTTP reverse proxy for loopback peers: down, hang, status codes, slowness, dropped replies.

Put it between an SDK and a peer (`FaultProxy(peer.url).start()`, point the SDK at `proxy.url`) and switch
faults at runtime. Exactly one rule is active at a time; setting a new one replaces the old. A rule with
`times=N` applies to the next N matching requests and then the proxy passes through again; `rate=0.25`
applies it to exactly one request in four (deterministic, so tests do not flake); `path="/v3/"` limits it
to request paths starting with that prefix. Every hold is bounded by `max_hold`, and `stop()` releases all.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.harness.peers._net import LOOPBACK

logger = logging.getLogger(__name__)

# Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)

PASS, DOWN, HANG, STATUS, SLOW, DROP = "pass", "down", "hang", "status", "slow", "drop"


def default_error_body(code: int) -> bytes:
    """A JSON error body the Stripe and Google SDKs can both parse (SendGrid only reads the status)."""
    return json.dumps(
        {"error": {"type": "api_error", "code": "fault_injected", "message": f"fault proxy injected HTTP {code}"}}
    ).encode()


@dataclass
class Rule:
    """One fault: what to do, to which requests, and how many times."""

    mode: str
    times: int | None = None
    rate: float | None = None
    path: str | None = None
    code: int = 503
    retry_after: float | str | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    max_hold: float = 30.0
    after_upstream: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    _credit: float = 0.0

    def claims(self, path: str) -> bool:
        """Whether this request gets the fault (consumes `times` and `rate` credit)."""
        if self.path is not None and not path.startswith(self.path):
            return False
        if self.times is not None and self.times <= 0:
            return False
        if self.rate is not None:
            self._credit += self.rate
            if self._credit < 1.0:
                return False
            self._credit -= 1.0
        if self.times is not None:
            self.times -= 1
        return True


@dataclass(frozen=True)
class SeenRequest:
    """One request the proxy read, and what it did with it."""

    method: str
    path: str
    mode: str
    at: float


class FaultProxy:
    """Reverse proxy on 127.0.0.1:<free port> forwarding to `upstream`, with switchable faults."""

    def __init__(self, upstream: str, *, max_hold: float = 30.0, upstream_timeout: float = 30.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._upstream_addr = (parts.hostname, parts.port or 80)
        self.max_hold = max_hold
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rule = Rule(PASS)
        self._counts: Counter[str] = Counter()
        self._seen: list[SeenRequest] = []
        self._seen_changed = threading.Condition(self._lock)
        self._listener: socket.socket | None = None
        self._placeholder: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._accepting = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL clients should use instead of the upstream's."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> FaultProxy:
        """Bind 127.0.0.1 on a free port and start accepting."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        self.port = sock.getsockname()[1]
        self._listen(sock)
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"fault-proxy:{self.port}", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Release every held request, close every socket and join the accept loop."""
        self._stopping.set()
        with self._lock:
            self._rule.release.set()
            self._rule = Rule(PASS)
        self._close_listener()
        self._drop_connections()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- switching faults ------------------------------------------------------------------------------------

    def passthrough(self) -> None:
        """Forward everything again: clears any fault, releases hung requests, reopens if down."""
        self._set_rule(Rule(PASS))
        self.up()

    reset = passthrough

    def down(self) -> None:
        """Refuse connections (the port stays reserved, so `up()` reopens the same URL)."""
        with self._lock:
            if self._listener is None:
                return
            self._accepting.clear()
            # Bind the placeholder before closing the listener so nobody else can take the port meanwhile;
            # a bound socket that does not listen answers SYNs with RST, i.e. "connection refused".
            placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener, self._listener = self._listener, None
            listener.close()
            placeholder.bind((LOOPBACK, self.port))
            self._placeholder = placeholder
        # Pooled keep-alive connections would otherwise keep working through a "dead" peer.
        self._drop_connections()
        logger.debug("fault proxy %s is down", self.port)

    def up(self) -> None:
        """Accept connections again after `down()`."""
        with self._lock:
            if self._placeholder is None or self._stopping.is_set():
                return
            placeholder, self._placeholder = self._placeholder, None
        self._listen(placeholder)

    @property
    def is_down(self) -> bool:
        """True between `down()` and `up()`."""
        return self._listener is None and not self._stopping.is_set()

    def hang(
        self,
        *,
        times: int | None = None,
        rate: float | None = None,
        path: str | None = None,
        max_hold: float | None = None,
        after_upstream: bool = False,
    ) -> None:
        """Read requests and never answer; the connection is closed after `max_hold` s, on a switch or stop.

        With `after_upstream=True` the request reaches the peer first (it did the work; the reply is lost).
        """
        hold = self.max_hold if max_hold is None else max_hold
        self._set_rule(Rule(HANG, times, rate, path, max_hold=hold, after_upstream=after_upstream))

    def status(
        self,
        code: int,
        *,
        retry_after: float | str | None = None,
        body: bytes | str | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        times: int | None = None,
        rate: float | None = None,
        path: str | None = None,
        after_upstream: bool = False,
    ) -> None:
        """Answer with HTTP `code` (and `Retry-After` when given) instead of forwarding.

        `body` may be bytes, text or a dict (sent as JSON); the default is a generic JSON error.
        With `after_upstream=True` the peer still handles the request and only its reply is replaced.
        """
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        rule = Rule(STATUS, times, rate, path, code=code, retry_after=retry_after, body=body)
        rule.headers.update(headers or {})
        rule.after_upstream = after_upstream
        self._set_rule(rule)

    def slow(
        self, delay: float, *, times: int | None = None, rate: float | None = None, path: str | None = None
    ) -> None:
        """Forward after sleeping `delay` s (bounded by `max_hold`; a switch or stop cuts the sleep short)."""
        self._set_rule(Rule(SLOW, times, rate, path, delay=min(delay, self.max_hold)))

    def drop(self, *, times: int | None = None, rate: float | None = None, path: str | None = None) -> None:
        """Read the request, then close the connection without a reply (a peer that crashed mid-request)."""
        self._set_rule(Rule(DROP, times, rate, path))

    # -- what happened -----------------------------------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """Requests seen per mode ("pass", "hang", "status", "slow", "drop"); refused connections are not seen."""
        with self._lock:
            return dict(self._counts)

    @property
    def seen(self) -> list[SeenRequest]:
        """Every request read, in order."""
        with self._lock:
            return list(self._seen)

    def clear_counts(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self._counts.clear()
            self._seen.clear()

    def wait_for_requests(self, count: int, *, timeout: float = 5.0, mode: str | None = None) -> None:
        """Block until `count` requests (of `mode`, if given) were seen, or raise TimeoutError."""

        def enough() -> bool:
            return (self._counts[mode] if mode else sum(self._counts.values())) >= count

        with self._seen_changed:
            if not self._seen_changed.wait_for(enough, timeout=timeout):
                raise TimeoutError(f"fault proxy saw {dict(self._counts)}, wanted {count} ({mode or 'any'})")

    # -- internals -------------------------------------------------------------------------------------------

    def _set_rule(self, rule: Rule) -> None:
        with self._lock:
            self._rule.release.set()
            self._rule = rule

    def _listen(self, sock: socket.socket) -> None:
        sock.listen(64)
        sock.setblocking(False)
        with self._lock:
            self._listener = sock
        self._accepting.set()

    def _close_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        self._accepting.clear()
        if listener is not None:
            listener.close()

    def _drop_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._accepting.wait(timeout=0.05):
                continue
            listener = self._listener
            if listener is None:
                continue
            try:
                with selectors.DefaultSelector() as selector:
                    selector.register(listener, selectors.EVENT_READ)
                    if not selector.select(timeout=0.05):
                        continue
                conn, address = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed under us by down() or stop()
            conn.setblocking(True)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn, address), daemon=True).start()

    def _serve(self, conn: socket.socket, address: tuple[str, int]) -> None:
        try:
            _ProxyHandler(conn, address, self)
        except OSError as exc:
            logger.debug("fault proxy connection ended: %s", exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _decide(self, method: str, path: str) -> Rule:
        """Pick the rule for one request and record it."""
        with self._lock:
            rule = self._rule if self._rule.mode != PASS and self._rule.claims(path) else Rule(PASS)
            self._counts[rule.mode] += 1
            self._seen.append(SeenRequest(method, path, rule.mode, time.monotonic()))
            self._seen_changed.notify_all()
            return rule

    def forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> http.client.HTTPResponse:
        """Send one request upstream on a fresh connection; the caller reads the response."""
        conn = http.client.HTTPConnection(*self._upstream_addr, timeout=self.upstream_timeout)
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                conn.putheader(name, value)
        if body or method in {"POST", "PUT", "PATCH"}:
            conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Connection", "close")
        conn.endheaders(body or None)
        return conn.getresponse()


class _ProxyHandler(BaseHTTPRequestHandler):
    """One client connection: parse requests (keep-alive), apply the rule, reply."""

    protocol_version = "HTTP/1.1"
    server: FaultProxy  # type: ignore[assignment]  # BaseRequestHandler stores its third argument here

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: debug log instead of stderr."""
        logger.debug(format, *args)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        proxy = self.server
        rule = proxy._decide(self.command, self.path)
        if rule.mode == DROP:
            self.close_connection = True
            return
        if rule.mode == SLOW:
            rule.release.wait(rule.delay)
        upstream = None
        if rule.mode in {PASS, SLOW} or rule.after_upstream:
            upstream = self._call_upstream(body)
            if upstream is None:
                return
        if rule.mode == HANG:
            rule.release.wait(rule.max_hold)
            self.close_connection = True
            return
        if rule.mode == STATUS:
            self._reply(rule.code, self._fault_headers(rule), rule.body or default_error_body(rule.code))
            return
        assert upstream is not None
        status, reason, headers, payload = upstream
        self._reply(status, headers, payload, reason=reason)

    def _call_upstream(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes] | None:
        try:
            response = self.server.forward(self.command, self.path, list(self.headers.items()), body)
            with response:
                payload = response.read()
                headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                if self.command == "HEAD" and response.getheader("Content-Length"):
                    headers.append(("Content-Length", response.getheader("Content-Length", "0")))
                return response.status, response.reason, headers, payload
        except OSError as exc:
            # The upstream itself is unreachable: say so like a gateway would, not a silent hang.
            message = json.dumps({"error": {"type": "api_error", "message": f"upstream unreachable: {exc}"}})
            self._reply(502, [("Content-Type", "application/json")], message.encode())
            return None

    @staticmethod
    def _fault_headers(rule: Rule) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json")]
        if rule.retry_after is not None:
            retry_after = rule.retry_after
            if isinstance(retry_after, float) and retry_after.is_integer():
                retry_after = int(retry_after)
            headers.append(("Retry-After", str(retry_after)))
        headers.extend(rule.headers.items())
        return headers

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes, *, reason: str | None = None) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name, _ in headers):
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    # BaseHTTPRequestHandler looks handlers up by these names.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch  # noqa: N815
