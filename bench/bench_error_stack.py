"""Requests/s and server CPU per request of the full app versus a bare Flask app, under gunicorn.

OURS = `gunicorn wsgi:app` with the production defaults (JSON logging with a performance.log line
per request, error statistics, metrics and SLO counting, request IDs, the error envelope; rate
limits off, as in `harness.base_env`). BARE = `gunicorn bench.bare_app:app`: plain `Flask(__name__)`,
no extensions, a small JSON 404 handler. LIMITS = `gunicorn bench.ours_rate_limited:app`: ours with
rate limits on in memory (`oriel-memory://`, no `REDIS_URL`) and a limit nothing reaches, for the 200
only. Equivalent endpoints:

- 200: `GET /healthz` (all answer `{"status": "alive"}`); with rate limits on, `GET /bench/ping` (the
  same answer on a counted route: the probes are never rate limited);
- 404: `GET /no/such/page` (ours: the JSON error envelope; bare: a small JSON error body);
- 401: `GET /api/me` without a token (ours: JWT check, envelope, security.log line, error event;
  bare: a route returning a small 401 JSON).

Both servers run side by side on 127.0.0.1 (2 gthread workers x 4 threads each, each worker taking
at most its share of wrk's connections, as in bench_logging); wrk (`-c16`, bounded duration) loads
one at a time, the order rotating every round so drift on a shared machine hits both alike. Reported
per endpoint: median req/s and the ratio ours/bare, and the servers' median CPU time per request
(`/proc`, master + workers, all threads) with the ratio bare/ours (the req/s ratio a CPU-bound
server would see) and its range over rounds run back to back. No target: the figures are the cost of
the error stack. Usage: `python -m bench.bench_error_stack [--seconds 5 --rounds 5 --only 404]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass

from bench.harness import Server, base_env, gunicorn, interleaved_rounds, median, migrate, workdir, wrk_available

WORKERS = 2  # each capped at connections // WORKERS (see the comment in bench_logging.py)
THREADS = 4
SERVERS = {"bare": "bench.bare_app:app", "ours": "wsgi:app", "limits": "bench.ours_rate_limited:app"}
LIMITS_LABEL = "ours + rate limits (memory)"
# label: (path, expected status, servers loaded); the same path on every server.
ENDPOINTS = {
    "200 GET /healthz": ("/healthz", 200, ("bare", "ours")),
    "200 GET /bench/ping (rate limited)": ("/bench/ping", 200, ("bare", "limits")),
    "404 GET /no/such/page": ("/no/such/page", 404, ("bare", "ours")),
    "401 GET /api/me (no token)": ("/api/me", 401, ("bare", "ours")),
}


@dataclass
class Answer:
    """What one server answers on one endpoint (checked once before the load)."""

    status: int
    content_type: str
    size: int


def fetch(server: Server, path: str) -> Answer:
    """One GET: status, Content-Type and body size."""
    try:
        with urllib.request.urlopen(server.url(path), timeout=10) as resp:
            return Answer(resp.status, resp.headers.get("Content-Type", ""), len(resp.read()))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers.get("Content-Type", ""), len(exc.read()))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables (exit 1 when an endpoint answers an unexpected status)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per server and endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", default="", help="run only the endpoints whose label contains this (e.g. 404)")
    args = parser.parse_args(argv)
    endpoints = {label: spec for label, spec in ENDPOINTS.items() if args.only in label}
    if not endpoints:
        print(f"no endpoint label contains {args.only!r}", file=sys.stderr)
        return 2
    if not wrk_available():
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    names = [name for name in SERVERS if any(name in spec[2] for spec in endpoints.values())]
    per_worker = max(1, args.connections // WORKERS)
    rps: dict[str, dict[str, list[float]]] = {ep: {s: [] for s in spec[2]} for ep, spec in endpoints.items()}
    cpu: dict[str, dict[str, list[float]]] = {ep: {s: [] for s in spec[2]} for ep, spec in endpoints.items()}
    non_2xx: dict[str, dict[str, list[tuple[int, int]]]] = {
        ep: {s: [] for s in spec[2]} for ep, spec in endpoints.items()
    }
    answers: dict[str, dict[str, Answer]] = {}
    load_before = os.getloadavg()
    with ExitStack() as stack:
        servers: dict[str, Server] = {}
        for name in names:
            app = SERVERS[name]
            # The rate-limited server counts in its own memory even where REDIS_URL is set.
            env = base_env(stack.enter_context(workdir(f"bench-stack-{name}-")), {"REDIS_URL": ""})
            if name != "bare":
                migrate(env)
            servers[name] = stack.enter_context(
                gunicorn(
                    env,
                    workers=WORKERS,
                    threads=THREADS,
                    worker_connections=per_worker,
                    app=app,
                    ready_path="/healthz",
                )
            )
        for endpoint, (path, _status, loaded) in endpoints.items():
            answers[endpoint] = {name: fetch(servers[name], path) for name in loaded}
            rounds = interleaved_rounds(
                {name: servers[name] for name in loaded},
                path,
                rounds=args.rounds,
                seconds=args.seconds,
                connections=args.connections,
                label=endpoint,
            )
            for name in loaded:
                rps[endpoint][name] = [r.rps for r in rounds[name]]
                cpu[endpoint][name] = [r.cpu_us for r in rounds[name]]
                non_2xx[endpoint][name] = [(r.non_2xx, r.requests) for r in rounds[name]]
    load_after = os.getloadavg()

    print(
        f"\n{args.rounds} rounds x {args.seconds:g} s per server and endpoint, wrk -t1 -c{args.connections},"
        f" {WORKERS} gthread workers x {THREADS} threads, {per_worker} connections each;"
        f" load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs)\n"
    )
    print("What each server answers (one request before the load):\n")
    print("| endpoint | bare | ours | " + LIMITS_LABEL + " |")
    print("| --- | --- | --- | --- |")
    unexpected = False
    for endpoint, (_path, status, _loaded) in endpoints.items():
        cells = []
        for name in ("bare", "ours", "limits"):
            ans = answers[endpoint].get(name)
            if ans is None:
                cells.append("-")
                continue
            unexpected |= ans.status != status
            cells.append(f"{ans.status} {ans.content_type.split(';')[0]}, {ans.size} B")
        print(f"| {endpoint} | {' | '.join(cells)} |")
    print("\nThroughput (median req/s) and server CPU per request (gunicorn master + workers, all threads):\n")
    print(
        "| endpoint | bare req/s | ours req/s | ratio ours/bare | bare µs CPU | ours µs CPU"
        " | ours - bare µs | CPU ratio bare/ours | per-round range |"
    )
    print("| --- " + "| ---: " * 8 + "|")
    for endpoint, (_path, status, loaded) in endpoints.items():
        r = {name: median(rps[endpoint][name]) for name in loaded}
        c = {name: median(cpu[endpoint][name]) for name in loaded}
        for name in loaded[1:]:
            # Ratios of rounds run back to back (same round number): the spread of the ratio itself.
            paired = sorted(b / o for b, o in zip(cpu[endpoint]["bare"], cpu[endpoint][name], strict=True))
            ratio = r[name] / r["bare"] if r["bare"] else 0.0
            label = endpoint if name == "ours" else f"{endpoint}, {LIMITS_LABEL}"
            print(
                f"| {label} | {r['bare']:.0f} | {r[name]:.0f} | {ratio:.3f} | {c['bare']:.0f} | {c[name]:.0f}"
                f" | {c[name] - c['bare']:.0f} | {c['bare'] / c[name]:.3f} | {paired[0]:.2f}-{paired[-1]:.2f} |"
            )
        for name in loaded:  # every response of a run must be in the class of the status checked above
            runs = non_2xx[endpoint][name]
            total = sum(requests for _, requests in runs)
            off = sum(abs(n - (requests if status >= 300 else 0)) for n, requests in runs)
            if off:
                unexpected = True
                print(f"\n  WARNING: {name} {endpoint}: {off} of {total} responses not in the expected class")
    if unexpected:
        print("\nAn endpoint answered an unexpected status: the comparison above is not like for like.")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
