"""A loopback TCP forwarder (PostgreSQL, Redis) whose wire can be cut and restored, for database outages.

`down()` cuts every open connection and answers new ones by closing them at once (the client sees the server
go away, as when PostgreSQL restarts); `hang()` cuts them too, then accepts new connections and never answers
(a host that stopped responding: a client waits for its connect timeout); `up()` forwards again. The
forwarder binds 127.0.0.1 only.

Open connections are cut, not stalled, by `hang()`: nothing in libpq bounds a query on a live but silent
connection, so a stalled pooled connection would block its pre-ping for good. That is another fault (one
for TCP or statement timeouts); this mode stands for the connect-timeout wait.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpFaultProxy:
    """127.0.0.1:<free port> → 127.0.0.1:`target_port`, switchable between forwarding and down."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._down = False
        self._hanging = False
        self._conns: set[socket.socket] = set()
        self._held: set[socket.socket] = set()  # accepted while hanging, never answered
        self.refused = 0  # connections answered by closing them while down
        self.held = 0  # connections accepted and left unanswered while hanging
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, name="tcp-fault-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                down, hanging = self._down, self._hanging
                if down:
                    self.refused += 1
                elif hanging:
                    self.held += 1
                    self._held.add(client)
            if down:
                client.close()
                continue
            if hanging:
                continue  # read nothing, answer nothing: the client's own timeout ends it
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # the other side (or a cut) closed the connection
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(sock)

    def down(self) -> None:
        """Cut every open connection and refuse new ones until `up()`."""
        with self._lock:
            self._down, self._hanging = True, False
        self._cut()

    def hang(self) -> None:
        """Cut every open connection; accept new ones and never answer them until `up()`."""
        with self._lock:
            self._down, self._hanging = False, True
        self._cut()

    def up(self) -> None:
        """Forward new connections again (connections held by `hang()` are closed)."""
        with self._lock:
            self._down = self._hanging = False
            held, self._held = list(self._held), set()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()

    def _cut(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
            held, self._held = list(self._held), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        """Cut everything and stop listening."""
        self.down()
        self._server.close()
