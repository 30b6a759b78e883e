"""The whole system on loopback, as it runs in production: gunicorn workers, `flask jobs worker` processes,
PostgreSQL and Redis, and the local Stripe / SendGrid peers (storage on the local disk backend).

Used by the fuzzing, security and multi-process consistency suites. Each system gets its own freshly
migrated PostgreSQL database (dropped afterwards) and its own Redis database number (flushed before and
after), so it never shares state with other tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.harness import VENV_BIN, Server, base_env, free_port, migrate, stop
from tests.harness.app import ADMIN_EMAIL, require_service
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.peers.stripe_peer import StripePeer

ROOT = Path(__file__).resolve().parents[2]
FLASK = str(Path(sys.executable).with_name("flask"))
PASSWORD = "correct-horse-battery"

#: Canary secrets: configured into every process; none may ever appear in a log line or a response.
CANARIES = {
    "SECRET_KEY": "canary-secret-key-7c1d9e0a4b2f-0d2f4a6c",
    "JWT_SECRET_KEY": "canary-jwt-secret-3f8a6b2c9d1e-5a7c9e1b",
    "STRIPE_API_KEY": "sk_test_canary5e7d1a9c3b",
    "STRIPE_WEBHOOK_SECRET": "whsec_canary2b8e4f6a0d",
    "SENDGRID_API_KEY": "SG.canary9a1c3e5b7d.f0e2",
    "DB_PASSWORD": "canary-db-pw-6d4b2a8e",
}


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class System:
    """A running system: `server` (gunicorn), job workers, peers and the environment they share."""

    server: Server
    env: dict[str, str]
    database_url: str
    redis_url: str
    stripe: StripePeer
    sendgrid: SendGridPeer
    job_workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    admins: set[str] = field(default_factory=set)  # addresses promoted already (one `flask` run each)

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return self.server.url("")

    @property
    def log_dir(self) -> Path:
        """The log folder every process writes to."""
        return Path(self.env["LOG_DIR"])

    def call(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        """One request on a new connection (urllib never reuses one), so requests spread across workers."""
        sent = dict(headers or {})
        if payload is not None:
            body = json.dumps(payload).encode()
            sent.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.server.url(path), data=body, headers=sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read())

    def token(self, email: str, password: str = PASSWORD) -> str:
        """Register (if new) and log in; returns an access token (the admin address promoted by the CLI)."""
        self.call("POST", "/api/auth/register", {"email": email, "password": password})
        if email == ADMIN_EMAIL:
            self.promote_admin(email)
        answer = self.call("POST", "/api/auth/login", {"email": email, "password": password})
        assert answer.status == 200, answer.body[:500]
        return str(answer.json()["access_token"])

    def promote_admin(self, email: str) -> None:
        """`flask users create-admin EMAIL` against this system: registering a listed address proves nothing."""
        if email in self.admins:
            return
        done = subprocess.run(
            [FLASK, "users", "create-admin", email], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        self.admins.add(email)

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        """Every JSON line of one log file (all processes write the same files)."""
        path = self.log_dir / name
        if not path.exists():
            return []
        lines = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one read-only query on the system's database (the durable records, read directly)."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return list(conn.execute(query, params).fetchall())

    def all_log_text(self) -> str:
        """Everything every process logged (every file, rotated ones too, and worker output)."""
        return "\n".join(
            p.read_text(encoding="utf-8", errors="replace") for p in sorted(self.log_dir.rglob("*")) if p.is_file()
        )


def _fresh_database() -> tuple[str, str]:
    """Create a PostgreSQL database with a password-protected owner; returns (url, admin url)."""
    base = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        require_service("PostgreSQL", f"{base}: {exc}")
    name = f"oriel_sys_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    host_part = base.split("@", 1)[1].rsplit("/", 1)[0]
    # The password is a canary: a trust-authenticated server ignores it, but the app still holds it.
    return f"postgresql://postgres:{CANARIES['DB_PASSWORD']}@{host_part}/{name}", base


def _drop_database(url: str, admin_url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _redis(db_number: int) -> str:
    base = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    url = base.rsplit("/", 1)[0] + f"/{db_number}"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        require_service("Redis", f"{url}: {exc}")
    return url


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.process.returncode}")
        try:
            with urllib.request.urlopen(server.url("/healthz"), timeout=5):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the app is up
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("gunicorn did not answer in time")


@contextlib.contextmanager
def _gunicorn(env: dict[str, str], workers: int, threads: int) -> Iterator[Server]:
    """gunicorn on a free loopback port; a generous start timeout for a loaded CI machine.

    One thread means sync workers: a gthread worker accepts connections greedily even with one
    thread, so a single process could take every request and hide cross-process disagreement.
    """
    port = free_port()
    args = [str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    worker_class = "sync" if threads == 1 else "gthread"
    args += ["--worker-class", worker_class, "--threads", str(threads), "--graceful-timeout", "10"]
    args += ["--timeout", "120", "--log-level", "warning", "wsgi:app"]
    process = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True)
    server = Server(port=port, process=process, env=env)
    try:
        _wait_ready(server, 120.0)
        yield server
    finally:
        stop(server)


@contextlib.contextmanager
def running_system(
    workdir: Path,
    *,
    workers: int = 4,
    threads: int = 4,
    job_workers: int = 0,
    redis_db: int = 9,
    extra: Mapping[str, str] | None = None,
) -> Iterator[System]:
    """Start peers, migrate a fresh database, run gunicorn (and job workers) until the block ends."""
    database_url, admin_url = _fresh_database()
    redis_url = _redis(redis_db)
    stripe = StripePeer(api_key=CANARIES["STRIPE_API_KEY"], webhook_secret=CANARIES["STRIPE_WEBHOOK_SECRET"]).start()
    sendgrid = SendGridPeer(api_key=CANARIES["SENDGRID_API_KEY"]).start()
    env = base_env(
        workdir,
        {
            "FLASK_ENV": "testing",
            "FLASK_APP": "wsgi",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "RATELIMIT_ENABLED": "true",
            "ADMIN_EMAILS": ADMIN_EMAIL,
            "SECRET_KEY": CANARIES["SECRET_KEY"],
            "JWT_SECRET_KEY": CANARIES["JWT_SECRET_KEY"],
            "STRIPE_API_KEY": CANARIES["STRIPE_API_KEY"],
            "STRIPE_WEBHOOK_SECRET": CANARIES["STRIPE_WEBHOOK_SECRET"],
            "STRIPE_API_BASE": stripe.url,
            "STRIPE_TIMEOUT": "2",
            "SENDGRID_API_KEY": CANARIES["SENDGRID_API_KEY"],
            "SENDGRID_API_HOST": sendgrid.url,
            "SENDGRID_TIMEOUT": "2",
            "STORAGE_BACKEND": "local",
            "LOCAL_STORAGE_DIR": str(workdir / "storage"),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
            "JOBS_POLL_SECONDS": "0.2",
            "REJECTION_LOG_INTERVAL_SECONDS": "1",  # aggregated security lines arrive within the tests' waits
            **(extra or {}),
        },
    )
    system: System | None = None
    try:
        migrate(env)
        with _gunicorn(env, workers, threads) as server:
            system = System(server, env, database_url, redis_url, stripe, sendgrid)
            for _ in range(job_workers):
                system.job_workers.append(
                    subprocess.Popen(
                        [FLASK, "jobs", "worker"],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            yield system
    finally:
        if system is not None:
            for worker in system.job_workers:
                worker.terminate()  # SIGTERM: graceful stop
            for worker in system.job_workers:
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(5)
        stripe.stop()
        sendgrid.stop()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(redis_url, socket_connect_timeout=1).flushdb()
        deadline = time.monotonic() + 5
        while True:  # gunicorn's workers may take a moment to close their connections
            try:
                _drop_database(database_url, admin_url)
                break
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
