"""Fault injection under load: the production shape keeps its promises while its dependencies fail.

gunicorn (3 workers) and 2 `flask jobs worker` processes on PostgreSQL + Redis, the bucket emulator, the Stripe
peer and the SendGrid peer each behind a fault proxy, all on 127.0.0.1. Six client threads register, log in,
upload real audio, start renders, buy credits (Checkout + Stripe's signed webhook) and poll, for
FAULT_LOAD_SECONDS (default 90). Meanwhile each dependency in turn goes down, hangs and throttles (429 +
Retry-After) and recovers, Redis is cut (every app process reaches it through a TCP fault proxy) and
PostgreSQL too; at the end one gunicorn worker and one job worker are SIGKILLed.

The Redis slot checks #13 point 10 under load: every keyed write answered during it succeeds, and a witness
user's keys first used before the slot replay during and after it (each copy on a new connection, so on
any worker), its keys first used during the slot too, each write done once (`check_redis_slot`).

After recovery and a bounded drain (storage sync, email outbox, Stripe's webhook redelivery, jobs), the run
is checked (see `check_*`): every accepted upload in the bucket, every email sent exactly once, every job
succeeded or dead-lettered, every credit accounted for, and the error statistics matching what clients saw.
`make fault-load` runs it alone; the figures land in tests/artifacts/fault_under_load.json.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.app.jobs.registry import REGISTRY
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.gcs_emulator import GCSEmulator
from tests.harness.peers.tcp_fault_proxy import TcpFaultProxy
from tests.harness.production_stack import RENDER, Answer, Client, Ledger, Load, Stack, production_stack

SECONDS = float(os.environ.get("FAULT_LOAD_SECONDS", "90"))
DRAIN_SECONDS = float(os.environ.get("FAULT_LOAD_DRAIN_SECONDS", "150"))
# The load, the drain and start-up: a longer FAULT_LOAD_SECONDS must not meet the suite's 300 s timeout.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(int(SECONDS + DRAIN_SECONDS + 240))]
RECOVERY = 3.0  # breaker recovery_timeout in this run: a healed dependency is tried again within 3 s
DEDUP_HEADER = "X-Oriel-Dedup-Key"
ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "fault_under_load.json"

#: (dependency, mode) in the order they are injected; "kill" SIGKILLs a gunicorn worker and a job worker.
FAULTS = [
    ("storage", "down"),
    ("storage", "hang"),
    ("storage", "throttle"),
    ("email", "down"),
    ("email", "hang"),
    ("email", "throttle"),
    ("redis", "down"),  # before Stripe's faults: the witness's checkouts then meet a healthy Stripe and breaker
    ("stripe", "down"),
    ("stripe", "hang"),
    ("stripe", "throttle"),
    ("database", "down"),
    ("workers", "kill"),
]
#: Which client operations may see a dependency's outage as an error. Uploads fall back to local storage
#: and renders only queue work, so neither may fail; a checkout cannot succeed without Stripe (no fake payment).
#: Without its database nothing can be served, so every operation may fail then. Without Redis nothing may fail:
#: it only shares breaker state and carries wake-ups, and idempotency keys live in the database (#13 point 10).
ALL_OPS = {"register", "login", "me", "credits", "upload", "render", "checkout", "webhook", "poll"}
VISIBLE = {
    "stripe": {"checkout"},
    "storage": set(),
    "email": set(),
    "redis": set(),
    "workers": set(),
    "database": ALL_OPS,
}
#: What a client is told during each fault (503s only; Stripe's name their service in details.service).
FAULT_CODES = {
    "stripe": {"PAYMENTS_UNAVAILABLE", "CIRCUIT_OPEN"},
    "database": {"DATABASE_UNAVAILABLE"},
}
#: How long after a fault heals its errors may still show: the breaker's recovery plus a call in flight.
GRACE = RECOVERY + 5.0


@dataclass
class Window:
    """One injected fault: the dependency, the mode and when it was on (monotonic seconds)."""

    service: str
    mode: str
    start: float
    end: float = 0.0


def tcp_proxy(stack: Stack, service: str) -> TcpFaultProxy:
    """The TCP fault proxy every app process reaches PostgreSQL or Redis through."""
    proxy = stack.database_proxy if service == "database" else stack.redis_proxy
    assert proxy is not None, "the stack was started without a Redis proxy"
    return proxy


def inject(stack: Stack, service: str, mode: str) -> None:
    """Break one dependency's wire."""
    if service in ("database", "redis"):
        tcp_proxy(stack, service).down()
        return
    proxy = stack.proxies[service]
    if mode == "down":
        proxy.down()
    elif mode == "hang":
        proxy.hang()
    else:
        proxy.status(429, retry_after=2)


def kill_workers(stack: Stack) -> dict[str, Any]:
    """SIGKILL one gunicorn worker (the master forks a new one) and one job worker (start a replacement)."""
    web = stack.web_pids()[0]
    killed_at = time.time()
    os.kill(web, signal.SIGKILL)
    job = stack.job_workers[0]
    os.kill(job.pid, signal.SIGKILL)
    job.wait(10)
    stack.start_job_worker()
    return {"web_pid": web, "job_pid": job.pid, "at": killed_at}


def heal(stack: Stack, service: str) -> None:
    """Restore one dependency's wire."""
    if service in ("database", "redis"):
        tcp_proxy(stack, service).up()
    elif service != "workers":
        stack.proxies[service].passthrough()


#: The keyed writes, and what each answers when it succeeds.
WRITES = {"upload": 201, "render": 202, "checkout": 201}


class Witness:
    """One more user, whose keyed writes check point 10 around the Redis slot (its answers join the ledger).

    Before the slot it makes one keyed upload, render and checkout; during it, it sends each of those keys
    again (a replay), then makes one more of each with new keys and sends those again; after it, it sends
    every key again. Each copy goes on a new connection, so the copies of a key land on any web worker.
    """

    COPIES = 2  # replays of each key per phase

    def __init__(self, stack: Stack, ledger: Ledger, audio: bytes) -> None:
        self.stack = stack
        self.client = Client(stack.base_url, ledger, "witness@example.com", audio, random.Random(0), keepalive=False)
        self.first: dict[str, tuple[str, dict[str, Any]]] = {}  # key → (op, the first answer's body)
        self.upload_id = 0  # of the latest upload: what a new render renders
        self.rendered: dict[str, int] = {}  # render key → its upload (a replay must be the same request)
        self.replays: Counter[str] = Counter()  # phase → replays that matched the first answer
        self.failures: list[tuple[str, str, int, str | None, bool]] = []  # (phase, op, status, code, replayed)

    def _send(self, op: str, key: str) -> Answer:
        headers = {"Idempotency-Key": key}
        if op == "upload":
            files = {"file": ("clip.wav", self.client.audio, "audio/wav")}
            return self.client.call(op, "POST", "/api/uploads", files=files, headers=headers)
        if op == "render":
            payload = {"upload_id": self.rendered.setdefault(key, self.upload_id), **RENDER}
            return self.client.call(op, "POST", "/api/renders", json=payload, headers=headers)
        return self.client.call(op, "POST", "/api/payments/checkout", json={"pack": "starter"}, headers=headers)

    def write(self, phase: str) -> None:
        """One keyed upload, render and checkout with new keys."""
        for op in WRITES:
            key = f"witness-{phase}-{op}-{uuid.uuid4()}"
            answer = self._send(op, key)
            if answer.status != WRITES[op] or answer.replayed or not answer.body:
                self.failures.append((phase, op, answer.status, answer.code, answer.replayed))
                continue
            self.first[key] = (op, answer.body)
            with self.client.ledger.lock:  # the run's checks account for the witness's work as for anyone's
                if op == "upload":
                    self.upload_id = int(answer.body["upload"]["id"])
                    self.client.ledger.uploads.append((self.upload_id, len(self.client.audio)))
                elif op == "render":
                    self.client.ledger.renders.append(int(answer.body["render"]["id"]))

    def replay(self, phase: str) -> None:
        """Every key so far again, `COPIES` times: the first answer each time, nothing done again."""
        for key, (op, body) in list(self.first.items()):
            for _ in range(self.COPIES):
                answer = self._send(op, key)
                if (answer.status, answer.replayed, answer.body) == (WRITES[op], True, body):
                    self.replays[phase] += 1
                else:
                    self.failures.append((phase, op, answer.status, answer.code, answer.replayed))

    def before(self) -> None:
        """Log in, then the keys the outage will meet."""
        assert self.client.login(), "the witness cannot log in"
        self.write("before")

    def during(self) -> None:
        """Keys from before replay; new keyed writes succeed and replay."""
        self.replay("during")
        self.write("during")
        self.replay("during")

    def after(self) -> None:
        """Every key replays once Redis is back."""
        self.replay("after")


def run_faults(stack: Stack, seconds: float, witness: Witness) -> tuple[list[Window], dict[str, Any]]:
    """Warm up, then each fault on for 60% of its slot and healed for the rest; the windows.

    A slot is `seconds` / 12, as long as before the Redis slot was added (7.5 s at 90 s): the faults keep their
    timing and the run takes one slot longer. Shorter slots bring the worker kill closer to the end of the
    database cut, and a worker killed before the database breaker lets its error-statistics writer flush the
    outage's events loses them (outside the kill window, where the check forgives it).
    """
    slot = seconds / 12
    time.sleep(slot)  # warm-up: healthy traffic first
    windows: list[Window] = []
    killed: dict[str, Any] = {}
    for service, mode in FAULTS:
        if service == "redis":
            witness.before()
        window = Window(service, mode, time.monotonic())
        if service == "workers":
            killed = kill_workers(stack)
        else:
            inject(stack, service, mode)
        if service == "redis":
            witness.during()
        time.sleep(max(0.0, window.start + slot * 0.6 - time.monotonic()))
        heal(stack, service)
        window.end = time.monotonic()
        windows.append(window)
        if service == "redis":
            witness.after()
        time.sleep(slot * 0.4)
    return windows, killed


# -- drain ---------------------------------------------------------------------------------------------------


def redeliver_webhooks(stack: Stack, ledger: Ledger) -> Counter[int]:
    """Stripe redelivers every event until it gets a 2xx: send each completed event once more (same id)."""
    statuses: Counter[int] = Counter()
    for event in ledger.events.values():
        from tests.harness.peers.stripe_peer import signed_webhook

        payload, headers = signed_webhook(event, stack.stripe.webhook_secret)
        answer = requests.post(
            stack.server.url("/api/payments/webhook"), data=payload.encode(), headers=headers, timeout=10
        )
        statuses[answer.status_code] += 1
    return statuses


def periodic_kinds() -> set[str]:
    """Kinds the scheduler enqueues on its own (one always waits for its next run)."""
    return {p.name for p in REGISTRY.periodic()}


def unfinished(stack: Stack) -> dict[str, int]:
    """Work not done yet: pending syncs, queued emails, unfinished work jobs, unsettled renders."""
    periodic = tuple(periodic_kinds())
    jobs = stack.sql(
        "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running', 'retrying') AND NOT (kind = ANY(%s))",
        list(periodic),
    )[0][0]
    return {
        "pending_sync": stack.sql("SELECT count(*) FROM storage_pending_sync WHERE synced_at IS NULL")[0][0],
        "outbox": stack.sql("SELECT count(*) FROM email_outbox WHERE status <> 'sent'")[0][0],
        "jobs": jobs,
        "renders": stack.sql("SELECT count(*) FROM renders WHERE status NOT IN ('succeeded', 'failed')")[0][0],
    }


def drain(stack: Stack, timeout: float) -> tuple[dict[str, Any], float]:
    """Replay the fallbacks' work (as the periodic jobs would, sooner) until nothing is left, bounded in time."""
    started = time.monotonic()
    left = unfinished(stack)
    failures: list[str] = []
    while any(left.values()) and time.monotonic() - started < timeout:
        for command in (("services", "sync-storage"), ("services", "resend-email")):
            done = stack.flask(*command)
            if done.returncode:  # a replay refused by a breaker still open; the next round retries
                failures.append(f"{' '.join(command)}: {done.stderr.strip().splitlines()[-1:]}")
        time.sleep(1.0)
        left = unfinished(stack)
    if any(left.values()):
        left["command_failures"] = failures  # type: ignore[assignment] - shown in the assertion message
    return left, round(time.monotonic() - started, 1)


# -- checks --------------------------------------------------------------------------------------------------


def check_uploads(stack: Stack, ledger: Ledger) -> dict[str, int]:
    """Every accepted upload (and every stored one) is in the bucket, whole; none waits in the fallback."""
    rows = {
        int(i): (key, int(size), loc)
        for i, key, size, loc in stack.sql("SELECT id, storage_key, size, location FROM uploads")
    }
    accepted = dict(ledger.uploads)
    assert set(accepted) <= set(rows), "an accepted upload has no row"
    bucket = {
        b.name: b.size for b in stack.gcs.client().list_blobs(stack.bucket, prefix="uploads/", timeout=10, retry=None)
    }
    for upload_id, (key, size, _) in rows.items():
        assert bucket.get(key) == size, f"upload {upload_id} ({key}) is not whole in the bucket"
    for upload_id, size in accepted.items():
        assert rows[upload_id][1] == size
    return {
        "accepted": len(accepted),
        "stored": len(rows),
        "via_local_fallback": sum(1 for _, _, loc in rows.values() if loc == "local"),
        "synced": stack.sql("SELECT count(*) FROM storage_pending_sync WHERE synced_at IS NOT NULL")[0][0],
    }


def check_emails(stack: Stack, killed_at: float) -> dict[str, Any]:
    """Every email in the outbox was sent, and reached SendGrid exactly once (counted by its dedup key).

    One exception, bounded: SendGrid takes no idempotency key, so a job worker SIGKILLed after SendGrid
    accepted an email and before the row was marked sent leaves it to be sent again when its lease ends
    (at-least-once). That can only be an email whose first copy arrived before the kill, sent twice, and
    at most one per job the killed worker was running (JOBS_CONCURRENCY).
    """
    rows = stack.sql("SELECT dedup_key, status FROM email_outbox")
    duplicates: dict[str, int] = {}
    for key, status in rows:
        assert status == "sent", (key, status)
        copies = stack.sendgrid.find(header=(DEDUP_HEADER, key))
        assert copies, f"email {key} never reached SendGrid"
        if len(copies) > 1:
            duplicates[key] = len(copies)
            first = min(c.received_at for c in copies)
            assert len(copies) == 2 and first <= killed_at + 0.5, f"email {key} sent {len(copies)} times"
    assert len(duplicates) <= int(stack.env["JOBS_CONCURRENCY"]), duplicates
    assert len(stack.sendgrid.messages) == len(rows) + len(duplicates), "SendGrid got a message not in the outbox"
    return {
        "emails": len(rows),
        "via_outbox_resend": stack.sql("SELECT count(*) FROM email_outbox WHERE attempts > 1")[0][0],
        "sent_twice_across_the_kill": duplicates,
    }


def check_jobs(stack: Stack) -> dict[str, Any]:
    """Every work job succeeded or is dead-lettered; no periodic job is stuck running on an expired lease."""
    periodic = list(periodic_kinds())
    statuses = Counter(s for (s,) in stack.sql("SELECT status FROM jobs WHERE NOT (kind = ANY(%s))", periodic))
    assert set(statuses) <= {"succeeded", "dead"}, statuses
    stuck = stack.sql(
        "SELECT id, kind FROM jobs WHERE status = 'running' AND lease_expires_at < now() - interval '5 seconds'"
    )
    assert not stuck, f"jobs stuck running: {stuck}"
    lost = stack.sql("SELECT count(*) FROM jobs WHERE errors::text LIKE '%%WORKER_LOST%%'")[0][0]
    dead_by = Counter(
        f"{kind} {code}" for kind, code in stack.sql("SELECT kind, last_error_code FROM jobs WHERE status = 'dead'")
    )
    return {
        "succeeded": statuses["succeeded"],
        "dead": statuses["dead"],
        "dead_by_kind_and_error": dict(dead_by),
        "worker_lost_attempts": lost,
    }


def check_credits(stack: Stack, ledger: Ledger) -> dict[str, int]:
    """Granted = consumed - refunded + balance; one grant per paid session, one refund per failed render."""
    per_user = stack.sql(
        "SELECT a.user_id, a.balance, coalesce(sum(e.amount), 0) FROM credit_accounts a "
        "LEFT JOIN credit_entries e ON e.user_id = a.user_id GROUP BY a.user_id, a.balance"
    )
    for user_id, balance, ledger_sum in per_user:
        assert balance == ledger_sum, f"user {user_id}: balance {balance} but ledger sums to {ledger_sum}"
    entries = Counter((kind, ref) for kind, ref in stack.sql("SELECT kind, ref FROM credit_entries"))
    assert all(n == 1 for n in entries.values()), [k for k, n in entries.items() if n > 1]
    grants = {ref for kind, ref in entries if kind == "grant" and not ref.startswith("signup:")}
    paid = set(ledger.events)
    assert len(grants) == len(paid), f"{len(grants)} credit grants for {len(paid)} paid Checkout Sessions"
    assert all(any(session in ref for ref in grants) for session in paid), "a paid session granted nothing"
    renders = dict(stack.sql("SELECT id, status FROM renders"))
    assert set(ledger.renders) <= set(renders)
    consumed = {ref for kind, ref in entries if kind == "consume"}
    refunded = {ref for kind, ref in entries if kind == "refund"}
    assert consumed == {f"render:{i}" for i in renders}, "a render without its credit, or a credit without its render"
    assert refunded == {f"render:{i}" for i, s in renders.items() if s == "failed"}, (
        "refunds do not match failed renders"
    )
    total = stack.sql("SELECT coalesce(sum(amount), 0) FROM credit_entries WHERE kind = 'grant'")[0][0]
    balances = sum(b for _, b, _ in per_user)
    assert total == len(consumed) - len(refunded) + balances
    return {
        "granted": int(total),
        "consumed": len(consumed),
        "refunded": len(refunded),
        "balance": int(balances),
        "paid_sessions": len(paid),
    }


def check_redis_slot(stack: Stack, ledger: Ledger, windows: list[Window], witness: Witness) -> dict[str, Any]:
    """Point 10 under load: with Redis cut, keyed writes kept succeeding, and no key ran twice."""
    cut = next(w for w in windows if w.service == "redis")
    during = [a for a in ledger.answers if cut.start <= a.at <= cut.end]
    writes = [a for a in during if a.op in WRITES]
    failed = [
        (a.op, a.status, a.code)
        for a in writes
        if a.status != WRITES[a.op] and not (a.op == "render" and a.code == "INSUFFICIENT_CREDITS")
    ]
    assert writes and not failed, f"keyed writes failed while Redis was down: {failed}"
    assert not [a for a in during if a.status == 0 or a.status >= 500], "an error while Redis was down"
    assert tcp_proxy(stack, "redis").refused, "no app process tried Redis while it was down"
    assert not witness.failures, witness.failures
    keys = Counter(op for op, _ in witness.first.values())
    assert keys == Counter({op: 2 for op in WRITES}), keys  # one of each before the cut and one during it
    expected = {"during": Witness.COPIES * (3 + 6), "after": Witness.COPIES * 6}
    assert {phase: witness.replays[phase] for phase in expected} == expected, witness.replays
    # Done once: one row per key (the witness has no other uploads or renders), one Checkout Session per key.
    user = stack.sql("SELECT id FROM users WHERE email = %s", witness.client.email)[0][0]
    assert stack.sql("SELECT count(*) FROM uploads WHERE user_id = %s", user)[0][0] == keys["upload"]
    assert stack.sql("SELECT count(*) FROM renders WHERE user_id = %s", user)[0][0] == keys["render"]
    sessions = [s for s in stack.stripe.sessions.values() if s["metadata"].get("user_id") == str(user)]
    assert len(sessions) == keys["checkout"], sessions
    durations = sorted(a.seconds for a in writes)
    return {
        "seconds": round(cut.end - cut.start, 1),
        "keyed_writes_during": dict(Counter(f"{a.op} {a.status}" for a in writes)),
        "answers_during": len(during),
        "write_seconds_median": round(statistics.median(durations), 3),
        "write_seconds_max": round(durations[-1], 3),
        "witness_replays": dict(witness.replays),
        "connections_refused_by_the_cut": tcp_proxy(stack, "redis").refused,
    }


def check_error_stats(stack: Stack, ledger: Ledger, windows: list[Window]) -> dict[str, Any]:
    """The error statistics match what clients saw, and every 5xx is explained by an injected fault.

    "Match", precisely: (1) every error answer a client received (status >= 400, with its X-Request-ID) is
    one recorded HTTP error event with the same request ID and code, except answers within the kill window
    (a SIGKILLed worker loses the events it had not flushed yet: at most ERROR_STATS_FLUSH_MS of them, and
    those are counted and reported); (2) recorded HTTP events that no client saw are at most the requests
    that got no answer (transport failures); (3) `GET .../errors/stats` by_code totals equal the recorded
    events per code; (4) every 5xx is a fault's: a checkout during a Stripe fault (plus the breaker's
    recovery time), or a request cut by the kill; no 500 at all.
    """
    time.sleep(2.5)  # the recorders flush every ERROR_STATS_FLUSH_MS (1,000 ms)
    kill = next(w for w in windows if w.service == "workers")
    in_kill = lambda a: kill.start - 1.0 <= a.at <= kill.start + 3.0  # noqa: E731 - a one-line predicate
    events = {
        rid: (code, status)
        for rid, code, status in stack.sql(
            "SELECT request_id, code, status_code FROM error_events WHERE source = 'http'"
        )
    }
    errors = [a for a in ledger.answers if a.status >= 400]
    missing = [a for a in errors if events.get(a.request_id or "", (None,))[0] != a.code]
    assert all(in_kill(a) for a in missing), [(a.op, a.status, a.code) for a in missing if not in_kill(a)]
    seen = {a.request_id for a in errors}
    unseen = [rid for rid in events if rid not in seen]
    transport = sum(1 for a in ledger.answers if a.status == 0)
    assert len(unseen) <= transport, f"{len(unseen)} recorded errors no client saw, {transport} unanswered requests"
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {stack.admin_token()}"
    stats = admin.get(stack.server.url("/admin/api/monitoring/errors/stats"), timeout=10).json()
    recorded = Counter(code for (code,) in stack.sql("SELECT code FROM error_events"))
    assert {c: v["total"] for c, v in stats["by_code"].items()} == dict(recorded)
    assert not [a for a in ledger.answers if a.status == 500], "an unexpected 500"
    unexplained = [a for a in ledger.answers if a.status >= 500 and not explained(a, windows, in_kill(a))]
    assert not unexplained, [(a.op, a.status, a.code) for a in unexplained]
    return {
        "client_errors_by_code": dict(Counter(a.code for a in errors)),
        "recorded_http_by_code": dict(Counter(code for code, _ in events.values())),
        "stats_by_code": {c: v["total"] for c, v in stats["by_code"].items()},
        "missing_in_kill_window": len(missing),
        "recorded_unanswered": len(unseen),
        "transport_failures": transport,
        "client_5xx": sum(1 for a in ledger.answers if a.status >= 500),
    }


def explained(answer: Answer, windows: list[Window], in_kill_window: bool) -> bool:
    """Whether a 5xx answer is the visible effect of an injected fault."""
    if in_kill_window:
        return True
    for w in windows:
        if answer.op in VISIBLE[w.service] and w.start <= answer.at <= w.end + GRACE:
            details = ((answer.body or {}).get("error") or {}).get("details") or {}
            if answer.code in FAULT_CODES[w.service] and (w.service != "stripe" or details.get("service") == "stripe"):
                return True
    return False


def test_every_dependency_failing_in_turn_under_load_loses_and_duplicates_nothing(
    gcs_emulator: GCSEmulator, gcs_bucket: str, audio_files: AudioFactory, tmp_path: Path
) -> None:
    audio = audio_files.make("wav", seconds=1.0).read_bytes()
    breakers = json.dumps({"*": {"recovery_timeout": RECOVERY, "window_seconds": 10.0}})
    # The drain replays what the periodic jobs would, sooner: a file that failed during a fault backs off seconds.
    extra = {"CIRCUIT_BREAKERS": breakers, "STORAGE_SYNC_BASE_DELAY": "1", "STORAGE_SYNC_MAX_DELAY": "5"}
    with production_stack(tmp_path, gcs_emulator, gcs_bucket, redis_proxy=True, extra=extra) as stack:
        load = Load(stack, audio, users=6).start(SECONDS + 30)
        witness = Witness(stack, load.ledger, audio)
        try:
            windows, killed = run_faults(stack, SECONDS, witness)
        finally:
            load.stop()
        ledger = load.ledger
        redelivered = redeliver_webhooks(stack, ledger)
        assert set(redelivered) <= {200}, redelivered
        left, drain_seconds = drain(stack, DRAIN_SECONDS)
        stuck_emails = stack.sql(
            "SELECT dedup_key, status, attempts, last_error, lease_expires_at FROM email_outbox WHERE status <> 'sent'"
        )
        stuck_files = stack.sql(
            "SELECT key, status, attempts, last_error, next_attempt_at, now() FROM storage_pending_sync "
            "WHERE synced_at IS NULL"
        )
        assert not any(left.values()), (
            f"not drained in {DRAIN_SECONDS} s: {left}; emails {stuck_emails}; files {stuck_files}"
        )
        report = {
            "seconds": SECONDS,
            "requests": len(ledger.answers),
            "by_status": dict(sorted(ledger.by_status().items())),
            "by_op_status": dict(Counter(f"{a.op} {a.status}" for a in ledger.answers)),
            "faults": [{"service": w.service, "mode": w.mode, "seconds": round(w.end - w.start, 1)} for w in windows],
            "killed": killed,
            "proxy_counts": {name: proxy.counts for name, proxy in stack.proxies.items()},
            "redis_slot": check_redis_slot(stack, ledger, windows, witness),
            "drain_seconds": drain_seconds,
            "uploads": check_uploads(stack, ledger),
            "emails": check_emails(stack, killed["at"]),
            "jobs": check_jobs(stack),
            "credits": check_credits(stack, ledger),
            "errors": check_error_stats(stack, ledger, windows),
        }
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print("fault under load:", json.dumps(report))
