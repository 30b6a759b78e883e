"""Job system figures, as ratios within one run (`make bench-jobs`).

1. Throughput: no-op jobs per second through the full record keeping (enqueue; claim with a lease;
   run; complete; a performance.log line per job), on the embedded default (SQLite) and on
   Redis + PostgreSQL, with 1 and 4 worker threads. The yardstick in the same run: one-row UPDATE +
   COMMIT round trips per second on the same database (a job costs about two of them).
2. Recovery: how long a job waits after its worker is killed with SIGKILL before another worker
   runs it again, as a function of the lease time (the heartbeat is lease/3).

PostgreSQL (TEST_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test: a temporary
database is created and dropped) and Redis (TEST_REDIS_URL) figures are skipped when unreachable.
Nothing here listens on a network port.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import select, text

from backend.app import create_app
from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.jobs.worker import Worker, WorkerOptions, options_from_app
from backend.app.models.job import RUNNING, SUCCEEDED, Job
from backend.app.resilience.retry import RetryPolicy
from config import TestingConfig

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def sleeper(ctx: JobContext) -> str:
    """A job that runs long enough to be killed in the middle of."""
    if ctx.attempt == 1:
        time.sleep(float(ctx.payload["seconds"]))
    return "done"


SLEEP_KIND = JobKind("bench.sleep", sleeper, policy=RetryPolicy(max_attempts=3))


def settings(workdir: Path, database_url: str, redis_url: str | None, **extra: Any) -> dict[str, Any]:
    """App settings for a benchmark app."""
    return {
        "SECRET_KEY": "bench-secret-key-0123456789abcdef",
        "JWT_SECRET_KEY": "bench-jwt-secret-key-0123456789abcdef",
        "LOG_DIR": str(workdir / "logs"),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "ERROR_STATS_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A temporary PostgreSQL database URL, or None when PostgreSQL is unreachable."""
    import psycopg

    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        print(f"  (PostgreSQL at {PG_URL} unreachable: {exc}; PostgreSQL figures skipped)")
        yield None
        return
    name = f"oriel_bench_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield "postgresql+psycopg://" + PG_URL.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_available() -> bool:
    """Whether Redis answers."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        print(f"  (Redis at {REDIS_URL} unreachable: {exc}; Redis figures skipped)")
        return False
    return True


def build(workdir: Path, database_url: str, redis_url: str | None, **extra: Any) -> Flask:
    """A migrated app."""
    app = create_app(TestingConfig, **settings(workdir, database_url, redis_url, **extra))
    with app.app_context():
        upgrade()
    return app


def commits_per_second(app: Flask, n: int) -> float:
    """One-row UPDATE + COMMIT round trips per second (the yardstick)."""
    with app.app_context():
        db.session.execute(text("CREATE TABLE IF NOT EXISTS bench_counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        db.session.execute(text("DELETE FROM bench_counter"))
        db.session.execute(text("INSERT INTO bench_counter VALUES (1, 0)"))
        db.session.commit()
        started = time.perf_counter()
        for _ in range(n):
            db.session.execute(text("UPDATE bench_counter SET n = n + 1 WHERE id = 1"))
            db.session.commit()
        return n / (time.perf_counter() - started)


def throughput(app: Flask, n: int, concurrency: int) -> tuple[float, float]:
    """(enqueued per second, processed per second) for n no-op jobs."""
    with app.app_context():
        db.session.execute(text("DELETE FROM jobs"))
        db.session.commit()
        started = time.perf_counter()
        for i in range(n):
            enqueue("maintenance.noop", {"i": i})
        enqueue_rate = n / (time.perf_counter() - started)
    options = WorkerOptions(
        concurrency=concurrency, drain=True, schedule=False, install_signals=False, poll_seconds=0.05, max_seconds=600
    )
    started = time.perf_counter()
    processed = Worker(app, options).run()
    elapsed = time.perf_counter() - started
    with app.app_context():
        done = db.session.execute(select(Job.id).where(Job.status == SUCCEEDED)).scalars().all()
    assert processed == n == len(done), (processed, n, len(done))
    return enqueue_rate, n / elapsed


def recovery_wait(app: Flask, lease: float) -> float:
    """Seconds from SIGKILL of the worker running a job to another worker starting it again."""
    with app.app_context():
        job_id = enqueue("bench.sleep", {"seconds": 120}).id
    shared = {k: app.config.get(k) for k in settings(Path("."), "", None)}
    spec = json.dumps({"settings": {**shared, **lease_settings(lease)}})
    victim = subprocess.Popen([sys.executable, "-m", "bench.bench_jobs", "--worker", spec], cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with app.app_context():
            status = db.session.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
            db.session.commit()
        if status == RUNNING:
            break
        time.sleep(0.01)
    else:
        victim.kill()
        raise RuntimeError("the victim worker never started the job")
    # The survivor is already running and idle, as in production.
    survivor = Worker(
        app,
        WorkerOptions(
            install_signals=False,
            schedule=False,
            lease_seconds=lease,
            heartbeat_seconds=lease / 3,
            poll_seconds=0.05,
            max_seconds=lease * 3 + 30,
        ),
    )
    thread = threading.Thread(target=survivor.run)
    thread.start()
    time.sleep(lease / 2)  # somewhere in the middle of the victim's lease
    killed_at = time.time()
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    restarted: float | None = None
    while time.time() - killed_at < lease * 3 + 30:
        with app.app_context():
            job = db.session.execute(select(Job).where(Job.id == job_id)).scalar_one()
            if job.attempts >= 2 and job.started_at is not None:
                restarted = _epoch(job.started_at)
            db.session.commit()
        if restarted is not None:
            break
        time.sleep(0.01)
    survivor.stop()
    thread.join(30)
    if restarted is None:
        raise RuntimeError(f"job {job_id} was not restarted")
    return restarted - killed_at


def _epoch(value: Any) -> float:
    from backend.app.timeutil import as_utc

    aware = as_utc(value)
    assert aware is not None
    return aware.timestamp()


def run_backend(label: str, app: Flask, jobs: int, leases: list[float]) -> None:
    """Print one backend's figures."""
    print(f"\n{label}:")
    for concurrency in (1, 4):
        # The yardstick is measured right before each run: load on a shared machine drifts.
        commits = commits_per_second(app, 300)
        enq, rate = throughput(app, jobs, concurrency)
        print(
            f"  {jobs} no-op jobs, {concurrency} thread(s): enqueue {enq:,.0f}/s, processed {rate:,.0f}/s "
            f"({1000 / rate:.2f} ms per job); one-row UPDATE+COMMIT {commits:,.0f}/s "
            f"(a job costs {commits / rate:.1f} commit round trips)"
        )
    for lease in leases:
        waits = [recovery_wait(app, lease) for _ in range(2)]
        print(
            f"  lease {lease:g}s (heartbeat {lease / 3:.2f}s), killed mid-lease: job ran again after "
            f"{', '.join(f'{w:.2f}s' for w in waits)}"
        )


def worker_main(spec: dict[str, Any]) -> None:
    """The victim worker process of the recovery measurement."""
    app = create_app(TestingConfig, **spec["settings"])
    REGISTRY.register(SLEEP_KIND, replace=True)
    Worker(app, options_from_app(app, schedule=False, install_signals=False)).run()


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--leases", default="1,2,5,10")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    REGISTRY.register(SLEEP_KIND, replace=True)
    leases = [float(x) for x in args.leases.split(",") if x]
    print(f"bench_jobs: {args.jobs} jobs per run, leases {leases}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        workdir = Path(tmp)
        sqlite_app = build(workdir, f"sqlite:///{workdir / 'bench.db'}", None, **lease_settings(leases[0]))
        run_backend("Embedded default (SQLite, in-process wake-ups)", sqlite_app, args.jobs, leases)
        if redis_available():
            with postgres_database() as pg_url:
                if pg_url is not None:
                    pg_app = build(workdir, pg_url, REDIS_URL, **lease_settings(leases[0]))
                    run_backend("Redis + PostgreSQL", pg_app, args.jobs, leases[:2])
                    with pg_app.app_context():
                        db.session.remove()
                        db.engine.dispose()


def lease_settings(lease: float) -> dict[str, Any]:
    """Job timing settings for a lease time."""
    return {"JOBS_LEASE_SECONDS": lease, "JOBS_HEARTBEAT_SECONDS": lease / 3, "JOBS_POLL_SECONDS": 0.05}


if __name__ == "__main__":
    main()
