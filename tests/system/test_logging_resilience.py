"""A broken, blocked or full LOG_DIR degrades logging and shows on health; requests never notice."""

from __future__ import annotations

import errno
import fcntl
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from backend.logging_config import SafeRotatingFileHandler, _state, configure_logging, flush_logs, sink_status
from tests.harness.app import ADMIN_EMAIL, bearer, login

ROOT = Path(__file__).resolve().parents[2]


def _fast_retry(seconds: float = 0.05) -> None:
    assert _state.listener is not None
    for sink in _state.listener.sinks:
        sink.retry_seconds = seconds


def _statuses(client: object) -> list[int]:
    return [
        client.get("/api/errors/catalog").status_code,  # type: ignore[attr-defined]
        client.get("/api/me").status_code,  # type: ignore[attr-defined]
        client.get("/no/such/page").status_code,  # type: ignore[attr-defined]
        client.post("/api/auth/login", json={"email": "x@example.com", "password": "wrong-password"}).status_code,  # type: ignore[attr-defined]
    ]


def _parse_all(log_dir: Path) -> int:
    count = 0
    for path in log_dir.glob("*.log*"):
        for raw in path.read_bytes().splitlines():
            json.loads(raw)
            count += 1
    return count


def test_log_dir_replaced_by_a_file_degrades_logging_not_requests_and_recovers(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app()
    client = app.test_client()
    admin = login(client, ADMIN_EMAIL, "admin-password-123")["access_token"]
    _fast_retry()
    normal = _statuses(client)
    assert normal == [200, 401, 404, 401]
    flush_logs()
    log_dir = Path(app.config["LOG_DIR"])
    assert sink_status()["state"] == "ok"

    # Root ignores permissions, so chmod proves nothing here: put a regular file where the
    # directory was. Every open, mkdir and stat under LOG_DIR now fails as it would on a
    # read-only or vanished mount.
    moved = tmp_path / "logs-moved"
    log_dir.rename(moved)
    log_dir.write_text("not a directory\n")
    for _ in range(3):
        assert _statuses(client) == normal
    flush_logs()
    time.sleep(0.1)
    assert _statuses(client) == normal
    flush_logs()

    status = sink_status()
    assert status["state"] == "degraded"
    perf = next(s for s in status["sinks"] if s["file"] == "performance.log")
    assert perf["state"] == "degraded" and perf["dropped"] > 0
    assert "NotADirectoryError" in perf["last_error"] or "FileExistsError" in perf["last_error"]
    health = client.get("/admin/api/monitoring/health/check", headers=bearer(admin))
    assert health.status_code == 200
    assert health.get_json()["checks"]["logs"] == "degraded"

    log_dir.unlink()
    moved.rename(log_dir)
    time.sleep(0.1)  # past the retry interval
    marker = "after-recovery-0123"
    assert client.get(f"/api/errors/catalog?marker={marker}").status_code == 200
    flush_logs()
    assert sink_status()["state"] == "ok"
    assert marker in (log_dir / "performance.log").read_text()
    assert _parse_all(log_dir) > 0  # every line written before and after still parses


def test_log_dir_removed_is_recreated(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    _fast_retry()
    log_dir = Path(app.config["LOG_DIR"])
    assert client.get("/api/errors/catalog").status_code == 200
    flush_logs()
    for path in log_dir.iterdir():
        path.unlink()
    log_dir.rmdir()
    for _ in range(5):
        assert client.get("/api/errors/catalog").status_code == 200
        flush_logs()
        time.sleep(0.06)
    assert (log_dir / "performance.log").exists()
    assert sink_status()["state"] == "ok"


def test_a_blocked_disk_never_blocks_requests_and_a_full_queue_drops_and_counts(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app()
    # The app's setup with a tiny queue, so it fills while the disk is blocked.
    configure_logging(log_dir=app.config["LOG_DIR"], level="INFO", queue_size=20)
    client = app.test_client()
    assert client.get("/api/errors/catalog").status_code == 200
    flush_logs()
    # Another process holding the file lock is what a slow or hung disk looks like to the writer.
    lock_path = Path(app.config["LOG_DIR"]) / ".__performance.lock"
    with lock_path.open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        statuses: list[int] = []

        def hammer() -> None:
            for _ in range(100):
                statuses.append(client.get("/api/errors/catalog").status_code)

        worker = threading.Thread(target=hammer)
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "requests waited on the blocked log file"
        assert statuses == [200] * 100
        status = sink_status()
        assert status["queue_dropped"] > 0
        assert status["state"] == "degraded"
        fcntl.flock(holder, fcntl.LOCK_UN)
    flush_logs()
    lines = (Path(app.config["LOG_DIR"]) / "performance.log").read_text().splitlines()
    assert len(lines) >= 20  # what was queued before the queue filled is written once the lock is free


FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, logging, resource, signal, sys, time
    sys.path.insert(0, {root!r})
    from backend.logging_config import _state, configure_logging, flush_logs, shutdown_logging, sink_status

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    configure_logging(log_dir={log_dir!r}, level="INFO", retry_seconds=0.05)
    log = logging.getLogger("tests.full")
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, hard))  # the disk is "full" at 40 kB
    for n in range(1500):
        log.info("before %s %s", n, "y" * 60)
        if n % 100 == 0:
            flush_logs()
    flush_logs()
    during = sink_status()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
    time.sleep(0.1)
    for n in range(50):
        log.info("after %s", n)
    flush_logs()
    after = sink_status()
    shutdown_logging()
    print(json.dumps({{"during": during, "after": after}}))
    """
)


def test_a_sink_out_of_space_stays_degraded_until_a_write_succeeds(tmp_path: Path) -> None:
    # The full-disk test below once read "ok" mid-outage on a slow machine: after the retry delay,
    # status() probed the file with open(), which succeeds on a full disk.
    sink = SafeRotatingFileHandler(str(tmp_path / "app.log"), max_bytes=10_000, backup_count=1, retry_seconds=0.0)
    sink._fail(OSError(errno.ENOSPC, "No space left on device"), 3)
    assert sink.status()["state"] == "degraded"
    assert sink.status()["state"] == "degraded"  # probed again after the retry delay: still degraded
    sink.write_lines(['{"n": 1}'])
    assert sink.status()["state"] == "ok" and sink.status()["dropped"] == 3


def test_a_sink_whose_directory_came_back_is_ok_again_without_traffic(tmp_path: Path) -> None:
    sink = SafeRotatingFileHandler(str(tmp_path / "app.log"), max_bytes=10_000, backup_count=1, retry_seconds=0.0)
    sink._fail(FileNotFoundError(errno.ENOENT, "No such file or directory"), 1)
    assert sink.status()["state"] == "ok"  # the probe opens the file: the directory is there


def test_a_full_disk_degrades_leaves_no_torn_line_and_recovers(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    script = FULL_DISK_CHILD.format(root=str(ROOT), log_dir=str(log_dir))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    app_during = next(s for s in report["during"]["sinks"] if s["file"] == "app.log")
    assert report["during"]["state"] == "degraded"
    assert app_during["dropped"] > 0 and "File too large" in app_during["last_error"]
    assert report["after"]["state"] == "ok"
    lines = [json.loads(raw) for raw in (log_dir / "app.log").read_bytes().splitlines()]  # none torn
    messages = [r["message"] for r in lines if r["logger"] == "tests.full"]
    assert any(m.startswith("before") for m in messages)
    assert [m for m in messages if m.startswith("after")] == [f"after {n}" for n in range(50)]
    assert (log_dir / "app.log").stat().st_size <= 40_000 + 50 * 400
