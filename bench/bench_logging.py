"""Requests/s with the full logging and statistics stack on versus off, under gunicorn, same run.

ON  = the production defaults: LOG_LEVEL=INFO, one performance.log line per request, error stats.
OFF = LOG_LEVEL=CRITICAL, REQUEST_LOGGING_ENABLED=false, ERROR_STATS_ENABLED=false.

Both servers run side by side on loopback (2 gthread workers each, each taking at most its share of
the connections); wrk loads one at a time, alternating ON/OFF rounds so drift on a shared machine
hits both equally. The ratio is
median(ON) / median(OFF) per endpoint. Usage: `python -m bench.bench_logging [--seconds 5 --rounds 5]`.
It also reports server CPU per request: when other jobs share the machine, req/s swings by 2-3x
between rounds while CPU per request stays put, and OFF/ON CPU is the throughput ratio a
CPU-bound server would see.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

from bench.harness import base_env, gunicorn, interleaved_rounds, median, migrate, workdir, wrk_available

# gthread workers accept greedily: uncapped, one worker often took all of wrk's connections, and that
# round measured one overloaded worker (req/s halved, CPU per request up by half, either mode). Each
# worker is capped at its share of the connections (--worker-connections), as a balancer would split them.
WORKERS = 2
ENDPOINTS = {
    "200 GET /api/errors/catalog": ("/api/errors/catalog", 0.90),
    "401 GET /api/me (no token)": ("/api/me", 0.85),
}
MODES = {
    "on": {"LOG_LEVEL": "INFO", "REQUEST_LOGGING_ENABLED": "true", "ERROR_STATS_ENABLED": "true"},
    "off": {"LOG_LEVEL": "CRITICAL", "REQUEST_LOGGING_ENABLED": "false", "ERROR_STATS_ENABLED": "false"},
}
# With --breakdown: each half of the stack alone, to see which one costs what.
BREAKDOWN = {
    "logs only": {"LOG_LEVEL": "INFO", "REQUEST_LOGGING_ENABLED": "true", "ERROR_STATS_ENABLED": "false"},
    "stats only": {"LOG_LEVEL": "CRITICAL", "REQUEST_LOGGING_ENABLED": "false", "ERROR_STATS_ENABLED": "true"},
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table (exit 1 on a missed target with --strict)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per mode and endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--breakdown", action="store_true", help="also run logs-only and stats-only servers")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target ratio is missed")
    parser.add_argument("--only", default="", help="run only the endpoints whose label contains this (e.g. 401)")
    args = parser.parse_args(argv)
    endpoints = {label: spec for label, spec in ENDPOINTS.items() if args.only in label}
    if not wrk_available():
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    modes = {**MODES, **(BREAKDOWN if args.breakdown else {})}
    names = list(modes)
    results: dict[str, dict[str, list[float]]] = {ep: {m: [] for m in names} for ep in endpoints}
    # Server CPU per request: far steadier than req/s on a machine other jobs share.
    cpu: dict[str, dict[str, list[float]]] = {ep: {m: [] for m in names} for ep in endpoints}
    with ExitStack() as stack:
        servers = {}
        for mode, settings in modes.items():
            env = base_env(stack.enter_context(workdir(f"bench-log-{mode.replace(' ', '-')}-")), settings)
            migrate(env)
            servers[mode] = stack.enter_context(
                gunicorn(env, workers=WORKERS, worker_connections=max(1, args.connections // WORKERS))
            )
        for endpoint, (path, _target) in endpoints.items():
            rounds = interleaved_rounds(
                servers, path, rounds=args.rounds, seconds=args.seconds, connections=args.connections, label=endpoint
            )
            for mode in names:
                results[endpoint][mode] = [r.rps for r in rounds[mode]]
                cpu[endpoint][mode] = [r.cpu_us for r in rounds[mode]]
        log_lines = _count_lines(servers["on"].log_dir)

    print(
        f"\n{args.rounds} rounds x {args.seconds:g} s per mode, wrk -c{args.connections},"
        f" {WORKERS} gthread workers x 4 threads, {max(1, args.connections // WORKERS)} connections each\n"
    )
    extra_cols = [m for m in names if m not in ("on", "off")]
    head = "| endpoint | ON req/s | OFF req/s | " + "".join(f"{m} req/s | " for m in extra_cols)
    print(head + "ratio ON/OFF | target | met |")
    print("| --- " + "| ---: " * (4 + len(extra_cols)) + "| --- |")
    missed = False
    for endpoint, (_path, target) in endpoints.items():
        med = {m: median(results[endpoint][m]) for m in names}
        ratio = med["on"] / med["off"] if med["off"] else 0.0
        missed |= ratio < target
        cols = "".join(f"{med[m]:.0f} | " for m in extra_cols)
        met = "yes" if ratio >= target else "NO"
        print(f"| {endpoint} | {med['on']:.0f} | {med['off']:.0f} | {cols}{ratio:.3f} | {target:.2f} | {met} |")
    print("\nServer CPU per request (gunicorn master + workers, all threads), median:\n")
    print("| endpoint | " + "".join(f"{m} µs | " for m in names) + "CPU ratio OFF/ON | per-round range |")
    print("| --- " + "| ---: " * (len(names) + 2) + "|")
    for endpoint in endpoints:
        med = {m: median(cpu[endpoint][m]) for m in names}
        cols = "".join(f"{med[m]:.0f} | " for m in names)
        # Ratios of rounds run back to back (same round number), to show the spread of the ratio itself.
        paired = sorted(off / on for on, off in zip(cpu[endpoint]["on"], cpu[endpoint]["off"], strict=True))
        print(f"| {endpoint} | {cols}{med['off'] / med['on']:.3f} | {paired[0]:.2f}-{paired[-1]:.2f} |")
    print(f"\nLines written by the ON server: {log_lines}")
    return 1 if missed and args.strict else 0


def _count_lines(log_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in sorted(log_dir.glob("*.log*")):
        with path.open("rb") as fh:
            counts[path.name] = sum(1 for _ in fh)
    return counts


if __name__ == "__main__":
    sys.exit(main())
