"""Several processes record into one database and the counts add up; a forked child never re-writes
its parent's pending events."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app import create_app
from backend.app.extensions import db
from backend.app.models import ErrorEvent, ErrorGroup, ErrorMinute
from backend.app.monitoring import flush_error_stats, record_error
from config import TestingConfig
from tests.harness.app import base_settings

PER_PROCESS = 120
PROCESSES = 2


def _worker(settings: dict[str, Any], worker: int) -> None:
    """A separate interpreter (spawn): its own app, its own writer thread, the shared database."""
    app = create_app(TestingConfig, **settings)
    client = app.test_client()
    for i in range(PER_PROCESS):
        # Half through real HTTP errors (signal path), half through record_error (job path).
        if i % 2 == 0:
            assert client.get(f"/missing/{worker}/{i}").status_code == 404
        else:
            with app.app_context():
                record_error(RuntimeError(f"job {worker}-{i} failed"), source="job", code="JOB_FAILED")
    flush_error_stats(app)
    with app.app_context():
        db.engine.dispose()


def _settings(tmp_path: Path) -> dict[str, Any]:
    # Every raw row kept (no 4xx sampling): the test checks that processes agree on rows as well as counts.
    return {**base_settings(tmp_path), "ERROR_EVENT_SAMPLE_PER_MINUTE": 10_000}


def _run_workers(settings: dict[str, Any]) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(settings, n)) for n in range(PROCESSES)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=90)
        assert proc.exitcode == 0, f"worker exited with {proc.exitcode}"


def _assert_counts(app: Flask) -> None:
    total = PER_PROCESS * PROCESSES
    with app.app_context():
        groups = dict(db.session.execute(select(ErrorGroup.code, ErrorGroup.count)).all())
        assert groups == {"NOT_FOUND": total // 2, "JOB_FAILED": total // 2}
        assert db.session.scalar(select(func.count()).select_from(ErrorEvent)) == total
        assert db.session.scalar(select(func.sum(ErrorMinute.errors))) == total
        assert db.session.scalar(select(func.sum(ErrorMinute.requests))) == total // 2


@pytest.mark.slow
def test_processes_sharing_one_sqlite_file_agree(tmp_path: Path, make_app: Callable[..., Flask]) -> None:
    app = make_app()  # copies the migrated database into tmp_path/test.db
    _run_workers(_settings(tmp_path))
    _assert_counts(app)


@pytest.mark.slow
@pytest.mark.postgres
def test_processes_sharing_one_postgres_database_agree(pg_app: Flask, tmp_path: Path) -> None:
    settings = {**_settings(tmp_path), "SQLALCHEMY_DATABASE_URI": pg_app.config["SQLALCHEMY_DATABASE_URI"]}
    _run_workers(settings)
    _assert_counts(pg_app)


def _forked_child(app: Flask) -> None:
    # The parent's pending event was inherited with the memory; it must not be written here.
    with app.app_context():
        record_error(RuntimeError("from the child"), source="job", code="CHILD")
    flush_error_stats(app)
    with app.app_context():
        db.engine.dispose()
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_write_its_parents_pending_events(app: Flask) -> None:
    with app.app_context():
        record_error(RuntimeError("from the parent"), source="job", code="PARENT")
        db.engine.dispose()  # no pooled connection crosses the fork
    child = multiprocessing.get_context("fork").Process(target=_forked_child, args=(app,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    flush_error_stats(app)
    with app.app_context():
        codes = dict(db.session.execute(select(ErrorGroup.code, ErrorGroup.count)).all())
    assert codes == {"PARENT": 1, "CHILD": 1}
