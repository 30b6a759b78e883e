"""Workers killed with SIGKILL mid-job, 20 times in a row, lose nothing and duplicate nothing.

Each job has three steps with side effects that can be counted afterwards:
- `charge` (atomic): inserts a row in `crash_effects`; must exist exactly once per job;
- `deliver` (external): writes a file named by the step's idempotency key, the way a receiver
  that honours idempotency keys would; every call is also appended to `attempts.log`, so the
  test sees the at-least-once calls that the key turned into exactly one delivery;
- `record` (atomic): a second row, exactly once per succeeded job.
Worker processes run this file as a module (`python -m tests.system.test_jobs_crash SPEC`); the killed
ones are forked from a process that imported the app once, so each costs milliseconds to start.
SIGTERM tests: a running job finishes within the grace period, or is handed back unharmed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text

from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.models.job import DEAD, RUNNING, SUCCEEDED, Job
from backend.app.resilience.retry import RetryPolicy
from tests.harness.forked_workers import Zygote, kill

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
JOBS = 40
POOL = 3
WORKER_SETTINGS = {"JOBS_LEASE_SECONDS": 1.0, "JOBS_HEARTBEAT_SECONDS": 0.25, "JOBS_POLL_SECONDS": 0.1}


def crash_effects(ctx: JobContext) -> dict[str, Any]:
    """The crash-test job: two atomic database effects around one idempotent external effect."""
    n = int(ctx.payload["n"])
    out = Path(ctx.payload["dir"])
    pause = float(ctx.payload["pause"])

    def insert(step: str) -> None:
        db.session.execute(
            text("INSERT INTO crash_effects (job_id, n, step, attempt) VALUES (:j, :n, :s, :a)"),
            {"j": ctx.job_id, "n": n, "s": step, "a": ctx.attempt},
        )

    def deliver() -> str:
        with open(out / "attempts.log", "a", encoding="utf-8") as log:
            log.write(f"{n}\n")
        target = out / f"delivered-{ctx.idempotency_key('deliver')}"
        tmp = out / f".tmp-{n}-{ctx.attempt}-{os.getpid()}"
        tmp.write_text(str(n), encoding="utf-8")
        try:
            os.link(tmp, target)  # the receiver keeps the first delivery under this key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return target.name

    ctx.step("charge", lambda: insert("charge"), atomic=True)
    time.sleep(pause)
    ctx.step("deliver", deliver)
    time.sleep(pause)
    ctx.step("record", lambda: insert("record"), atomic=True)
    return {"n": n}


CRASH_KIND = JobKind("test.crash_effects", crash_effects, policy=RetryPolicy(max_attempts=10, base_delay=0.05))


@pytest.fixture
def crash_kind() -> Iterator[JobKind]:
    """The crash kind, registered in this process for enqueueing."""
    with REGISTRY.temporary(CRASH_KIND) as kind:
        yield kind


def worker_settings(app: Flask) -> dict[str, Any]:
    """The settings a worker process needs to share `app`'s database, Redis and logs."""
    return {
        "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config.get("REDIS_URL"),
        "LOG_DIR": app.config["LOG_DIR"],
        "SECRET_KEY": app.config["SECRET_KEY"],
        "JWT_SECRET_KEY": app.config["JWT_SECRET_KEY"],
        "ERROR_STATS_ENABLED": False,
        **WORKER_SETTINGS,
    }


def start_worker(app: Flask, **options: Any) -> subprocess.Popen[bytes]:
    """A fresh worker process (`python -m`) on the same database (and Redis) as `app`."""
    spec = json.dumps({"settings": worker_settings(app), "options": options})
    return subprocess.Popen([sys.executable, "-m", "tests.system.test_jobs_crash", spec], cwd=ROOT)


def running_owners(app: Flask) -> list[str]:
    """The lease owners (worker ids, which contain the pid) of the jobs running now."""
    with app.app_context():
        owners = db.session.execute(select(Job.lease_owner).where(Job.status == RUNNING)).scalars().all()
        db.session.commit()
    return [owner for owner in owners if owner]


def wait_for_running(app: Flask, pids: list[int], timeout: float = 30.0) -> int | None:
    """Wait until one of the workers `pids` holds a lease on some job; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for owner in running_owners(app):
            for pid in pids:
                if f":{pid}:" in owner:
                    return pid
        time.sleep(0.02)
    return None


def enqueue_crash_jobs(app: Flask, out: Path, first: int, count: int, pause: float = 0.12) -> list[int]:
    """`count` crash jobs numbered from `first`."""
    with app.app_context():
        return [
            enqueue("test.crash_effects", {"n": n, "dir": str(out), "pause": pause}, idempotency_key=f"crash-{n}").id
            for n in range(first, first + count)
        ]


def prepare(app: Flask, out: Path) -> list[int]:
    """The effects table and the first batch of crash jobs."""
    with app.app_context():
        db.session.execute(text("DROP TABLE IF EXISTS crash_effects"))
        db.session.execute(
            text("CREATE TABLE crash_effects (job_id BIGINT, n INTEGER, step VARCHAR(20), attempt INTEGER)")
        )
        db.session.commit()
    return enqueue_crash_jobs(app, out, 0, JOBS)


def waiting_jobs(app: Flask) -> int:
    """Crash jobs not started yet."""
    with app.app_context():
        count = db.session.execute(
            text("SELECT count(*) FROM jobs WHERE kind = 'test.crash_effects' AND status IN ('queued', 'retrying')")
        ).scalar_one()
        db.session.commit()
    return int(count)


def kill_repeatedly(app: Flask, out: Path, ids: list[int]) -> int:
    """Keep POOL workers alive; SIGKILL whichever holds a job, KILLS times. The kills that hit a job.

    The queue is topped up so there is always a job to be killed in the middle of.
    """
    rng = random.Random(20261122)
    zygote = Zygote("tests.system.test_jobs_crash", worker_settings(app))
    live = [zygote.spawn(concurrency=2) for _ in range(POOL)]
    mid_job = 0
    try:
        for _ in range(KILLS):
            if waiting_jobs(app) < 10:
                ids += enqueue_crash_jobs(app, out, len(ids), 20)
            pid = wait_for_running(app, live)
            if pid is None:
                break
            time.sleep(rng.uniform(0.02, 0.3))
            kill(pid)
            mid_job += 1
            live.remove(pid)
            live.append(zygote.spawn(concurrency=2))
    finally:
        for pid in live:
            kill(pid)
        zygote.close()
    return mid_job


def check_nothing_lost_or_duplicated(app: Flask, ids: list[int], out: Path) -> dict[str, int]:
    """Every job ended succeeded or dead, and each side effect happened exactly once."""
    with app.app_context():
        rows = list(db.session.execute(select(Job).where(Job.id.in_(ids))).scalars())
        jobs = {j.id: (j.status, [e["code"] for e in j.errors or []]) for j in rows}
        unfinished = [
            (j.id, j.status, j.attempts, j.lease_owner, str(j.lease_expires_at), str(j.updated_at))
            for j in rows
            if j.status not in (SUCCEEDED, DEAD)
        ]
        effects = Counter(
            (row.job_id, row.step) for row in db.session.execute(text("SELECT job_id, step FROM crash_effects"))
        )
        db.session.commit()
    assert len(jobs) == len(ids), "a job record is missing"
    statuses = Counter(status for status, _ in jobs.values())
    assert set(statuses) <= {SUCCEEDED, DEAD}, (statuses, unfinished, time.time())
    duplicated = {key: count for key, count in effects.items() if count > 1}
    assert duplicated == {}, f"duplicated side effects: {duplicated}"
    delivered = {p.name for p in out.glob("delivered-*")}
    for job_id, (status, codes) in jobs.items():
        if status == SUCCEEDED:
            assert effects[(job_id, "charge")] == 1 and effects[(job_id, "record")] == 1, job_id
            assert f"delivered-job-{job_id}-deliver" in delivered, job_id
        else:
            assert codes, f"dead job {job_id} has no error history"
    attempts = (out / "attempts.log").read_text(encoding="utf-8").split()
    return {
        "jobs": len(jobs),
        "succeeded": statuses[SUCCEEDED],
        "dead": statuses[DEAD],
        "worker_lost_attempts": sum(codes.count("WORKER_LOST") for _, codes in jobs.values()),
        "deliver_calls": len(attempts),
        "deliveries": len(delivered),
    }


def crash_run(app: Flask, tmp_path: Path) -> dict[str, int]:
    out = tmp_path / "effects"
    out.mkdir()
    ids = prepare(app, out)
    started = time.monotonic()
    mid_job = kill_repeatedly(app, out, ids)
    assert mid_job == KILLS, f"only {mid_job} of {KILLS} kills hit a running job"
    final = start_worker(app, concurrency=2, drain=True, max_seconds=60)
    assert final.wait(90) == 0
    report = check_nothing_lost_or_duplicated(app, ids, out)
    report["seconds"] = round(time.monotonic() - started)
    assert report["worker_lost_attempts"] >= KILLS  # every kill took at least one job down with it
    return report


def test_sigkill_20_times_on_the_embedded_default_loses_and_duplicates_nothing(
    app: Flask, crash_kind: JobKind, tmp_path: Path
) -> None:
    report = crash_run(app, tmp_path)
    print("embedded crash run:", report)


def test_sigkill_20_times_on_redis_and_postgres_loses_and_duplicates_nothing(
    make_app: Any, _postgres_migrated: str, redis_url: str, crash_kind: JobKind, tmp_path: Path
) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI=_postgres_migrated, REDIS_URL=redis_url)
    try:
        report = crash_run(app, tmp_path)
        print("redis+postgres crash run:", report)
    finally:
        with app.app_context():
            db.session.execute(text("DROP TABLE IF EXISTS crash_effects"))
            db.session.execute(text("DELETE FROM job_steps"))
            db.session.execute(text("DELETE FROM jobs"))
            db.session.execute(text("DELETE FROM job_workers"))
            db.session.commit()


def one_slow_job(app: Flask, tmp_path: Path, pause: float) -> int:
    """The effects table and a single crash job whose pauses take `pause` seconds each."""
    out = tmp_path / "effects"
    out.mkdir()
    with app.app_context():
        db.session.execute(
            text("CREATE TABLE crash_effects (job_id BIGINT, n INTEGER, step VARCHAR(20), attempt INTEGER)")
        )
        db.session.commit()
    return enqueue_crash_jobs(app, out, 0, 1, pause=pause)[0]


def test_sigterm_lets_the_running_job_finish_then_exits(app: Flask, crash_kind: JobKind, tmp_path: Path) -> None:
    job_id = one_slow_job(app, tmp_path, 0.6)
    proc = start_worker(app)
    assert wait_for_running(app, [proc.pid])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job is not None and (job.status, job.attempts, job.errors) == (SUCCEEDED, 1, [])


def test_sigterm_after_the_grace_period_hands_the_job_back_uncounted(
    app: Flask, crash_kind: JobKind, tmp_path: Path
) -> None:
    job_id = one_slow_job(app, tmp_path, 3)
    proc = start_worker(app, shutdown_grace_seconds=0.3)
    assert wait_for_running(app, [proc.pid])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job is not None and (job.status, job.attempts, job.lease_owner) == ("retrying", 0, None)


def _worker_main(spec: dict[str, Any]) -> None:
    from backend.app import create_app
    from backend.app.jobs.worker import Worker, options_from_app
    from config import TestingConfig

    app = create_app(TestingConfig, **spec["settings"])
    REGISTRY.register(CRASH_KIND, replace=True)
    if not spec.get("zygote"):
        Worker(app, options_from_app(app, schedule=False, **spec["options"])).run()
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed children
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 1
            try:
                Worker(app, options_from_app(app, schedule=False, **json.loads(line))).run()
                code = 0
            finally:
                os._exit(code)
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _worker_main(json.loads(sys.argv[1]))
