"""Many processes writing the same rotating files through the real configuration lose and tear nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from backend.logging_config import configure_logging, flush_logs, shutdown_logging, sink_status

PROCESSES = 4
LINES_PER_PROCESS = 20_000
MAX_BYTES = 512 * 1024  # small, so the 80,000 lines rotate dozens of times under contention
BACKUP_COUNT = 500  # enough that no rotated file is deleted: every line must still be found


def _writer(log_dir: str, worker: int, lines: int) -> None:
    """One process: the app's logging setup, then `lines` numbered lines (every 10th an error)."""
    import logging

    from backend.app import create_app
    from config import TestingConfig

    create_app(
        TestingConfig,
        LOG_DIR=log_dir,
        LOG_MAX_BYTES=MAX_BYTES,
        LOG_BACKUP_COUNT=BACKUP_COUNT,
        SQLALCHEMY_DATABASE_URI="sqlite://",
        ERROR_STATS_ENABLED=False,
    )
    logger = logging.getLogger("tests.process_safety")
    for n in range(lines):
        level = logging.ERROR if n % 10 == 0 else logging.INFO
        logger.log(level, "line %s-%s padding-to-make-the-lines-longer-%s", worker, n, "x" * 40, extra={"seq": n})
    flush_logs(timeout=120)
    status = sink_status()
    shutdown_logging()
    if status["queue_dropped"] or any(s["dropped"] for s in status["sinks"]):
        sys.exit(3)  # the parent asserts on exit codes: a drop would hide lines from the count


def _read_lines(log_dir: Path, stem: str) -> list[dict[str, object]]:
    records = []
    for path in sorted(log_dir.glob(f"{stem}*")):
        if path.name.startswith(".__"):
            continue  # lock files
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends mid-line"
        for raw in data.splitlines():
            records.append(json.loads(raw))  # raises on a torn or interleaved line
    return records


@pytest.mark.slow
def test_four_processes_rotating_lose_and_tear_no_line(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(log_dir), w, LINES_PER_PROCESS)) for w in range(PROCESSES)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * PROCESSES

    app_lines = [r for r in _read_lines(log_dir, "app.log") if r["logger"] == "tests.process_safety"]
    seen = Counter(r["message"] for r in app_lines)
    expected = {
        f"line {w}-{n} padding-to-make-the-lines-longer-{'x' * 40}"
        for w in range(PROCESSES)
        for n in range(LINES_PER_PROCESS)
    }
    assert len(app_lines) == PROCESSES * LINES_PER_PROCESS
    assert set(seen) == expected
    assert max(seen.values()) == 1  # exactly once: no duplicates from a re-flushed buffer

    error_lines = [r for r in _read_lines(log_dir, "errors.log") if r["logger"] == "tests.process_safety"]
    assert len(error_lines) == PROCESSES * LINES_PER_PROCESS // 10
    assert len({r["message"] for r in error_lines}) == len(error_lines)

    rotated = [p for p in log_dir.glob("app.log.*")]
    assert len(rotated) >= 10, "the test must actually exercise rotation"
    pids = {r["pid"] for r in app_lines}
    assert len(pids) == PROCESSES


def _forked_child(n: int) -> None:
    import logging

    logging.getLogger("tests.fork").info("from the child %s", n)


@pytest.mark.slow
def test_forked_children_get_their_own_writer_thread(tmp_path: Path) -> None:
    """A fork (gunicorn --preload, multiprocessing) does not inherit the writer thread: each child starts one."""
    import logging

    configure_logging(log_dir=tmp_path / "logs", level="INFO")
    logging.getLogger("tests.fork").info("from the parent before forking")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_forked_child, args=(n,)) for n in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    logging.getLogger("tests.fork").info("from the parent after forking")
    flush_logs()
    lines = [json.loads(x) for x in (tmp_path / "logs" / "app.log").read_text().splitlines()]
    messages = Counter(r["message"] for r in lines if r["logger"] == "tests.fork")
    # Each child line once (written by the child's own thread, flushed on its os._exit path),
    # and the parent's lines once (no child re-wrote the parent's queue).
    assert messages == Counter(
        {
            "from the parent before forking": 1,
            "from the child 0": 1,
            "from the child 1": 1,
            "from the child 2": 1,
            "from the parent after forking": 1,
        }
    )
    child_pids = {r["pid"] for r in lines if r["message"].startswith("from the child")}
    assert len(child_pids) == 3 and os.getpid() not in child_pids
