"""Log lines per second written by the real logging configuration, one process and four at once.

The configuration is `backend.logging_config.configure_logging` as the app calls it: JSON lines,
concurrent-log-handler sinks (a cross-process lock around every batch and rotation), a bounded queue
(`queue_size`, default 100,000) drained by one writer thread per process. A caller faster than the
writer fills the queue; further lines are dropped and counted (`sink_status()["queue_dropped"]`), never
waited for. So each figure below says how many lines were called, written and dropped.

1. One process, for `log_performance_metric` (the per-request performance.log line, with a request's
   log context bound) and for plain `logging.getLogger(...).info` (app.log):
   - burst: N lines, fewer than the queue holds, as fast as possible; timed from the first call until
     `flush_logs()` returns (every line on disk). Also the caller's cost per call (thread CPU and wall).
   - overflow: more lines than the queue holds, as fast as possible: lines are dropped (and counted)
     only if the caller outruns the writer by more than the queue over the run, which depends on how
     the two threads share the GIL: a row with 0 dropped means the writer kept up.
   - sustained: the caller waits (1 ms sleeps) whenever the queue holds `--pace-depth` lines or more,
     so nothing is dropped: the writer's steady rate, rotations included.
   Files rotate at the production size (10 MiB); the backup count is raised so no line is deleted.
2. Four processes (spawned, each with its own writer) at once on the same LOG_DIR, rotating at a small
   size (`--max-bytes`, 1 MiB), burst and sustained: aggregate lines/s from the first process's first
   call to the last process's `flush_logs()` return.

Every run is verified by reading the files back: each line parses as JSON, every line called and not
dropped is found exactly once (by its sequence number), and written + dropped = called. A mismatch
exits 1. Nothing listens on a network port. Usage:
`python -m bench.bench_log_throughput [--lines 50000 --overflow 300000 --sustained 200000]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import queue
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.logging_config import (
    PERFORMANCE_LOGGER,
    configure_logging,
    flush_logs,
    log_context,
    log_performance_metric,
    shutdown_logging,
    sink_status,
)

PRODUCTION_MAX_BYTES = 10 * 1024 * 1024  # configure_logging's default (LOG_MAX_BYTES)
BACKUP_COUNT = 100_000  # never reached: rotation renames only the backups that exist, none is deleted
PACE_EVERY = 256  # calls between two looks at the queue depth in a paced run
PLAIN_LOGGER = "bench.log_throughput"
_PLAIN_SEQ = re.compile(r"^bench line (\d+)$")
# A request's log context, so the lines are as long as the app's per-request lines.
REQUEST_CONTEXT = {
    "request_id": "0192f5a8-7c1e-7d43-9a3b-5f2e8c1d4b6a",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "method": "GET",
    "path": "/api/errors/catalog",
    "endpoint": "errors.catalog",
    "remote_addr": "127.0.0.1",
}


@dataclass
class RunResult:
    """One timed run in one process."""

    called: int
    dropped: int  # queue drops plus sink drops
    start: float  # time.time() of the first call
    end: float  # time.time() when flush_logs() returned
    caller_cpu: float  # thread CPU seconds of the calling loop
    caller_wall: float  # wall seconds of the calling loop
    process_cpu: float  # CPU seconds of the whole process (caller + writer) until flushed
    flushed: bool  # the queue was empty when flush_logs() returned


@dataclass
class Check:
    """What reading a run's lines back found."""

    files: int
    rotated: int
    found: int
    torn: int
    stray: int
    duplicates: int
    missing: int

    def problems(self, called: int, dropped: int) -> list[str]:
        """Every way the files disagree with the calls (empty: each line written exactly once)."""
        out = []
        if self.torn:
            out.append(f"{self.torn} lines not JSON")
        if self.stray:
            out.append(f"{self.stray} lines never called")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicates")
        if self.missing:
            out.append(f"{self.missing} missing")
        if self.found + dropped != called:
            out.append(f"found {self.found} + dropped {dropped} != called {called}")
        return out


def perf_call(n: int) -> None:
    """The per-request performance line, as `request_metrics` writes it."""
    log_performance_metric("request", 1.234, status=200, endpoint="errors.catalog", seq=n)


def plain_call(n: int) -> None:
    """A plain stdlib logging call with a lazy argument."""
    logging.getLogger(PLAIN_LOGGER).info("bench line %d", n)


CALLS: dict[str, tuple[Callable[[int], None], str]] = {
    "log_performance_metric": (perf_call, "performance.log"),
    "logger.info": (plain_call, "app.log"),
}


def dropped_now() -> int:
    """Lines dropped so far in this process: by the full queue and by failing sinks."""
    status = sink_status()
    return int(status["queue_dropped"]) + sum(int(s["dropped"]) for s in status["sinks"])


def timed_run(call: Callable[[int], None], first: int, count: int, pace_depth: int | None) -> RunResult:
    """Call `count` times (paced by queue depth when `pace_depth` is set), then flush; time it all."""
    dropped_before = dropped_now()
    process_before = time.process_time()
    start, wall0, cpu0 = time.time(), time.perf_counter(), time.thread_time()
    with log_context(**REQUEST_CONTEXT):
        if pace_depth is None:
            for n in range(first, first + count):
                call(n)
        else:
            for n in range(first, first + count):
                if n % PACE_EVERY == 0:
                    while sink_status()["queue_depth"] >= pace_depth:
                        time.sleep(0.001)
                call(n)
    caller_cpu, caller_wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    flush_logs(timeout=600)
    end = time.time()
    status = sink_status()
    return RunResult(
        called=count,
        dropped=dropped_now() - dropped_before,
        start=start,
        end=end,
        caller_cpu=caller_cpu,
        caller_wall=caller_wall,
        process_cpu=time.process_time() - process_before,
        flushed=status["queue_depth"] == 0,
    )


def read_back(log_dir: Path, stem: str, expected: set[tuple[int, int]], dropped: int) -> Check:
    """Parse every line of `stem` and its rotations; count torn, duplicate and missing lines."""
    paths = [p for p in sorted(log_dir.glob(f"{stem}*")) if ".rotate." not in p.name]
    seen: Counter[tuple[int, int]] = Counter()
    torn = 0
    for path in paths:
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            torn += 1  # the file ends mid-line
        for raw in data.splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                torn += 1
                continue
            key = _line_key(record)
            if key is not None:
                seen[key] += 1
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    stray = sum(c for key, c in seen.items() if key not in expected)
    missing = len(expected - seen.keys()) - dropped  # which lines a full queue dropped is not known
    return Check(
        files=len(paths),
        rotated=len(paths) - 1,
        found=sum(c for key, c in seen.items() if key in expected),
        torn=torn,
        stray=stray,
        duplicates=duplicates,
        missing=max(0, missing),
    )


def _line_key(record: dict[str, Any]) -> tuple[int, int] | None:
    """(writer pid, sequence number) of one of our lines, None for any other line."""
    if record.get("logger") == PERFORMANCE_LOGGER and "seq" in record:
        return int(record["pid"]), int(record["seq"])
    if record.get("logger") == PLAIN_LOGGER:
        match = _PLAIN_SEQ.match(str(record.get("message", "")))
        if match:
            return int(record["pid"]), int(match.group(1))
    return None


# --- 1. one process -------------------------------------------------------------------------------


def single_process(args: argparse.Namespace) -> tuple[list[str], bool]:
    """Run burst, overflow and sustained for each call kind; Markdown rows and whether all checked out."""
    rows, ok = [], True
    _warm_up()
    runs = [
        ("burst", args.lines, None),
        ("overflow", args.overflow, None),
        ("sustained", args.sustained, args.pace_depth),
    ]
    for label, (call, stem) in CALLS.items():
        for run, count, pace in runs:
            if count <= 0:
                continue
            log_dir = Path(tempfile.mkdtemp(prefix="bench-logtp-"))
            try:
                configure_logging(
                    log_dir,
                    level="INFO",
                    max_bytes=PRODUCTION_MAX_BYTES,
                    backup_count=BACKUP_COUNT,
                    queue_size=args.queue_size,
                )
                res = timed_run(call, 0, count, pace)
                shutdown_logging()
                expected = {(os.getpid(), n) for n in range(count)}
                check = read_back(log_dir, stem, expected, res.dropped)
            finally:
                shutdown_logging()
                shutil.rmtree(log_dir, ignore_errors=True)
            problems = check.problems(res.called, res.dropped)
            if not res.flushed:
                problems.append("flush_logs() timed out")
            if pace is not None and res.dropped:
                problems.append("drops in a paced run")
            ok &= not problems
            wall = res.end - res.start
            rows.append(
                f"| {label} | {run} | {res.called:,} | {check.found:,} | {res.dropped:,} | {wall:.2f}"
                f" | {check.found / wall:,.0f} | {res.caller_cpu / count * 1e6:.1f}"
                f" | {res.caller_wall / count * 1e6:.1f}"
                f" | {res.process_cpu / max(1, check.found) * 1e6:.1f} | {check.rotated}"
                f" | {'; '.join(problems) or 'each once, all JSON'} |"
            )
            print(f"  {rows[-1]}", file=sys.stderr)
    return rows, ok


def _warm_up() -> None:
    """Log a few thousand lines of each kind once, so the first timed run pays no first-call costs."""
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logtp-warm-"))
    try:
        configure_logging(log_dir, level="INFO")
        with log_context(**REQUEST_CONTEXT):
            for n in range(2_000):
                perf_call(n)
                plain_call(n)
        flush_logs(timeout=60)
    finally:
        shutdown_logging()
        shutil.rmtree(log_dir, ignore_errors=True)


# --- 2. several processes on one LOG_DIR -----------------------------------------------------------


def _child(log_dir: str, count: int, pace: int | None, settings: dict[str, int], barrier: Any, results: Any) -> None:
    """One process: the real logging set-up, wait for the others, then a timed run."""
    configure_logging(log_dir, level="INFO", **settings)
    barrier.wait(timeout=120)
    res = timed_run(perf_call, 0, count, pace)
    shutdown_logging()
    results.put((os.getpid(), res))


def multi_process(args: argparse.Namespace) -> tuple[list[str], bool]:
    """Burst and sustained runs of `--processes` processes on one directory; rows and whether all checked out."""
    rows, ok = [], True
    ctx = multiprocessing.get_context("spawn")
    settings = {"max_bytes": args.max_bytes, "backup_count": BACKUP_COUNT, "queue_size": args.queue_size}
    for run, pace in (("burst", None), ("sustained", args.pace_depth)):
        log_dir = Path(tempfile.mkdtemp(prefix="bench-logtp-mp-"))
        try:
            barrier, results = ctx.Barrier(args.processes), ctx.Queue()
            procs = [
                ctx.Process(target=_child, args=(str(log_dir), args.per_process, pace, settings, barrier, results))
                for _ in range(args.processes)
            ]
            for proc in procs:
                proc.start()
            got: dict[int, RunResult] = {}
            deadline = time.monotonic() + args.timeout
            while len(got) < len(procs) and time.monotonic() < deadline:
                try:
                    pid, res = results.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:  # at the deadline: the missing processes are reported below
                    break
                got[pid] = res
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            codes = [proc.exitcode for proc in procs]
            expected = {(pid, n) for pid in got for n in range(args.per_process)}
            dropped = sum(r.dropped for r in got.values())
            check = read_back(log_dir, "performance.log", expected, dropped)
        finally:
            shutil.rmtree(log_dir, ignore_errors=True)
        called = sum(r.called for r in got.values())
        problems = check.problems(called, dropped)
        if len(got) < len(procs) or any(codes):
            problems.append(f"{len(procs) - len(got)} processes did not report (exit codes {codes})")
        if not all(r.flushed for r in got.values()):
            problems.append("flush_logs() timed out")
        if pace is not None and dropped:
            problems.append("drops in a paced run")
        ok &= not problems
        wall = max((r.end for r in got.values()), default=0.0) - min((r.start for r in got.values()), default=0.0)
        each = sorted((r.called - r.dropped) / (r.end - r.start) for r in got.values()) or [0.0]
        cpu = sum(r.caller_cpu for r in got.values()) / max(1, called) * 1e6
        rows.append(
            f"| {run} | {args.processes} | {called:,} | {check.found:,} | {dropped:,} | {wall:.2f}"
            f" | {check.found / wall if wall > 0 else 0:,.0f} | {each[0]:,.0f}-{each[-1]:,.0f} | {cpu:.1f}"
            f" | {check.rotated} | {'; '.join(problems) or 'each once, all JSON'} |"
        )
        print(f"  {rows[-1]}", file=sys.stderr)
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print Markdown tables (exit 1 when a line is lost, torn or written twice)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000, help="lines of a burst (fewer than --queue-size)")
    parser.add_argument("--overflow", type=int, default=300_000, help="lines of the overflowing burst (0: skip)")
    parser.add_argument("--sustained", type=int, default=200_000, help="lines of the paced run (0: skip)")
    parser.add_argument("--queue-size", type=int, default=100_000, help="configure_logging's queue_size")
    parser.add_argument("--pace-depth", type=int, default=10_000, help="a paced caller waits at this queue depth")
    parser.add_argument("--processes", type=int, default=4, help="processes of part 2 (0: skip)")
    parser.add_argument("--per-process", type=int, default=50_000, help="lines per process in part 2")
    parser.add_argument("--max-bytes", type=int, default=1024 * 1024, help="rotation size in part 2")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds part 2 waits for its processes")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    print(f"part 1: one process (pid {os.getpid()})", file=sys.stderr)
    single_rows, single_ok = single_process(args)
    multi_rows: list[str] = []
    multi_ok = True
    if args.processes > 0:
        print(f"part 2: {args.processes} processes", file=sys.stderr)
        multi_rows, multi_ok = multi_process(args)
    load_after = os.getloadavg()

    print(
        f"\nqueue_size {args.queue_size:,}, paced runs wait at a queue depth of {args.pace_depth:,};"
        f" load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs)\n"
    )
    print(
        f"### One process (rotation at {PRODUCTION_MAX_BYTES // 1024 // 1024} MiB): first call to"
        " flush_logs() returning\n"
    )
    print(
        "| call | run | lines called | written | dropped | seconds | written lines/s | caller µs CPU/call"
        " | caller µs wall/call | process µs CPU/line | rotations | check |"
    )
    print("| --- | --- " + "| ---: " * 9 + "| --- |")
    print("\n".join(single_rows))
    if multi_rows:
        print(
            f"\n### {args.processes} processes at once on one LOG_DIR (log_performance_metric, rotation at"
            f" {args.max_bytes / 1024 / 1024:g} MiB)\n"
        )
        print(
            "| run | processes | lines called | written | dropped | seconds | aggregate lines/s"
            " | per-process lines/s | caller µs CPU/call | rotations | check |"
        )
        print("| --- " + "| ---: " * 9 + "| --- |")
        print("\n".join(multi_rows))
    return 0 if single_ok and multi_ok else 1


if __name__ == "__main__":
    sys.exit(main())
