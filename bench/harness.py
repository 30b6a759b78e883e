"""Reusable benchmark harness: gunicorn on loopback with a given environment, wrk against it.

Every server binds 127.0.0.1 on a free port, every load run is bounded by its duration, and the
servers are stopped (by their own process group) when the `with` block ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
BENCH_SECRETS = {
    "SECRET_KEY": "bench-secret-key-0123456789abcdef",
    "JWT_SECRET_KEY": "bench-jwt-secret-key-0123456789abcdef",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A production-like environment with its own SQLite file and log folder under `workdir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "LOG_", "DATABASE_URL"))}
    env.update(BENCH_SECRETS)
    env.update(
        {
            "FLASK_ENV": "production",
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
            "LOG_DIR": str(workdir / "logs"),
            "RATELIMIT_ENABLED": "false",  # the benchmark measures logging, not 429s
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra or {})
    return env


def migrate(env: Mapping[str, str]) -> None:
    """Create the schema with the real migrations."""
    subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=dict(env),
        check=True,
        capture_output=True,
        timeout=120,
    )


@dataclass
class Server:
    """A running gunicorn."""

    port: int
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_dir = Path(self.env["LOG_DIR"])

    def url(self, path: str) -> str:
        """The loopback URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) used so far by gunicorn and its workers (Linux)."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        ticks = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a worker that just exited
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")


def _wait_ready(server: Server, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.process.returncode}")
        try:
            with urllib.request.urlopen(server.url(path), timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the app is up
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("gunicorn did not answer in time")


@contextmanager
def gunicorn(
    env: Mapping[str, str],
    *,
    workers: int = 2,
    threads: int = 4,
    worker_class: str = "gthread",
    preload: bool = False,
    ready_path: str = "/api/errors/catalog",
    ready_timeout: float = 30.0,
    worker_connections: int | None = None,
    app: str = "wsgi:app",
) -> Iterator[Server]:
    """Run `gunicorn <app>` (gthread unless `worker_class` says otherwise) on a free loopback port."""
    port = free_port()
    args = [
        str(VENV_BIN / "gunicorn"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--threads",
        str(threads),
        "--graceful-timeout",
        "10",
        "--log-level",
        "warning",
    ]
    if worker_connections is not None:
        args += ["--worker-connections", str(worker_connections)]
    if preload:
        args.append("--preload")
    args.append(app)
    process = subprocess.Popen(args, cwd=ROOT, env=dict(env), start_new_session=True)
    server = Server(port=port, process=process, env=dict(env))
    try:
        _wait_ready(server, ready_path, ready_timeout)
        yield server
    finally:
        stop(server)


def stop(server: Server, timeout: float = 15.0) -> None:
    """Stop gunicorn gracefully (its workers flush their logs at exit), then hard if it hangs."""
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(5)


def wrk_available() -> bool:
    """Whether the wrk load generator is installed."""
    return shutil.which("wrk") is not None


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_TOTAL = re.compile(r"(\d+) requests in")


@dataclass
class LoadResult:
    """One wrk run."""

    rps: float
    requests: int
    non_2xx: int


def run_wrk(url: str, *, seconds: float, connections: int = 16, threads: int = 1) -> LoadResult:
    """Run wrk against a loopback URL for a bounded time and parse requests/s."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("load is only ever sent to loopback")
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps = _RPS.search(out)
    total = _TOTAL.search(out)
    non2xx = _NON2XX.search(out)
    if rps is None or total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return LoadResult(float(rps.group(1)), int(total.group(1)), int(non2xx.group(1)) if non2xx else 0)


@dataclass
class Round:
    """One wrk run against one server: its throughput and the server CPU it cost per request."""

    rps: float
    cpu_us: float
    requests: int
    non_2xx: int


def interleaved_rounds(
    servers: Mapping[str, Server], path: str, *, rounds: int, seconds: float, connections: int, label: str = ""
) -> dict[str, list[Round]]:
    """Load `path` on each server in turn, `rounds` times, rotating who goes first (after a 1 s warm-up each).

    Rounds run back to back, so drift on a shared machine hits every server alike; server CPU per
    request (master + workers, all threads) is read around each run, far steadier than req/s there.
    """
    names = list(servers)
    for name in names:  # warm every server up (imports, first-request caches)
        run_wrk(servers[name].url(path), seconds=1, connections=connections)
    results: dict[str, list[Round]] = {name: [] for name in names}
    for rnd in range(rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            cpu_before = servers[name].cpu_seconds()
            res = run_wrk(servers[name].url(path), seconds=seconds, connections=connections)
            cpu_us = (servers[name].cpu_seconds() - cpu_before) / max(1, res.requests) * 1e6
            results[name].append(Round(res.rps, cpu_us, res.requests, res.non_2xx))
            print(
                f"{label:30} {name:10} round {rnd + 1}: {res.rps:8.1f} req/s {cpu_us:7.0f} µs CPU/request",
                file=sys.stderr,
            )
    return results


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary folder for one benchmark's databases and logs."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def median(values: list[float]) -> float:
    """The median (0 for no values)."""
    return statistics.median(values) if values else 0.0
