"""What a flood of rejected requests writes: log lines, bytes and error-event rows per rejected request.

One client floods gunicorn (1 worker, production defaults, rate limits on in memory) at `--factor` times
its limit for `--seconds` (the 429 flood), then sends that rate of 404s for a third of that time, then
401s (a bad token) for `--seconds` at 0.9 times the limit (so that every answer is a 401 on both trees).
Measured from the log files and the SQLite database after gunicorn has stopped gracefully (so everything
buffered is written): lines and bytes per log file, raw `error_events` rows and
the counts in the rollups, each divided by the rejected requests of its phase.

BEFORE is the app at `--baseline` (the commit before issue #14; a temporary `git worktree`), AFTER is this
tree; both run in this one process, one after the other, with the same load. The aggregated security lines
of AFTER must add up (their `count`s) to the 429s served, which the script checks.

Usage: `python -m bench.bench_flood [--seconds 30 --factor 20 --limit 300 --baseline 0419b6e]`.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import ROOT, VENV_BIN, Server, base_env, free_port, stop

#: The main this work started from (before #14): its 429s wrote 3 lines and a row each.
DEFAULT_BASELINE = "0419b6e"
LOGS = ("app.log", "errors.log", "security.log", "performance.log")
PHASES = {  # name: (path, headers, expected status, share of --seconds, rate: times the limit or None = 0.9 x it)
    "429": ("/api/errors/catalog", {}, 429, 1.0, True),
    "404": ("/no/such/page", {}, 404, 1 / 3, True),  # no route: never rate limited
    # Under the limit, so that every answer is a 401 on both trees (the baseline limits /api/me at 300 a minute).
    "401": ("/api/me", {"Authorization": "Bearer not.a.token"}, 401, 1.0, False),
}


@dataclass
class Phase:
    """What one phase sent and what it left behind."""

    sent: int = 0
    rejected: int = 0
    lines: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    counted: int = 0  # the phase's code in the rollups (error_code_minutes)
    security_count_sum: int = 0  # sum of `count` (1 per line when the field is absent) of its security lines


@contextmanager
def tree_at(ref: str) -> Iterator[Path]:
    """A detached worktree of `ref` in a temporary folder (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="oriel-flood-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=ROOT, check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)


@contextmanager
def serve(tree: Path, env: dict[str, str]) -> Iterator[Server]:
    """gunicorn of `tree` (1 gthread worker x 4 threads) on a free loopback port."""
    subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=tree, env=env, check=True, capture_output=True
    )
    port = free_port()
    args = [str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"]
    args += ["--worker-class", "gthread", "--graceful-timeout", "15", "--log-level", "warning", "wsgi:app"]
    process = subprocess.Popen(args, cwd=tree, env=env, start_new_session=True)
    server = Server(port=port, process=process, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(server.url("/api/errors/catalog"), timeout=2):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.1)
        yield server
    finally:
        stop(server)


def flood(server: Server, path: str, headers: dict[str, str], rate: float, seconds: float) -> Counter[int]:
    """One client sending `rate` requests a second for `seconds` (paced, one connection); statuses seen."""
    import http.client

    statuses: Counter[int] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < seconds:
        due = start + n / rate
        if due > now:
            time.sleep(due - now)
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        answer.read()
        statuses[answer.status] += 1
        n += 1
    conn.close()
    return statuses


def snapshot(log_dir: Path) -> dict[str, tuple[int, int]]:
    """(lines, bytes) of each log file now."""
    out = {}
    for name in LOGS:
        path = log_dir / name
        data = path.read_bytes() if path.exists() else b""
        out[name] = (data.count(b"\n"), len(data))
    return out


def run_variant(tree: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Phase]:
    """Flood one tree phase by phase; each phase on a fresh server so its lines and rows are its own."""
    results: dict[str, Phase] = {}
    for name, (path, headers, status, share, flood_rate) in PHASES.items():
        rate = (args.factor if flood_rate else 0.9) * args.limit / 60.0
        folder = workdir / name
        folder.mkdir(parents=True)
        env = base_env(
            folder,
            {
                "RATELIMIT_ENABLED": "true",
                "RATELIMIT_DEFAULT": f"{args.limit} per minute",
                "PYTHONPATH": str(tree),
                "REJECTION_LOG_INTERVAL_SECONDS": "10",
            },
        )
        phase = Phase()
        with serve(tree, env) as server:
            time.sleep(1.0)  # start-up lines written
            before = snapshot(Path(env["LOG_DIR"]))
            statuses = flood(server, path, headers, rate, args.seconds * share)
        after = snapshot(Path(env["LOG_DIR"]))  # gunicorn stopped: every buffered line and event is written
        phase.sent = sum(statuses.values())
        phase.rejected = statuses[status]
        for log in LOGS:
            phase.lines[log] = after[log][0] - before[log][0]
            phase.bytes[log] = after[log][1] - before[log][1]
        with sqlite3.connect(folder / "bench.db") as db:  # a fresh database per phase: every row is the phase's
            phase.rows = db.execute("SELECT count(*) FROM error_events").fetchone()[0]
            phase.counted = db.execute("SELECT coalesce(sum(count), 0) FROM error_code_minutes").fetchone()[0]
        event = {"429": "rate_limit_exceeded", "401": "token_rejected"}.get(name)
        if event:
            for line in (Path(env["LOG_DIR"]) / "security.log").read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if record.get("event_type") == event:
                    phase.security_count_sum += int(record.get("count", 1))
        results[name] = phase
        print(
            f"{tree.name:28} {name}: sent {phase.sent}, rejected {phase.rejected}, lines {dict(phase.lines)}",
            file=sys.stderr,
        )
    return results


def per(value: float, rejected: int) -> str:
    """`value` per rejected request, 3 decimals."""
    return f"{value / rejected:.3f}" if rejected else "-"


def report(variants: dict[str, dict[str, Phase]], args: argparse.Namespace) -> None:
    """Print the markdown tables."""
    print(f"## Flood: one client at {args.factor:g}x its limit ({args.limit}/min): {args.seconds:g} s of 429s,")
    print(f"{args.seconds / 3:g} s of 404s at that rate, {args.seconds:g} s of 401s at 0.9x the limit")
    print("(gunicorn 1 worker x 4 threads; per rejected request: lines and bytes of all four logs, raw rows)\n")
    print(
        "| phase | variant | rejected | app.log | security.log | performance.log | errors.log | lines / rejected "
        "| bytes / rejected | error_events rows / rejected | counted in rollups | security `count` sum |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for phase_name in PHASES:
        for variant, phases in variants.items():
            p = phases[phase_name]
            lines = sum(p.lines.values())
            print(
                f"| {phase_name} | {variant} | {p.rejected} | {per(p.lines['app.log'], p.rejected)} | "
                f"{per(p.lines['security.log'], p.rejected)} | {per(p.lines['performance.log'], p.rejected)} | "
                f"{per(p.lines['errors.log'], p.rejected)} | {per(lines, p.rejected)} | "
                f"{per(sum(p.bytes.values()), p.rejected)} | {per(p.rows, p.rejected)} | {p.counted} | "
                f"{p.security_count_sum if phase_name != '404' else '-'} |"
            )
    print()


def main() -> None:
    """Run BEFORE and AFTER and print the report; exit 1 if AFTER's aggregated counts do not add up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--factor", type=float, default=20.0, help="times the client's limit it sends")
    # 300 a minute is the app's default limit: the baseline cannot read RATELIMIT_DEFAULT from the environment
    # (that came with #14), so only the default compares like for like.
    parser.add_argument("--limit", type=int, default=300, help="the default limit, requests per minute")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref of BEFORE ('' to skip it)")
    args = parser.parse_args()
    variants: dict[str, dict[str, Phase]] = {}
    with tempfile.TemporaryDirectory(prefix="oriel-flood-") as tmp:
        if args.baseline:
            with tree_at(args.baseline) as before_tree:
                variants[f"before ({args.baseline})"] = run_variant(before_tree, Path(tmp) / "before", args)
        variants["after"] = run_variant(ROOT, Path(tmp) / "after", args)
    report(variants, args)
    after = variants["after"]
    for name in ("429", "401"):
        if after[name].security_count_sum != after[name].rejected:
            print(f"AFTER {name}: security counts {after[name].security_count_sum} != {after[name].rejected} served")
            sys.exit(1)


if __name__ == "__main__":
    main()
