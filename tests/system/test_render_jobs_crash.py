"""Render workers killed with SIGKILL in the middle of FFmpeg, 20 times in a row, lose and duplicate nothing.

Renders are requested through the API (the credit is spent with the render row and its job); forked
worker processes render them with real FFmpeg into the bucket emulator and email through the SendGrid
peer. A worker is killed only once its render shows progress (FFmpeg is running and has reported), so
every kill lands mid-render. FFmpeg runs through a `-re` wrapper (reads the clip at its real speed), so
a 2 s clip takes about 2 s and there is time to kill it. Afterwards, per render: the job ended succeeded
or dead, one credit consumed (and one refund if it failed), one video object, one email at the peer.

Worker processes run this file as a module (`python -m tests.system.test_render_jobs_crash SPEC`); the killed
ones are forked from a process that imported the app once (as in tests/system/test_jobs_crash.py).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from backend.app.extensions import db
from backend.app.models import CreditEntry, Render
from backend.app.models.job import DEAD, RUNNING, SUCCEEDED, Job
from tests.harness.forked_workers import Zygote, kill
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.fault_proxy import FaultProxy
from tests.harness.peers.gcs_emulator import GCSEmulator
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.render_jobs import peer_settings
from tests.harness.renders import DEDUP_HEADER, SMALL, User

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20
LIVE_WORKERS = 2
WAITING = 2  # renders kept queued so a worker always has one to be killed in the middle of
JOBS = {"JOBS_LEASE_SECONDS": 1.0, "JOBS_HEARTBEAT_SECONDS": 0.25, "JOBS_POLL_SECONDS": 0.1}

pytestmark = pytest.mark.slow


def realtime_ffmpeg(folder: Path) -> str:
    """An FFmpeg that reads its input at the clip's real speed (`-re`): a 2 s clip renders in about 2 s."""
    import imageio_ffmpeg

    script = folder / "ffmpeg-realtime"
    script.write_text(f'#!/bin/sh\nexec "{imageio_ffmpeg.get_ffmpeg_exe()}" -re "$@"\n', encoding="utf-8")
    script.chmod(0o755)
    return str(script)


def crash_settings(
    tmp_path: Path, gcs_emulator: GCSEmulator, gcs_bucket: str, sendgrid_peer: SendGridPeer, bucket_proxy: FaultProxy
) -> dict[str, Any]:
    """Peers (the bucket through a counting proxy), a throttled FFmpeg, short leases, credits and attempts."""
    return {
        **peer_settings(tmp_path, gcs_emulator, gcs_bucket, sendgrid_peer),
        "GCS_ENDPOINT": bucket_proxy.url,
        **JOBS,
        "FFMPEG_BINARY": realtime_ffmpeg(tmp_path),
        "FREE_RENDER_CREDITS": 100,
        "RENDER_JOB_MAX_ATTEMPTS": 8,
        "RATELIMIT_ENABLED": False,
    }


def worker_settings(app: Flask, settings: dict[str, Any]) -> dict[str, Any]:
    """What a worker process passes to create_app: `app`'s database, Redis, logs and the peers."""
    return {
        **settings,
        "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config.get("REDIS_URL"),
        "LOG_DIR": app.config["LOG_DIR"],
        "SECRET_KEY": app.config["SECRET_KEY"],
        "JWT_SECRET_KEY": app.config["JWT_SECRET_KEY"],
        "ERROR_STATS_ENABLED": False,
    }


def mid_render(app: Flask, pids: list[int], timeout: float = 30.0) -> int | None:
    """Wait until one of `pids` runs a render job whose render shows progress (FFmpeg is at work); its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.app_context():
            running = db.session.execute(
                select(Job.lease_owner, Job.payload).where(Job.kind == "render", Job.status == RUNNING)
            ).all()
            owners = {int(payload["render_id"]): owner for owner, payload in running if owner}
            busy = db.session.scalars(
                select(Render.id).where(Render.id.in_(owners), Render.status == RUNNING, Render.progress > 0)
            ).all()
            db.session.commit()
        for render_id in busy:
            for pid in pids:
                if f":{pid}:" in owners[render_id]:
                    return pid
        time.sleep(0.02)
    return None


def waiting_renders(app: Flask) -> int:
    """Render jobs not started yet."""
    with app.app_context():
        count = len(
            db.session.scalars(select(Job.id).where(Job.kind == "render", Job.status.in_(("queued", "retrying")))).all()
        )
        db.session.commit()
    return count


def kill_mid_render_repeatedly(app: Flask, settings: dict[str, Any], user: User, upload_id: int) -> list[int]:
    """Keep LIVE_WORKERS workers alive and SIGKILL one in the middle of a render, KILLS times; the render ids."""
    rng = random.Random(20261122)
    renders: list[int] = []
    zygote = Zygote("tests.system.test_render_jobs_crash", worker_settings(app, settings))
    live = [zygote.spawn() for _ in range(LIVE_WORKERS)]
    kills = 0
    try:
        for _ in range(KILLS):
            while waiting_renders(app) < WAITING:
                response = user.start(upload_id, **SMALL)
                assert response.status_code == 202, response.get_json()
                renders.append(response.get_json()["render"]["id"])
            pid = mid_render(app, live)
            assert pid is not None, "no worker got into the middle of a render"
            time.sleep(rng.uniform(0.0, 0.4))
            kill(pid)
            kills += 1
            live.remove(pid)
            live.append(zygote.spawn())
    finally:
        for pid in live:
            kill(pid)
        zygote.close()
    assert kills == KILLS
    return renders


def drain(app: Flask, settings: dict[str, Any]) -> None:
    """A fresh worker process runs everything left (including lost jobs, once their leases expire)."""
    spec = json.dumps({"settings": worker_settings(app, settings), "options": {"concurrency": 2, "drain": True}})
    proc = subprocess.Popen([sys.executable, "-m", "tests.system.test_render_jobs_crash", spec], cwd=ROOT)
    assert proc.wait(90) == 0


def check_each_render_once(
    app: Flask,
    renders: list[int],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    bucket_proxy: FaultProxy,
) -> dict[str, int]:
    """Every render's job ended succeeded or dead, and each side effect happened exactly once."""
    with app.app_context():
        jobs = {
            int(job.payload["render_id"]): (job.status, [e["code"] for e in job.errors or []])
            for job in db.session.scalars(select(Job).where(Job.kind == "render"))
        }
        rows = {r.id: (r.status, r.credit_refunded) for r in db.session.scalars(select(Render))}
        ledger = Counter((e.kind, e.ref) for e in db.session.scalars(select(CreditEntry)) if e.kind != "grant")
        db.session.commit()
    assert sorted(jobs) == sorted(renders) == sorted(rows), "a render or its job is missing"
    statuses = Counter(status for status, _ in jobs.values())
    assert set(statuses) <= {SUCCEEDED, DEAD}, statuses
    objects = Counter(
        b.name for b in gcs_emulator.client().list_blobs(gcs_bucket, prefix="renders/", timeout=5, retry=None)
    )
    for render_id, (status, codes) in jobs.items():
        ref = f"render:{render_id}"
        assert ledger[("consume", ref)] == 1, (render_id, ledger)
        finished_mails = sendgrid_peer.count(header=(DEDUP_HEADER, f"render-finished:{render_id}"))
        failed_mails = sendgrid_peer.count(header=(DEDUP_HEADER, f"render-failed:{render_id}"))
        if status == SUCCEEDED:
            assert rows[render_id] == ("succeeded", False), render_id
            assert ledger[("refund", ref)] == 0, render_id
            assert objects[f"renders/{render_id}.mp4"] == 1, render_id
            assert (finished_mails, failed_mails) == (1, 0), render_id
        else:
            assert rows[render_id] == ("failed", True), render_id  # settled by the job's compensation
            assert ledger[("refund", ref)] == 1, render_id
            assert (finished_mails, failed_mails) == (0, 1), render_id
            assert codes, f"dead render job {render_id} has no error history"
    assert set(objects) <= {f"renders/{render_id}.mp4" for render_id in jobs}, objects
    assert len(sendgrid_peer.messages) == len(renders), "an email was sent twice or for nothing"
    # Kills land mid-FFmpeg, before the upload: the store_video step then uploads each video exactly once.
    uploads = [r for r in bucket_proxy.seen if r.method == "POST" and r.path.startswith("/upload/")]
    assert len(uploads) == len(renders) + 1, f"{len(uploads)} uploads for {len(renders)} videos and one audio file"
    return {
        "renders": len(renders),
        "succeeded": statuses[SUCCEEDED],
        "dead": statuses[DEAD],
        "worker_lost_attempts": sum(codes.count("WORKER_LOST") for _, codes in jobs.values()),
        "emails": len(sendgrid_peer.messages),
        "videos": len(objects),
        "uploads": len(uploads),
    }


def crash_run(
    app: Flask,
    settings: dict[str, Any],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    bucket_proxy: FaultProxy,
    audio_files: AudioFactory,
) -> dict[str, int]:
    """Upload a clip, kill workers mid-render KILLS times, drain, and check every render; a report."""
    user = User(app.test_client(), "crash@example.com")
    upload_id = user.upload(audio_files.make("wav", seconds=2).read_bytes(), "clip.wav")
    started = time.monotonic()
    renders = kill_mid_render_repeatedly(app, settings, user, upload_id)
    drain(app, settings)
    report = check_each_render_once(app, renders, gcs_emulator, gcs_bucket, sendgrid_peer, bucket_proxy)
    assert report["worker_lost_attempts"] >= KILLS  # every kill took a render down with it
    report["seconds"] = round(time.monotonic() - started)
    return report


def test_render_workers_sigkilled_mid_render_20_times_on_the_embedded_default_lose_and_duplicate_nothing(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    audio_files: AudioFactory,
    make_fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url)
    settings = crash_settings(tmp_path, gcs_emulator, gcs_bucket, sendgrid_peer, proxy)
    app = make_app(**settings)
    report = crash_run(app, settings, gcs_emulator, gcs_bucket, sendgrid_peer, proxy, audio_files)
    print("embedded render crash run:", report)


@pytest.mark.postgres
def test_render_workers_sigkilled_mid_render_20_times_on_redis_and_postgres_lose_and_duplicate_nothing(
    pg_redis_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    audio_files: AudioFactory,
    make_fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = make_fault_proxy(gcs_emulator.url)
    settings = crash_settings(tmp_path, gcs_emulator, gcs_bucket, sendgrid_peer, proxy)
    app = pg_redis_app(**settings)
    report = crash_run(app, settings, gcs_emulator, gcs_bucket, sendgrid_peer, proxy, audio_files)
    print("redis+postgres render crash run:", report)


def _worker_main(spec: dict[str, Any]) -> None:
    from backend.app import create_app
    from backend.app.jobs.worker import Worker, options_from_app
    from config import TestingConfig

    app = create_app(TestingConfig, **spec["settings"])
    if not spec.get("zygote"):
        Worker(app, options_from_app(app, schedule=False, max_seconds=60, **spec["options"])).run()
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
