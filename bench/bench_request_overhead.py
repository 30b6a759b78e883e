"""Where the app's per-request overhead over bare Flask goes: µs per hook and per layer, in process.

No server and no sockets: the WSGI callable is called with a prepared environ (what gunicorn hands
it for `GET <path>` from wrk), its body consumed and closed, many times in a row, on one thread.
Three figures per endpoint and app (bare Flask = `bench/bare_app.py`; ours = `create_app` with the
production defaults of `harness.base_env`, a migrated SQLite file, rate limits off; and ours with
rate limits on in memory, a limit nothing reaches):

- the request thread's CPU per request (`time.thread_time`), median over rounds;
- the process's CPU per request including the writer threads (log lines, error events, SLO counts),
  read after those threads have written everything the requests queued;
- a breakdown: every hook function Flask calls (before/after/teardown request, teardown app context,
  request observers, error handlers, `error_occurred` receivers) and the parts inside them (request
  id, trace context, log context, the performance.log call, the envelope and catalog look-up, the
  error capture) wrapped in `perf_counter_ns` timers, in a separate run so the timers do not touch
  the totals. A part's time is included in its hook's. "Flask and the rest" is what the timers do
  not cover: the difference of the totals minus the timed hooks (a bigger URL map, more hooks for
  Flask to look up and call, the response's extra header...).

Under gunicorn each µs here costs about the same again in the server (more bytes written, GIL
hand-offs between request threads): `bench_error_stack.py` has the req/s ratios. Usage:
`python -m bench.bench_request_overhead [--requests 20000 --rounds 5 --only 404]`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import os
import statistics
import sys
import tempfile
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import base_env, migrate

ENDPOINTS = {
    "200 GET /healthz": "/healthz",
    "404 GET /no/such/page": "/no/such/page",
    "401 GET /api/me (no token)": "/api/me",
}
# A limit no benchmark reaches: the limiter's work is done on every request, nothing is rejected.
HIGH_LIMIT = "100000000 per minute"


def environ_for(path: str) -> dict[str, Any]:
    """The WSGI environ gunicorn builds for `GET <path>` from wrk (its three headers, no body)."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "RAW_URI": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def call(app: Callable[..., Any], path: str) -> int:
    """One request through the WSGI callable; the body's length."""
    body = app(environ_for(path), _start_response)
    size = sum(len(chunk) for chunk in body)
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return size


class Timers:
    """perf_counter_ns totals by name; `wrap` puts a timer around a callable."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """`func` timed under `name` (keeps `__name__`, so Flask and blinker see a plain function)."""
        ns, calls, clock = self.ns, self.calls, time.perf_counter_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return func(*args, **kwargs)
            finally:
                ns[name] += clock() - start
                calls[name] += 1

        timed.__name__ = getattr(func, "__name__", name)
        timed.__qualname__ = getattr(func, "__qualname__", name)
        return timed

    def reset(self) -> None:
        """Forget what was timed (after the warm-up)."""
        self.ns.clear()
        self.calls.clear()


def _label(func: Any) -> str:
    target = getattr(func, "func", func)  # functools.partial
    module = getattr(target, "__module__", "") or ""
    return f"{module.rsplit('.', 1)[-1]}.{getattr(target, '__qualname__', repr(target))}"


# Parts inside the hooks, by (module, global name): timed where the hook looks them up.
PARTS = (
    ("backend.app.edge.request_context", "get_request_id", "request id (get_request_id)"),
    ("backend.app.request_id", "new_request_id", "request id (new_request_id)"),
    ("backend.app.edge.request_context", "bind_cleaned_log_context", "log context (bind_cleaned_log_context)"),
    ("backend.app.edge.request_context", "clean_text", "log context (clean_text)"),
    ("backend.app.edge.request_context", "parse_traceparent", "trace context (parse_traceparent)"),
    ("backend.app.edge.request_context", "bind_log_context", "log context (bind_log_context)"),
    ("backend.app.edge.request_context", "clear_log_context", "log context (clear_log_context)"),
    ("backend.app.edge.request_metrics", "log_performance_metric", "performance.log line (request thread)"),
    ("backend.app.error_handlers", "error_response", "error response (envelope + log + signal)"),
    ("backend.app.error_handlers", "envelope", "envelope body"),
    ("backend.app.error_handlers", "lookup", "catalog look-up"),
    ("backend.app.error_handlers", "from_http_exception", "HTTP error to APIError"),
    ("backend.app.error_handlers", "_log_error", "error log call"),
    ("backend.app.monitoring.errors", "capture_error", "error capture (capture_error)"),
)
PART_LABELS = frozenset(label for _module, _name, label in PARTS)


def instrument(app: Any, timers: Timers) -> None:
    """Put timers around every hook of `app` and the parts in `PARTS` (this process only)."""
    from backend.app.signals import error_occurred, request_finished

    for attr, prefix in (
        ("before_request_funcs", "before_request"),
        ("after_request_funcs", "after_request"),
        ("teardown_request_funcs", "teardown_request"),
    ):
        for funcs in getattr(app, attr).values():
            funcs[:] = [timers.wrap(f"{prefix} {_label(f)}", f) for f in funcs]
    app.teardown_appcontext_funcs[:] = [
        timers.wrap(f"teardown_appcontext {_label(f)}", f) for f in app.teardown_appcontext_funcs
    ]
    observers = request_finished.receivers(app)
    if observers:
        observers[:] = [timers.wrap(f"request observer {_label(f)}", f) for f in observers]
    for by_code in app.error_handler_spec.values():
        for handlers in by_code.values():
            for cls, handler in list(handlers.items()):
                handlers[cls] = timers.wrap(f"error handler {_label(handler)}", handler)
    for endpoint, view in list(app.view_functions.items()):
        app.view_functions[endpoint] = timers.wrap(f"view {endpoint}", view)
    for receiver in {id(r): r for r in _receivers(error_occurred, app)}.values():
        # Connected per app: only this app's sends reach the timed copy.
        error_occurred.disconnect(receiver, sender=app)
        timed = timers.wrap(f"error_occurred receiver {_label(receiver)}", receiver)
        error_occurred.connect(timed, sender=app, weak=False)


def instrument_parts(timers: Timers) -> None:
    """Put timers around the parts in `PARTS` (module globals: once per process, for every app)."""
    for module_name, name, label in PARTS:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            setattr(module, name, timers.wrap(label, getattr(module, name)))


def _receivers(signal: Any, sender: Any) -> list[Any]:
    """The receivers connected to `signal` for `sender` (blinker keeps weak or strong references)."""
    found = []
    for receiver_id in signal._by_sender.get(id(sender), ()):
        ref = signal.receivers.get(receiver_id)
        receiver = ref() if isinstance(ref, weakref.ref) else ref
        if receiver is not None:
            found.append(receiver)
    return found


def build(kind: str, folder: Path) -> Any:
    """The WSGI app of `kind`: "bare", "ours" or "ours+limits"."""
    if kind == "bare":
        from bench.bare_app import app as bare

        return bare
    from backend.app import create_app
    from config import load_config

    limits = kind == "ours+limits"
    env = base_env(folder, {"RATELIMIT_ENABLED": "true"} if limits else None)
    migrate(env)
    return create_app(load_config(env), **({"RATELIMIT_DEFAULT": HIGH_LIMIT} if limits else {}))


def settle(apps: dict[str, Any]) -> None:
    """Let the writer threads write everything queued so far (log lines, error events, SLO counts)."""
    from backend.app.monitoring import flush_error_stats
    from backend.logging_config import flush_logs

    flush_logs()
    for name, app in apps.items():
        if name != "bare":
            flush_error_stats(app)
            counter = app.extensions.get("slo_counter")
            if counter is not None:
                counter.flush()


def measure(app: Any, path: str, n: int, apps: dict[str, Any]) -> tuple[float, float]:
    """(request thread µs, process µs) per request over `n` requests, writers settled after."""
    settle(apps)
    gc.collect()
    thread0, process0 = time.thread_time_ns(), time.process_time_ns()
    for _ in range(n):
        call(app, path)
    thread1 = time.thread_time_ns()
    settle(apps)
    process1 = time.process_time_ns()
    return (thread1 - thread0) / n / 1000, (process1 - process0) / n / 1000


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Keep the apps' start-up warnings out of the tables."""
    saved = sys.stderr
    sys.stderr = io.StringIO()
    try:
        yield
    finally:
        sys.stderr = saved


def wrapper_cost_ns(n: int = 200_000) -> float:
    """What one timer costs around a no-op (subtracted from nothing; quoted with the breakdown)."""
    timers = Timers()
    timed = timers.wrap("noop", lambda: None)
    start = time.perf_counter_ns()
    for _ in range(n):
        timed()
    return (time.perf_counter_ns() - start) / n


def main(argv: list[str] | None = None) -> int:
    """Print the totals and the per-hook breakdown as Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="only the endpoints whose label contains this")
    parser.add_argument("--no-limits", action="store_true", help="leave out the rate-limited app")
    args = parser.parse_args(argv)
    endpoints = {label: path for label, path in ENDPOINTS.items() if args.only in label}
    kinds = ["bare", "ours"] + ([] if args.no_limits else ["ours+limits"])
    folder = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    with quiet_stderr():
        apps = {kind: build(kind, folder / kind.replace("+", "-")) for kind in kinds}
    warm = min(2000, args.requests)
    totals: dict[str, dict[str, tuple[float, float]]] = {}
    for label, path in endpoints.items():
        for app in apps.values():
            for _ in range(warm):
                call(app, path)
        runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
        for rnd in range(args.rounds):  # interleaved, order rotating: drift hits every app alike
            order = kinds[rnd % len(kinds) :] + kinds[: rnd % len(kinds)]
            for kind in order:
                runs[kind].append(measure(apps[kind], path, args.requests, apps))
        totals[label] = {
            kind: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
            for kind, rs in runs.items()
        }

    print(
        f"\n{args.rounds} rounds x {args.requests} requests per app and endpoint, in process, one thread;"
        f" load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)\n"
    )
    print("Totals (median µs of CPU per request):\n")
    print("| endpoint | app | request thread µs | process µs (+ writers) | over bare (thread) | over bare (process) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for label, by_kind in totals.items():
        bare_thread, bare_process = by_kind["bare"]
        for kind, (thread_us, process_us) in by_kind.items():
            over = "" if kind == "bare" else f"+{thread_us - bare_thread:.1f}"
            over_p = "" if kind == "bare" else f"+{process_us - bare_process:.1f}"
            print(f"| {label} | {kind} | {thread_us:.1f} | {process_us:.1f} | {over} | {over_p} |")

    # The breakdown: a separate run of "ours" (and "ours+limits") with every hook timed.
    timers = Timers()
    for kind in kinds[1:]:
        instrument(apps[kind], timers)
    instrument_parts(timers)
    cost = wrapper_cost_ns()
    for kind in kinds[1:]:
        for label, path in endpoints.items():
            for _ in range(warm):
                call(apps[kind], path)
            timers.reset()
            n = args.requests
            for _ in range(n):
                call(apps[kind], path)
            settle(apps)
            thread_us, process_us = totals[label][kind]
            bare_thread = totals[label]["bare"][0]
            timer_us = cost / 1000
            print(f"\nBreakdown, {kind}, {label} (µs per request, {n} requests; a timer costs {timer_us:.2f} µs):\n")
            print("| hook or part | µs per request | calls per request |")
            print("| --- | ---: | ---: |")
            hooks_us = 0.0
            for name in sorted(timers.ns, key=lambda k: -timers.ns[k]):
                us = timers.ns[name] / n / 1000
                per = timers.calls[name] / n
                part = name in PART_LABELS or name.startswith(("error_occurred", "request observer"))
                if not part and not name.startswith("view "):
                    hooks_us += us  # parts are inside a hook's time already
                shown = f"  (part) {name}" if part else name
                print(f"| {shown} | {us:.1f} | {per:g} |")
            view_us = sum(timers.ns[k] for k in timers.ns if k.startswith("view ")) / n / 1000
            rest = (thread_us - bare_thread) - hooks_us
            print(f"| **hooks and handlers, total** | **{hooks_us:.1f}** | |")
            print(f"| the view (bare's: about the same) | {view_us:.1f} | 1 |")
            print(f"| Flask and the rest (overhead {thread_us - bare_thread:.1f} minus the hooks) | {rest:.1f} | |")
            print(f"| writer threads (process minus request thread) | {process_us - thread_us:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
