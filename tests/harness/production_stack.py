"""The production shape on loopback for the fault-under-load and soak suites, and the load that drives it.

`production_stack(...)` runs gunicorn (several gthread workers) and `flask jobs worker` processes on a fresh
PostgreSQL database and a Redis database number, with the bucket emulator, the Stripe peer and the SendGrid
peer each behind its own `FaultProxy`, and PostgreSQL (and Redis, with `redis_proxy=True`) behind a
`TcpFaultProxy` that every app process connects through, all on 127.0.0.1. `Load` is a bounded pool of
client threads doing what users do: register and log in, upload real audio, start renders, buy credits
(Checkout, then Stripe's signed `checkout.session.completed` webhook), poll. Every answer is recorded
(status, error code, request ID, time, duration, whether it was an idempotent replay).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import requests

from bench.harness import Server, base_env, gunicorn, migrate
from tests.harness.app import ADMIN_EMAIL, require_service
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.gcs_emulator import GCSEmulator, fake_service_account_info
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.peers.stripe_peer import StripePeer, signed_webhook
from tests.harness.peers.tcp_fault_proxy import TcpFaultProxy

ROOT = Path(__file__).resolve().parents[2]
FLASK = str(Path(sys.executable).with_name("flask"))
PASSWORD = "correct-horse-battery"
RENDER = {"preset": "waveform", "resolution": "320x180", "fps": 24}


@dataclass
class Stack:
    """A running system: gunicorn, job workers, the peers and the fault proxy in front of each."""

    server: Server
    env: dict[str, str]
    database_url: str
    stripe: StripePeer
    sendgrid: SendGridPeer
    gcs: GCSEmulator
    bucket: str
    proxies: dict[str, FaultProxy]
    database_proxy: TcpFaultProxy  # every app process reaches PostgreSQL through it; `sql()` goes direct
    redis_proxy: TcpFaultProxy | None  # and Redis (breakers, wake-ups), when the stack was asked to cut Redis
    job_workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return self.server.url("")

    def web_pids(self) -> list[int]:
        """The live gunicorn worker processes (children of the master)."""
        children = Path(f"/proc/{self.server.process.pid}/task/{self.server.process.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def job_pids(self) -> list[int]:
        """The live job worker processes."""
        return [w.pid for w in self.job_workers if w.poll() is None]

    def start_job_worker(self) -> subprocess.Popen[bytes]:
        """Start one more `flask jobs worker` (the real CLI, configured by the environment only)."""
        worker = subprocess.Popen(
            [FLASK, "jobs", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.job_workers.append(worker)
        return worker

    def flask(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run one `flask ...` command against this system (its exit code is the caller's to judge)."""
        return subprocess.run([FLASK, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one read-only query on the system's database."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return list(conn.execute(query, params).fetchall())

    def admin_token(self) -> str:
        """A token of the admin user (registered on first use)."""
        http = requests.Session()
        http.post(self.server.url("/api/auth/register"), json={"email": ADMIN_EMAIL, "password": PASSWORD}, timeout=10)
        promoted = self.flask("users", "create-admin", ADMIN_EMAIL)  # registering a listed address proves nothing
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        answer = http.post(
            self.server.url("/api/auth/login"), json={"email": ADMIN_EMAIL, "password": PASSWORD}, timeout=10
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])


def _fresh_database() -> tuple[str, str]:
    base = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        require_service("PostgreSQL", f"{base}: {exc}")
    name = f"oriel_load_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + f"/{name}", base


def _drop_database(url: str, admin_url: str) -> None:
    name = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 10
    while True:  # workers may take a moment to close their connections
        try:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _redis_url(db_number: int) -> str:
    base = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    url = base.rsplit("/", 1)[0] + f"/{db_number}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).flushdb()
    except redis.RedisError as exc:
        require_service("Redis", f"{url}: {exc}")
    return url


@contextlib.contextmanager
def production_stack(
    workdir: Path,
    gcs: GCSEmulator,
    bucket: str,
    *,
    web_workers: int = 3,
    job_workers: int = 2,
    redis_db: int = 13,
    redis_proxy: bool = False,
    extra: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """Peers behind fault proxies, a fresh database, gunicorn and job workers, until the block ends."""
    database_url, admin_url = _fresh_database()
    parts = urlsplit(database_url)
    database_proxy = TcpFaultProxy(parts.port or 5432, target_host=parts.hostname or "127.0.0.1")
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    proxied_database_url = urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{database_proxy.port}"))
    redis_url = _redis_url(redis_db)
    redis_cut: TcpFaultProxy | None = None
    app_redis_url = redis_url
    if redis_proxy:  # only where Redis is cut: its forwarding threads share this process with the peers and the load
        redis_parts = urlsplit(redis_url)
        redis_cut = TcpFaultProxy(redis_parts.port or 6379, target_host=redis_parts.hostname or "127.0.0.1")
        app_redis_url = urlunsplit(redis_parts._replace(netloc=f"127.0.0.1:{redis_cut.port}"))
    stripe = StripePeer().start()
    sendgrid = SendGridPeer().start()
    proxies = {
        "storage": FaultProxy(gcs.url, max_hold=20.0).start(),
        "stripe": FaultProxy(stripe.url, max_hold=20.0).start(),
        "email": FaultProxy(sendgrid.url, max_hold=20.0).start(),
    }
    signer = workdir / "signer.json"
    signer.write_text(json.dumps(fake_service_account_info()), encoding="utf-8")
    env = base_env(
        workdir,
        {
            "FLASK_ENV": "testing",
            "FLASK_APP": "wsgi",
            "DATABASE_URL": proxied_database_url,
            "REDIS_URL": app_redis_url,
            "RATELIMIT_ENABLED": "false",  # the only errors are the injected faults' (a 429 of ours would blur them)
            "ADMIN_EMAILS": ADMIN_EMAIL,
            "STRIPE_API_KEY": stripe.api_key,
            "STRIPE_WEBHOOK_SECRET": stripe.webhook_secret,
            "STRIPE_API_BASE": proxies["stripe"].url,
            "STRIPE_TIMEOUT": "1",
            "SENDGRID_API_KEY": sendgrid.api_key,
            "SENDGRID_API_HOST": proxies["email"].url,
            "SENDGRID_TIMEOUT": "1",
            "STORAGE_BACKEND": "gcs",
            "GCS_BUCKET": bucket,
            "GCS_ENDPOINT": proxies["storage"].url,
            "GCS_TIMEOUT": "1",
            "GCS_SIGNING_CREDENTIALS_FILE": str(signer),
            "LOCAL_STORAGE_DIR": str(workdir / "fallback"),
            "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
            "FREE_RENDER_CREDITS": "3",
            "RENDER_MIN_FREE_DISK_MB": "0",
            "RENDER_MIN_FREE_MEMORY_MB": "0",
            "RENDER_WORK_DIR": str(workdir / "render"),
            "RENDER_JOB_MAX_ATTEMPTS": "4",
            "JOBS_CONCURRENCY": "2",
            "JOBS_POLL_SECONDS": "0.2",
            "JOBS_LEASE_SECONDS": "3",
            "JOBS_HEARTBEAT_SECONDS": "0.5",
            # A send takes a few seconds at most here (1 s timeout, a few retries): a killed sender's row returns soon.
            "EMAIL_LEASE_SECONDS": "15",
            # Likewise a file's sync attempt (1 s timeout, a few retries): a row claimed by a killed worker, or by one
            # whose database was cut before it could record the outcome, is due again after this, not after 300 s.
            "STORAGE_SYNC_LEASE_SECONDS": "15",
            **(extra or {}),
        },
    )
    (workdir / "render").mkdir(exist_ok=True)
    # Before any process builds the app: a label-less prometheus Counter opens its file in this folder at once.
    (workdir / "metrics").mkdir(exist_ok=True)
    stack: Stack | None = None
    try:
        migrate(env)
        # A shared, loaded machine can take a while to boot 3 workers: wait up to 120 s for the first answer.
        with gunicorn(env, workers=web_workers, threads=4, ready_path="/healthz", ready_timeout=120) as server:
            peers = {"stripe": stripe, "sendgrid": sendgrid, "gcs": gcs, "bucket": bucket, "proxies": proxies}
            stack = Stack(server, env, database_url, **peers, database_proxy=database_proxy, redis_proxy=redis_cut)
            for _ in range(job_workers):
                stack.start_job_worker()
            yield stack
    finally:
        if stack is not None:
            for worker in stack.job_workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)  # graceful: running jobs are handed back
            for worker in stack.job_workers:
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(5)
        for proxy in proxies.values():
            proxy.stop()
        database_proxy.close()
        if redis_cut is not None:
            redis_cut.close()
        stripe.stop()
        sendgrid.stop()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(redis_url, socket_connect_timeout=1).flushdb()
        _drop_database(database_url, admin_url)


# -- load ----------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One client-visible outcome: an HTTP answer, or a transport failure (status 0)."""

    op: str
    status: int
    code: str | None
    request_id: str | None
    at: float
    body: dict[str, Any] | None = None
    replayed: bool = False  # `Idempotent-Replayed: true`: the stored answer to an earlier request with its key
    seconds: float = 0.0  # how long the request took, as the client saw it


@dataclass
class Ledger:
    """What clients saw: every answer, accepted uploads, started renders, paid sessions, webhooks."""

    answers: list[Answer] = field(default_factory=list)
    uploads: list[tuple[int, int]] = field(default_factory=list)  # (upload id, size)
    renders: list[int] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # paid session → its completed event (Stripe resends it)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer) -> None:
        """Record one answer."""
        with self.lock:
            self.answers.append(answer)

    def by_status(self) -> Counter[int]:
        """How many answers had each status (0: no answer)."""
        return Counter(a.status for a in self.answers)


class Client:
    """One user: a requests session (keep-alive) that records every answer in the ledger."""

    def __init__(
        self, base_url: str, ledger: Ledger, email: str, audio: bytes, rng: random.Random, *, keepalive: bool = True
    ) -> None:
        self.base = base_url
        self.keepalive = keepalive
        self.ledger = ledger
        self.email = email
        self.audio = audio
        self.rng = rng
        self.http = requests.Session()
        self.token: str | None = None
        self.upload_ids: list[int] = []
        self.render_ids: list[int] = []

    def call(self, op: str, method: str, path: str, **kwargs: Any) -> Answer:
        """One request (timeout 10 s); recorded."""
        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if not self.keepalive:
            headers["Connection"] = "close"  # a new connection per request: the kernel spreads them over workers
        started = time.monotonic()
        try:
            response = self.http.request(method, self.base + path, headers=headers, timeout=10, **kwargs)
        except requests.RequestException:
            answer = Answer(op, 0, None, None, time.monotonic(), seconds=time.monotonic() - started)
            self.http.close()  # a killed worker's connection: start afresh
            self.ledger.add(answer)
            return answer
        body: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            parsed = response.json()
            body = parsed if isinstance(parsed, dict) else None
        code = (body or {}).get("error", {}).get("code") if response.status_code >= 400 else None
        answer = Answer(
            op,
            response.status_code,
            code,
            response.headers.get("X-Request-ID"),
            time.monotonic(),
            body,
            replayed=response.headers.get("Idempotent-Replayed") == "true",
            seconds=time.monotonic() - started,
        )
        self.ledger.add(answer)
        return answer

    def login(self) -> bool:
        """Register (if new) and log in."""
        if self.token is None:
            self.call("register", "POST", "/api/auth/register", json={"email": self.email, "password": PASSWORD})
        answer = self.call("login", "POST", "/api/auth/login", json={"email": self.email, "password": PASSWORD})
        if answer.status == 200 and answer.body:
            self.token = str(answer.body["access_token"])
            return True
        return False

    def upload(self) -> None:
        """Upload the clip (an Idempotency-Key per logical upload, as the browser client does)."""
        files = {"file": ("clip.wav", self.audio, "audio/wav")}
        answer = self.call("upload", "POST", "/api/uploads", files=files, headers={"Idempotency-Key": uuid.uuid4().hex})
        if answer.status == 201 and answer.body:
            upload = answer.body["upload"]
            self.upload_ids.append(int(upload["id"]))
            with self.ledger.lock:
                self.ledger.uploads.append((int(upload["id"]), len(self.audio)))

    def render(self) -> None:
        """Start a render of one of this user's uploads."""
        if not self.upload_ids:
            return self.upload()
        payload = {"upload_id": self.rng.choice(self.upload_ids), **RENDER}
        answer = self.call(
            "render", "POST", "/api/renders", json=payload, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        if answer.status == 202 and answer.body:
            self.render_ids.append(int(answer.body["render"]["id"]))
            with self.ledger.lock:
                self.ledger.renders.append(int(answer.body["render"]["id"]))
        return None

    def buy(self, stripe: StripePeer) -> None:
        """Checkout for a pack; Stripe completes the session and posts its signed webhook (retried by `drain`)."""
        answer = self.call(
            "checkout",
            "POST",
            "/api/payments/checkout",
            json={"pack": "starter"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        if answer.status != 201 or not answer.body:
            return
        event = stripe.completed_event(str(answer.body["session_id"]))
        with self.ledger.lock:
            self.ledger.events[str(answer.body["session_id"])] = event
        self.webhook(stripe, event)

    def webhook(self, stripe: StripePeer, event: Mapping[str, Any]) -> Answer:
        """Deliver one signed event (without the user's token, as Stripe does)."""
        payload, headers = signed_webhook(event, stripe.webhook_secret)
        token, self.token = self.token, None
        try:
            return self.call("webhook", "POST", "/api/payments/webhook", data=payload.encode(), headers=headers)
        finally:
            self.token = token

    def poll(self) -> None:
        """Read a render's status, the balance or the profile."""
        if self.render_ids and self.rng.random() < 0.6:
            self.call("poll", "GET", f"/api/renders/{self.rng.choice(self.render_ids)}")
        elif self.rng.random() < 0.5:
            self.call("credits", "GET", "/api/payments/credits")
        else:
            self.call("me", "GET", "/api/me")

    def step(self, stripe: StripePeer) -> None:
        """One user action, weighted like real traffic (mostly reads)."""
        if self.token is None and not self.login():
            return
        roll = self.rng.random()
        if roll < 0.15:
            self.upload()
        elif roll < 0.27:
            self.render()
        elif roll < 0.32:
            self.buy(stripe)
        elif roll < 0.34:
            self.login()
        else:
            self.poll()


class Load:
    """`users` client threads, each doing `step()` with a pause, until `stop()` or `seconds` pass."""

    def __init__(
        self, stack: Stack, audio: bytes, *, users: int = 6, pause: float = 0.05, seed: int = 9, keepalive: bool = True
    ) -> None:
        if not stack.base_url.startswith("http://127.0.0.1:"):
            raise ValueError("load is only ever sent to loopback")
        self.stack = stack
        self.ledger = Ledger()
        self.pause = pause
        self._stop = threading.Event()
        self.clients = [
            Client(
                stack.base_url,
                self.ledger,
                f"user{i}-{seed}@example.com",
                audio,
                random.Random(seed * 100 + i),
                keepalive=keepalive,
            )
            for i in range(users)
        ]
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.clients]
        self._deadline = 0.0

    def _run(self, client: Client) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            client.step(self.stack.stripe)
            self._stop.wait(self.pause)

    def start(self, seconds: float) -> Load:
        """Start the clients; they stop after `seconds` at the latest."""
        self._deadline = time.monotonic() + seconds
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop the clients and wait for their last requests (each bounded by its 10 s timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


# -- processes -----------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (/proc/<pid>/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    """Threads of a process."""
    return len(os.listdir(f"/proc/{pid}/task"))
