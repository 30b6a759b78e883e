"""Healthy-endpoint throughput under gunicorn while Stripe hangs, breakers on vs off (`make bench-hung`).

Three scenarios, interleaved in every round (a fresh gunicorn, 2 gthread workers x 4 threads, SQLite each time):

- `no outage`: the Stripe peer answers (through the fault proxy, passing).
- `hang, breakers on`: the proxy reads Stripe requests and never answers; STRIPE_TIMEOUT (default 2 s)
  fails each attempt; the `stripe` breaker has its production defaults (opens at 50% of >= 5 calls).
- `hang, breakers off`: the same hang with `CIRCUIT_BREAKERS={"stripe": {"min_calls": 1000000000}}`, a
  breaker that can never reach its minimum number of calls and so never opens (the config way to turn one off).

In each, `--clients` background threads keep calling `POST /api/payments/checkout` (a logged-in user, a short
think time between calls) while wrk measures `GET /api/errors/catalog`, which never touches Stripe. wrk starts
after `--warmup` seconds so the breaker (one per worker, memory storage) has had its failures and opened.
Reported: median req/s per scenario and the ratios to `no outage` (target: breakers on >= 0.8), the healthy
p99 and wrk's timeouts (requests it gave up on after 2 s), and what the checkout callers got and how fast.
Everything is on 127.0.0.1; every loop stops at the end of its round and has a hard deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Server, base_env, gunicorn, median, migrate, workdir, wrk_available
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.stripe_peer import StripePeer

HEALTHY_PATH = "/api/errors/catalog"
BREAKERS_OFF = json.dumps({"stripe": {"min_calls": 1_000_000_000}})
SCENARIOS = ("no outage", "hang, breakers on", "hang, breakers off")
TARGET = 0.8
EMAIL = "bench-buyer@example.com"
PASSWORD = "bench-password-123"


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_P99 = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_TIMEOUTS = re.compile(r"timeout (\d+)")
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class WrkResult:
    """Requests/s, p99 latency (ms) and requests wrk gave up on (its 2 s timeout) for one run."""

    rps: float
    p99_ms: float
    timeouts: int


def run_wrk(url: str, *, seconds: float, connections: int) -> WrkResult:
    """wrk with --latency against a loopback URL, bounded by its duration."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("load is only ever sent to loopback")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps, p99, timeouts = _RPS.search(out), _P99.search(out), _TIMEOUTS.search(out)
    if rps is None or p99 is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return WrkResult(
        float(rps.group(1)), float(p99.group(1)) * _UNIT[p99.group(2)], int(timeouts.group(1)) if timeouts else 0
    )


def _post(url: str, body: dict[str, Any], *, token: str | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    """POST JSON to a loopback URL; (status, decoded body or None)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def login(server: Server) -> str:
    """Register the bench user on this server's fresh database and return an access token."""
    _post(server.url("/api/auth/register"), {"email": EMAIL, "password": PASSWORD})
    status, body = _post(server.url("/api/auth/login"), {"email": EMAIL, "password": PASSWORD})
    if status != 200:
        raise RuntimeError(f"login failed with {status}")
    return str(body["access_token"])


@dataclass
class CheckoutLoad:
    """Background clients calling the checkout endpoint until stopped (or their hard deadline)."""

    url: str
    token: str
    clients: int
    think: float
    deadline: float
    statuses: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> CheckoutLoad:
        """Start the client threads."""
        for index in range(self.clients):
            thread = threading.Thread(target=self._loop, name=f"checkout-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Ask every client to stop and wait for the calls in flight (they end by their own timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            began = time.monotonic()
            try:
                status, _ = _post(self.url, {"pack": "starter"}, token=self.token, timeout=30)
                outcome = str(status)
            except OSError as exc:  # a client-side timeout or reset is an outcome to count, not a crash
                outcome = type(exc).__name__
            with self._lock:
                self.statuses[outcome] += 1
                self.durations.append(time.monotonic() - began)
            self._stop.wait(self.think)


@dataclass
class RoundResult:
    """One scenario in one round."""

    rps: float
    p99_ms: float
    timeouts: int
    checkout: Counter[str]
    checkout_seconds: list[float]


def run_scenario(
    name: str, template_db: Path, peer: StripePeer, proxy: FaultProxy, args: argparse.Namespace
) -> RoundResult:
    """Fresh gunicorn on a copy of the migrated database; set the fault; load checkout; wrk the healthy path."""
    with workdir("bench-hung-") as folder:
        shutil.copy(template_db, folder / "bench.db")
        extra = {
            "STRIPE_API_KEY": peer.api_key,
            "STRIPE_API_BASE": proxy.url,
            "STRIPE_TIMEOUT": str(args.timeout),
            "LOG_LEVEL": "WARNING",
        }
        if name == "hang, breakers off":
            extra["CIRCUIT_BREAKERS"] = BREAKERS_OFF
        env = base_env(folder, extra)
        env.pop("REDIS_URL", None)  # memory breakers: each fresh server starts CLOSED
        with gunicorn(env, workers=2, threads=4, worker_class="gthread") as server:
            token = login(server)
            if name == "no outage":
                proxy.passthrough()
            else:
                proxy.hang()
            deadline = time.monotonic() + args.warmup + args.seconds + 30
            load = CheckoutLoad(server.url("/api/payments/checkout"), token, args.clients, args.think, deadline)
            load.start()
            try:
                time.sleep(args.warmup)
                result = run_wrk(server.url(HEALTHY_PATH), seconds=args.seconds, connections=args.connections)
            finally:
                proxy.passthrough()  # releases the held connections, so the clients' calls end now
                load.stop()
            return RoundResult(result.rps, result.p99_ms, result.timeouts, load.statuses, load.durations)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print a Markdown table (exit 1 on a missed target with --strict)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk duration per scenario and round")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of checkout load before wrk starts")
    parser.add_argument("--clients", type=int, default=8, help="background checkout clients")
    parser.add_argument("--think", type=float, default=0.05, help="seconds each client waits between calls")
    parser.add_argument("--timeout", type=float, default=2.0, help="STRIPE_TIMEOUT for the app")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if not wrk_available():
        sys.stderr.write("wrk is not installed (make bench-hung installs it)\n")
        return 2

    peer = StripePeer().start()
    proxy = FaultProxy(peer.url, max_hold=30.0).start()
    results: dict[str, list[RoundResult]] = {name: [] for name in SCENARIOS}
    try:
        with workdir("bench-hung-template-") as template:
            migrate(base_env(template))
            for round_no in range(1, args.rounds + 1):
                # Rotate the order each round so drift on a shared machine does not favour one scenario.
                order = SCENARIOS[round_no % 3 :] + SCENARIOS[: round_no % 3]
                for name in order:
                    outcome = run_scenario(name, template / "bench.db", peer, proxy, args)
                    results[name].append(outcome)
                    print(
                        f"round {round_no} {name:<20} {outcome.rps:8.1f} req/s  p99 {outcome.p99_ms:.0f} ms  "
                        f"wrk timeouts {outcome.timeouts}  "
                        f"checkout {dict(sorted(outcome.checkout.items()))} "
                        f"median {median(outcome.checkout_seconds):.3f} s",
                        flush=True,
                    )
    finally:
        proxy.stop()
        peer.stop()

    base = median([r.rps for r in results["no outage"]])
    load1, load5, _ = os.getloadavg()
    print(
        f"\ngunicorn 2 gthread workers x 4 threads, SQLite; {args.clients} checkout clients (think {args.think} s), "
        f"STRIPE_TIMEOUT {args.timeout} s; wrk -c{args.connections} {args.seconds:g} s x {args.rounds} rounds on "
        f"GET {HEALTHY_PATH}; load average {load1:.2f} / {load5:.2f} (1 / 5 min)\n"
    )
    print(
        "| scenario | req/s per round | median req/s | ratio to no outage | checkout answers (all rounds) "
        "| median checkout time | healthy p99 per round (ms) | wrk timeouts |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios: dict[str, float] = {}
    for name in SCENARIOS:
        rps = [r.rps for r in results[name]]
        ratios[name] = median(rps) / base if base else 0.0
        answers: Counter[str] = Counter()
        seconds: list[float] = []
        for r in results[name]:
            answers.update(r.checkout)
            seconds += r.checkout_seconds
        print(
            f"| {name} | {', '.join(f'{v:.0f}' for v in rps)} | {median(rps):.0f} | {ratios[name]:.2f} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(answers.items()))} | {median(seconds):.3f} s | "
            f"{', '.join(f'{r.p99_ms:.0f}' for r in results[name])} | {sum(r.timeouts for r in results[name])} |"
        )
    met = ratios["hang, breakers on"] >= TARGET
    verdict = "met" if met else "MISSED"
    print(f"\nbreakers on / no outage = {ratios['hang, breakers on']:.2f} (target >= {TARGET}): {verdict}")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
