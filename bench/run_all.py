"""Run every benchmark one after another in one run and write one report, `bench/results/<UTC>.md`.

This measures nothing itself: it runs each benchmark script as a child process (its own process
group, bounded by `--timeout`), streams and keeps its stdout, writes its stderr to a side file, and
records the command, exit code, wall time and the load average before and after each one. The report
header says where and on what the figures were made: UTC start and end, git commit and whether the
tree was dirty (and what changed), CPUs, memory, Python and key package versions, wrk, PostgreSQL
and Redis versions. The report is rewritten after every benchmark, so an interrupted run keeps what
it measured. A failing benchmark is recorded and the run goes on; the exit code is 1 if any failed.

Usage: `python -m bench.run_all [--quick] [--only logging,error_stack] [--skip stats]` (`make bench`).
`--quick` passes small sizes to every script that takes them: a smoke run of the orchestrator, not
figures to publish.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
PACKAGES = (
    "Flask",
    "Werkzeug",
    "gunicorn",
    "SQLAlchemy",
    "Flask-SQLAlchemy",
    "Flask-JWT-Extended",
    "Flask-Limiter",
    "python-json-logger",
    "orjson",
    "concurrent-log-handler",
    "tenacity",
    "psycopg",
    "redis",
    "prometheus-client",
    "stripe",
    "imageio-ffmpeg",
)
STDERR_TAIL = 40  # lines of a failed benchmark's stderr quoted in the report


@dataclass(frozen=True)
class Bench:
    """One benchmark: how to start it, its arguments in a full and in a quick run, what it measures."""

    name: str
    script: tuple[str, ...]  # ("-m", "bench.x") or ("bench/x.py",), as the Makefile runs it
    full: tuple[str, ...]
    quick: tuple[str, ...]
    what: str

    def command(self, quick: bool) -> list[str]:
        """The argv to run."""
        return [PY, *self.script, *(self.quick if quick else self.full)]


# In the order of a full run: the gunicorn + wrk benchmarks first, the long in-process ones after.
BENCHES = (
    Bench(
        "logging",
        ("-m", "bench.bench_logging"),
        ("--rounds", "12", "--seconds", "4"),  # 12: the median of a noisy machine settles
        ("--rounds", "2", "--seconds", "1"),
        "req/s and CPU per request, logging + error statistics on vs off (gunicorn, wrk)",
    ),
    Bench(
        "error_stack",
        ("-m", "bench.bench_error_stack"),
        (),
        ("--rounds", "2", "--seconds", "1"),
        "req/s and CPU per request, full app vs bare Flask (gunicorn, wrk)",
    ),
    Bench(
        "request_overhead",
        ("-m", "bench.bench_request_overhead"),
        (),
        ("--requests", "2000", "--rounds", "2"),
        "per-request µs of the app over bare Flask, per hook and layer (in process)",
    ),
    Bench(
        "flood",
        ("-m", "bench.bench_flood"),
        (),
        ("--seconds", "6"),
        "log lines, bytes and error rows per rejected request under a 429/404/401 flood, before vs after #14",
    ),
    Bench(
        "breaker",
        ("bench/bench_breaker.py",),
        (),
        ("--calls", "5000", "--rounds", "3", "--requests", "100"),
        "breaker overhead, concurrency, fail-fast latency of an open breaker",
    ),
    Bench(
        "hung_dependency",
        ("bench/bench_hung_dependency.py",),
        (),
        ("--rounds", "1", "--seconds", "2", "--warmup", "1"),
        "healthy req/s while Stripe hangs, breakers on vs off vs no outage (gunicorn, wrk)",
    ),
    Bench(
        "stats",
        ("bench/bench_stats.py",),
        (),
        ("--events", "20000", "--requests", "30"),
        "error statistics latency at 1M events, SQLite and PostgreSQL",
    ),
    Bench(
        "log_throughput",
        ("-m", "bench.bench_log_throughput"),
        (),
        ("--lines", "10000", "--overflow", "120000", "--sustained", "20000", "--per-process", "5000"),
        "log lines/s, one process and 4 on one LOG_DIR",
    ),
    Bench(
        "jobs",
        ("bench/bench_jobs.py",),
        (),
        ("--jobs", "100", "--leases", "1"),
        "no-op jobs/s (SQLite; Redis + PostgreSQL), wait after a killed worker",
    ),
    Bench(
        "observability",
        ("bench/bench_observability.py",),
        (),
        (),  # takes no options: the quick run is the full one (about a minute)
        "metrics/SLO hook cost, fault-injection check, health with a hung dependency",
    ),
    Bench(
        "rendering",
        ("bench/bench_rendering.py",),
        ("--repeat", "7"),
        ("--repeat", "1"),
        "FFmpeg adapter overhead, speed per resolution, upload check",
    ),
)
NAMES = tuple(b.name for b in BENCHES)


@dataclass
class Outcome:
    """What one benchmark did."""

    bench: Bench
    command: list[str]
    started: datetime
    seconds: float
    returncode: int | None  # None: killed at the timeout
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    stdout: str
    stderr_file: Path
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the benchmark exited 0 within its time."""
        return self.returncode == 0

    def status(self) -> str:
        """A short verdict for the summary table."""
        if self.returncode is None:
            return "**TIMED OUT**"
        return "ok" if self.ok else f"**FAILED (exit {self.returncode})**"


def run(bench: Bench, quick: bool, stderr_dir: Path, timeout: float) -> Outcome:
    """Run one benchmark in its own process group, echoing its stdout; kill the group at the timeout."""
    command = bench.command(quick)
    stderr_file = stderr_dir / f"{bench.name}.txt"
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lines: list[str] = []
    returncode: int | None
    with stderr_file.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
        reader = threading.Thread(target=_tee, args=(proc, lines), daemon=True)
        reader.start()
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            returncode = None
        except KeyboardInterrupt:  # its own session does not see the terminal's Ctrl-C: stop it too
            _kill_group(proc)
            raise
        reader.join(30)  # the pipe closes when the group is gone
    seconds = time.monotonic() - t0
    tail = stderr_file.read_text(encoding="utf-8", errors="replace").splitlines()[-STDERR_TAIL:]
    return Outcome(
        bench=bench,
        command=command,
        started=started,
        seconds=seconds,
        returncode=returncode,
        load_before=load_before,
        load_after=os.getloadavg(),
        stdout="".join(lines),
        stderr_file=stderr_file,
        stderr_tail=tail if returncode != 0 else [],
    )


def _tee(proc: subprocess.Popen[str], lines: list[str]) -> None:
    """Keep the child's stdout lines and echo them as they come (until the pipe closes)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        sys.stdout.write(line)
        sys.stdout.flush()


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Stop a timed-out benchmark and everything it started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(unavailable)"


def _meminfo() -> str:
    fields = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) // 1024
    except (OSError, ValueError):
        return "(unavailable)"
    return f"{fields.get('MemTotal', 0):,} MiB total, {fields.get('MemAvailable', 0):,} MiB available at start"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "(unknown)"


def _versions() -> list[str]:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def _tool_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "(not found)"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "(unknown)"


def _postgres_version() -> str:
    url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return f"PostgreSQL {row[0] if row else '?'}"
    except Exception as exc:  # the header reports an unreachable server, it never fails the run
        return f"PostgreSQL unreachable ({type(exc).__name__})"


def _redis_version() -> str:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        info = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).info("server")
        return f"Redis {info.get('redis_version', '?')}"
    except Exception as exc:  # as above
        return f"Redis unreachable ({type(exc).__name__})"


def environment() -> list[str]:
    """The header lines that say where and on what the figures were made (read once, at the start)."""
    commit = _git("rev-parse", "HEAD")
    # Earlier reports in bench/results are not part of the measured code.
    status = _git("status", "--porcelain", "--untracked-files=normal", "--", ".", ":(exclude)bench/results")
    dirty = [line for line in status.splitlines() if line.strip()] if status != "(unavailable)" else []
    lines = [
        f"- Git commit: `{commit}` ({_git('log', '-1', '--format=%s')[:100]})",
        f"- Working tree: {f'**dirty**, {len(dirty)} changed path(s) listed below' if dirty else 'clean'}",
        f"- Machine: `nproc` = {os.cpu_count()}, {_cpu_model()}; memory {_meminfo()}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()} ({sys.executable})",
        f"- Packages: {', '.join(_versions())}",
        f"- Tools and servers: {_tool_version(['wrk', '-v'])}; {_postgres_version()}; {_redis_version()}",
    ]
    if dirty:
        shown = dirty[:50]
        lines += ["", "```", *shown, *(["... and more"] if len(dirty) > len(shown) else []), "```"]
    return lines


def render(
    started: datetime,
    ended: datetime | None,
    argv: list[str],
    env_lines: list[str],
    outcomes: list[Outcome],
    pending: list[Bench],
) -> str:
    """The whole report as Markdown."""
    stamp = "%Y-%m-%d %H:%M:%S UTC"
    out = [
        f"# Benchmark run {started.strftime(stamp)}",
        "",
        f"- Started: {started.strftime(stamp)}",
        f"- Ended: {ended.strftime(stamp) if ended else '(still running, or interrupted)'}",
        f"- Command: `python -m bench.run_all {' '.join(argv)}`".rstrip(),
        *env_lines,
        "",
        "## Summary",
        "",
        "| benchmark | status | wall time | load average before (1/5/15 min) | after |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for o in outcomes:
        out.append(
            f"| {o.bench.name} | {o.status()} | {_duration(o.seconds)} | {_load(o.load_before)}"
            f" | {_load(o.load_after)} |"
        )
    out += [f"| {b.name} | not run yet | | | |" for b in pending]
    for o in outcomes:
        out += [
            "",
            f"## {o.bench.name}: {o.bench.what}",
            "",
            f"- Command: `{' '.join(_shown(arg) for arg in o.command)}`",
            f"- Started {o.started.strftime(stamp)}, wall time {_duration(o.seconds)}, {o.status()}",
            f"- Load average before {_load(o.load_before)}, after {_load(o.load_after)}",
            f"- stderr (next to this report): `{o.stderr_file.parent.name}/{o.stderr_file.name}`",
            "",
            "Output (stdout):",
            "",
            "````text",
            o.stdout.rstrip("\n") or "(no output)",
            "````",
        ]
        if o.stderr_tail:
            out += ["", f"Last {len(o.stderr_tail)} lines of stderr:", "", "````text", *o.stderr_tail, "````"]
    return "\n".join(out) + "\n"


def _shown(arg: str) -> str:
    return "python" if arg == PY else arg


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write the report (exit 1 when any failed, 2 on bad options)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(NAMES)}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to publish")
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds per benchmark (default 3600; quick 900)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder of the report")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    only = [n for n in args.only.split(",") if n]
    skip = [n for n in args.skip.split(",") if n]
    unknown = sorted(set(only + skip) - set(NAMES))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(NAMES)}", file=sys.stderr)
        return 2
    selected = [b for b in BENCHES if (not only or b.name in only) and b.name not in skip]
    timeout = args.timeout or (900.0 if args.quick else 3600.0)

    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    args.output.mkdir(parents=True, exist_ok=True)
    report = args.output / f"{stamp}.md"
    stderr_dir = args.output / f"{stamp}-stderr"
    stderr_dir.mkdir(exist_ok=True)
    env_lines = environment()
    outcomes: list[Outcome] = []
    report.write_text(render(started, None, raw, env_lines, outcomes, selected), encoding="utf-8")
    print(f"report: {report}", flush=True)
    for index, bench in enumerate(selected):
        print(f"\n===== {bench.name}: {' '.join(_shown(a) for a in bench.command(args.quick))}", flush=True)
        try:
            outcome = run(bench, args.quick, stderr_dir, timeout)
        except KeyboardInterrupt:
            print(f"\ninterrupted during {bench.name}; the report keeps the benchmarks before it: {report}")
            return 130
        outcomes.append(outcome)
        print(f"===== {bench.name}: {outcome.status()} in {_duration(outcome.seconds)}", flush=True)
        report.write_text(render(started, None, raw, env_lines, outcomes, selected[index + 1 :]), encoding="utf-8")
    report.write_text(render(started, datetime.now(UTC), raw, env_lines, outcomes, []), encoding="utf-8")
    failed = [o.bench.name for o in outcomes if not o.ok]
    print(f"\nreport: {report}" + (f"\nFAILED: {', '.join(failed)}" if failed else "\nall benchmarks ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
