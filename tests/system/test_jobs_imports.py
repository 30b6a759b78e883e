"""#13 point 11: every process that can enqueue knows the kinds JOBS_IMPORTS registers, not only workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text

from backend.app import create_app
from backend.app.jobs import REGISTRY, JobImportError
from config import TestingConfig
from tests.harness.app import base_settings

ROOT = Path(__file__).resolve().parents[2]
FLASK = str(Path(sys.executable).with_name("flask"))


def _cli_env(tmp_path: Path, database: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBS_", "DATABASE_URL", "REDIS_URL"))}
    env.update(
        FLASK_APP="wsgi",
        FLASK_ENV="testing",
        DATABASE_URL=f"sqlite:///{database}",
        LOG_DIR=str(tmp_path / "logs"),
        LOCAL_STORAGE_DIR=str(tmp_path / "storage"),
        **extra,
    )
    return env


def test_point11_flask_jobs_enqueue_knows_the_kinds_jobs_imports_registers(
    tmp_path: Path, migrated_sqlite_template: Path
) -> None:
    database = tmp_path / "cli.db"
    shutil.copy(migrated_sqlite_template, database)
    command = [FLASK, "jobs", "enqueue", "tests.extra.echo", "--payload", '{"n": 1}', "--key", "once"]

    without = subprocess.run(command, cwd=ROOT, env=_cli_env(tmp_path, database), capture_output=True, timeout=60)
    assert without.returncode != 0 and b"Unknown job kind 'tests.extra.echo'" in without.stderr

    env = _cli_env(tmp_path, database, JOBS_IMPORTS="tests.harness.jobs_extra")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    job = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert (job["kind"], job["status"]) == ("tests.extra.echo", "queued")
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert json.loads(again.stdout.decode().strip().splitlines()[-1])["id"] == job["id"]  # its key: one job
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, payload FROM jobs WHERE kind = 'tests.extra.echo'")).all()
    engine.dispose()
    assert len(rows) == 1 and json.loads(rows[0][1]) == {"n": 1}


def test_point11_the_app_registers_jobs_imports_kinds_when_it_is_built(make_app: pytest.FixtureRequest) -> None:
    app: Flask = make_app(JOBS_IMPORTS=("tests.harness.jobs_extra",))
    assert REGISTRY.get("tests.extra.echo") is not None
    with app.app_context():
        from backend.app.jobs import enqueue

        assert enqueue("tests.extra.echo", {"n": 2}).kind == "tests.extra.echo"


def test_point11_an_unimportable_jobs_imports_module_stops_the_app_with_its_name(tmp_path: Path) -> None:
    settings = {**base_settings(tmp_path), "JOBS_IMPORTS": "tests.no_such_module_here"}
    with pytest.raises(JobImportError, match=r"tests\.no_such_module_here"):
        create_app(TestingConfig, **settings)


def test_point11_flask_jobs_enqueue_with_an_unimportable_jobs_imports_module_fails_naming_it(
    tmp_path: Path, migrated_sqlite_template: Path
) -> None:
    database = tmp_path / "cli.db"
    shutil.copy(migrated_sqlite_template, database)
    env = _cli_env(tmp_path, database, JOBS_IMPORTS="tests.harness.jobs_extra, tests.no_such_module_here")
    command = [FLASK, "jobs", "enqueue", "tests.extra.echo", "--payload", "{}"]
    failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert failed.returncode != 0
    assert b"JOBS_IMPORTS names 'tests.no_such_module_here', which cannot be imported" in failed.stderr
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0  # nothing enqueued
    engine.dispose()
