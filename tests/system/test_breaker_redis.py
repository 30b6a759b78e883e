"""Breaker state shared through Redis: seen by every process; a dead or hung Redis never hangs a call."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from backend.app.redis_client import make_redis_client
from backend.app.resilience.breaker import CircuitBreaker, CircuitOpenError
from backend.app.resilience.breaker_redis import RedisBreakerStore
from backend.app.resilience.breaker_store import BreakerConfig, BreakerState

pytestmark = pytest.mark.redis

CONFIG = BreakerConfig(min_calls=5, recovery_timeout=300)


def _breaker(url: str, prefix: str, **store_kwargs: Any) -> CircuitBreaker:
    store = RedisBreakerStore(make_redis_client(url, timeout=0.1), prefix=prefix, **store_kwargs)
    return CircuitBreaker("stripe", CONFIG, store, listeners=[])


def _worker(index: int, url: str, prefix: str, barrier: Any, reset_done: Any, results: Any) -> None:
    """One process: see the breaker open, let process 0 reset it, see it closed."""
    breaker = _breaker(url, prefix)
    before = breaker.state.value
    try:
        breaker.acquire()
        rejected_before = False
    except CircuitOpenError:
        rejected_before = True
    barrier.wait(20)
    if index == 0:
        breaker.reset(actor=f"process-{index}")
        reset_done.set()
    reset_done.wait(20)
    after = breaker.state.value
    breaker.record(breaker.acquire(), failure=False, duration=0.001)  # admitted again
    results.put((index, before, rejected_before, after, breaker.storage))


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    value = f"test:{uuid.uuid4().hex}:"
    yield value
    RedisBreakerStore(make_redis_client(redis_url), prefix=value).delete_all()


def test_a_reset_in_one_process_is_seen_by_every_other_process(redis_url: str, prefix: str) -> None:
    parent = _breaker(redis_url, prefix)
    for _ in range(5):
        parent.record(parent.acquire(), failure=True, duration=0.01)
    assert parent.state is BreakerState.OPEN

    ctx = multiprocessing.get_context("fork")
    barrier, reset_done, results = ctx.Barrier(3), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, redis_url, prefix, barrier, reset_done, results)) for i in range(3)]
    for proc in procs:
        proc.start()
    rows = sorted(results.get(timeout=30) for _ in procs)
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0
    # Every process saw the open state the parent caused, and the reset process 0 made.
    assert rows == [(i, "open", True, "closed", "redis") for i in range(3)]
    assert parent.state is BreakerState.CLOSED
    assert parent.snapshot()["calls_in_window"] == 3  # the three processes' calls, counted in one window


def test_with_redis_down_calls_stay_fast_and_state_says_local_fallback(caplog: pytest.LogCaptureFixture) -> None:
    breaker = _breaker("redis://127.0.0.1:1/0", "test:down:")
    caplog.set_level(logging.WARNING, logger="backend.app.resilience.breaker_redis")
    started = time.perf_counter()
    for _ in range(200):
        breaker.record(breaker.acquire(), failure=False, duration=0.001)
    per_call_ms = (time.perf_counter() - started) / 200 * 1000
    assert per_call_ms < 5  # refused connections, no client retries, probes at most every 2 s
    snap = breaker.snapshot()
    assert (snap["storage"], snap["state"], snap["calls_in_window"]) == ("local-fallback", "closed", 200)
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1  # said once per outage, not once per call
    for _ in range(5):
        breaker.record(breaker.acquire(), failure=True, duration=0.001)
    for _ in range(5):
        breaker.record(breaker.acquire(), failure=True, duration=0.001)
    assert breaker.state is BreakerState.CLOSED  # 10 failures in 210 calls
    assert breaker.store.outages == 1


def test_a_hung_redis_costs_one_socket_timeout_then_nothing_until_the_next_probe() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections complete in the kernel; nobody ever answers
    try:
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        breaker = _breaker(url, "test:hung:", probe_interval=60)
        started = time.perf_counter()
        breaker.acquire()
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(100):
            breaker.record(breaker.acquire(), failure=False, duration=0.001)
        rest = time.perf_counter() - started
    finally:
        listener.close()
    assert first < 0.5  # bounded by the 0.1 s socket timeout, not redis-py's retry loop
    assert rest < 0.2
    assert breaker.storage == "local-fallback"


class Switch:
    """A loopback TCP forwarder to Redis that can be cut (connections dropped and refused) and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.conns.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_when_redis_returns_locally_opened_breakers_are_written_back_and_state_is_shared_again(
    redis_url: str, prefix: str
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    switch = Switch(port)
    try:
        breaker = _breaker(f"redis://127.0.0.1:{switch.port}/0", prefix, probe_interval=0.05)
        observer = _breaker(redis_url, prefix)
        breaker.record(breaker.acquire(), failure=False, duration=0.001)
        assert breaker.storage == "redis"
        switch.cut()
        for _ in range(5):
            breaker.record(breaker.acquire(), failure=True, duration=0.001)
        assert (breaker.storage, breaker.state) == ("local-fallback", BreakerState.OPEN)
        assert observer.state is BreakerState.CLOSED  # Redis never heard of it
        switch.up = True
        time.sleep(0.1)  # past the probe interval
        with pytest.raises(CircuitOpenError):
            breaker.acquire()  # this call probes Redis, re-syncs, and is answered from Redis
        assert breaker.storage == "redis"
        assert observer.state is BreakerState.OPEN  # every process now sees the outage-time opening
    finally:
        switch.close()
