"""#15 point 11: the console and the CLI as a user meets them.

`make run` prints the URL it serves on and stays quiet while idle; every `flask ...` line the README shows
runs as written (a subprocess from the repository, the environment the README states, a fresh SQLite
database); a user's mistake is one `Error:` line and a non-zero exit, never a traceback; `flask credits
grant EMAIL N` adds credits through the ledger and writes security.log.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models import User
from backend.app.models.billing import GRANT, CreditEntry
from backend.app.resilience.retry import RetryPolicy
from backend.app.services import credits
from backend.logging_config import flush_logs
from tests.harness.app import read_log

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README = ROOT / "README.md"
EMAIL = "support-test@example.com"
PASSWORD = "a long password"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The shell the README describes: the virtualenv's `flask` first on PATH, run from the repository."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLASK_", "DATABASE_URL", "REDIS_URL", "JOBS_", "ADMIN_EMAILS", "LOG_"))
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DATABASE_URL=f"sqlite:///{tmp_path / 'oriel.db'}",
        LOG_DIR=str(tmp_path / "logs"),
        LOCAL_STORAGE_DIR=str(tmp_path / "storage"),
        ADMIN_EMAILS=EMAIL,
        **extra,
    )
    return env


def _flask(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["flask", *args], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=90)


def _messages(stderr: str) -> list[str]:
    """stderr without the development console's log lines (and click's usage lines around an error)."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def _assert_one_error_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in _messages(done.stderr) if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], done.stderr


BARE_MENTIONS = frozenset({"flask jobs enqueue"})


def readme_cli_lines() -> list[str]:
    """Every `flask ...` line the README shows, in the order a reader meets them: code-block lines (with their
    `# and: flask ...`) and inline code."""
    text = README.read_text(encoding="utf-8")
    found: list[tuple[int, str]] = [(m.start(), m.group(1)) for m in re.finditer(r"`(flask [^`]+)`", text)]
    fenced, offset = False, 0
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and line.startswith("flask "):
            command, _, comment = line.partition("  #")
            found.append((offset, command.strip()))
            found += [(offset, m.strip()) for m in re.findall(r"(?:and|or): (flask [^;#]+)", comment)]
        offset += len(line)
    ordered = [command for _, command in sorted(found, key=lambda item: item[0])]
    # A bare mention in a sentence ("... and `flask jobs enqueue` know") names a command shown in full elsewhere.
    return [c for c in dict.fromkeys(ordered) if c not in BARE_MENTIONS]


def _as_written(line: str) -> list[str]:
    """The README line with its placeholders filled in and its optional [parts] included."""
    line = re.sub(r"\[([^\]]*)\]", r"\1", line)
    for placeholder, value in (
        ("EMAIL", EMAIL),
        (" N", " 5"),
        ("<service>", "storage"),
        ("<id>", "1"),
        ("<rule>", "no-such-rule"),
        (" K ", " render "),
    ):
        line = line.replace(placeholder, value)
    return shlex.split(line)[1:]


# Lines naming an item a fresh database does not have: they must answer with one clear error line.
NAMES_MISSING_ITEMS = ("<id>", "<rule>", " 42", " 7 ")
RUNS_UNTIL_STOPPED = re.compile(r"^flask jobs worker(?! --burst)")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_point11_every_cli_line_of_the_readme_runs_as_written(tmp_path: Path) -> None:
    env = _env(tmp_path, FLASK_ENV="development")  # "beside `make run`: export FLASK_ENV=development"
    migrated = _flask(["db", "upgrade"], env)
    assert migrated.returncode == 0, migrated.stderr
    lines = readme_cli_lines()
    assert {"flask monitoring health", "flask credits grant EMAIL N", "flask jobs status"} <= set(lines)
    for line in lines:
        args = _as_written(line)
        if RUNS_UNTIL_STOPPED.match(line):
            process = subprocess.Popen(
                ["flask", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            time.sleep(4)  # started (or failed at once)
            process.send_signal(signal.SIGTERM)  # the README: "SIGTERM: finish running jobs, then exit"
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0 and "worker stopped" in out, (line, err)
            continue
        done = _flask(args, env, stdin=f"{PASSWORD}\n{PASSWORD}\n")
        assert "Traceback" not in done.stderr, (line, done.stderr)
        if any(marker in line for marker in NAMES_MISSING_ITEMS):
            assert done.returncode in (0, 1), (line, done.stderr)
            if done.returncode:
                _assert_one_error_line(done, "")
        else:
            assert done.returncode == 0, (line, done.stdout, done.stderr)


def test_point11_production_without_secrets_is_one_error_line_that_says_what_to_set(tmp_path: Path) -> None:
    done = _flask(["monitoring", "health"], _env(tmp_path))  # no FLASK_ENV: production
    _assert_one_error_line(done, "SECRET_KEY must be set")
    assert "FLASK_ENV=development" in done.stderr
    assert _messages(done.stderr) == [line for line in done.stderr.splitlines() if line.strip()]  # nothing else


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["jobs", "status"], "is not migrated (no such table: jobs): run `flask db upgrade`"),
        (["monitoring", "stats"], "is not migrated"),
        (["credits", "grant", EMAIL, "5"], "is not migrated"),
        (["users", "revoke-admin", EMAIL], "is not migrated"),
    ],
)
def test_point11_a_database_that_is_not_migrated_is_one_error_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    _assert_one_error_line(_flask(args, _env(tmp_path, FLASK_ENV="development")), expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["jobs", "enqueue", "nosuch.kind"], "Unknown job kind 'nosuch.kind'"),
        (["jobs", "enqueue", "maintenance.noop", "--key", "k" * 201], "must be 1 to 200 characters"),
        (["jobs", "worker", "-c", "0", "--burst"], "0 is not in the range"),
        (["monitoring", "dlq", "requeue", "99999999999999999999"], "is not in the range"),
        (["monitoring", "failed-work", "show", "email", "99999999999999999999"], "is not in the range"),
        (["monitoring", "prune-errors", "--days", "0"], "0 is not in the range"),
        (["credits", "grant", "nobody@example.com", "5"], "No account for nobody@example.com"),
        (["credits", "grant", EMAIL, "0"], "0 is not in the range 1<=x<=1000"),
        (["credits", "grant", EMAIL, "1001"], "1001 is not in the range 1<=x<=1000"),
        (["credits", "grant", EMAIL, "-3"], "No such option '-3'"),
    ],
)
def test_point11_user_errors_are_one_line_with_a_non_zero_exit(
    tmp_path: Path, migrated_sqlite_template: Path, args: list[str], expected: str
) -> None:
    shutil.copy(migrated_sqlite_template, tmp_path / "oriel.db")
    _assert_one_error_line(_flask(args, _env(tmp_path, FLASK_ENV="development")), expected)


def test_point11_credits_grant_adds_through_the_ledger_and_writes_security_log(app: Flask) -> None:
    from backend.app.auth.passwords import hash_password

    with app.app_context():
        user = User(email=EMAIL, password_hash=hash_password(PASSWORD))
        db.session.add(user)
        db.session.commit()
        user_id = user.id
    runner = app.test_cli_runner()
    first = runner.invoke(args=["credits", "grant", EMAIL.upper(), "5", "--reason", "sorry for the outage"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(args=["credits", "grant", EMAIL, "3"])
    assert second.exit_code == 0, second.output
    free = app.config["FREE_RENDER_CREDITS"]
    assert f"balance {free + 8}" in second.output
    with app.app_context():
        assert credits.balance(user_id) == free + 8
        ledger = db.session.scalar(select(func.sum(CreditEntry.amount)).where(CreditEntry.user_id == user_id))
        assert ledger == free + 8  # balance and history agree
        grants = db.session.scalars(
            select(CreditEntry).where(CreditEntry.user_id == user_id, CreditEntry.ref.like("cli:%"))
        ).all()
        assert sorted(g.amount for g in grants) == [3, 5] and all(g.kind == GRANT for g in grants)
        assert any("sorry for the outage" in g.reason for g in grants)
    lines = [e for e in read_log(app, "security.log") if e.get("event_type") == "credits_granted"]
    assert [(e["email"], e["amount"], e["balance"]) for e in lines] == [(EMAIL, 5, free + 5), (EMAIL, 3, free + 8)]
    assert all(e["actor"].startswith("cli:") and e["user_id"] == user_id for e in lines)

    missing = runner.invoke(args=["credits", "grant", "nobody@example.com", "5"])
    assert missing.exit_code == 1 and "No account for nobody@example.com" in missing.output


def _run_jobs(app: Flask, kinds: list[str]) -> None:
    with app.app_context():
        for kind in kinds:
            enqueue(kind, {})
    options = WorkerOptions(
        install_signals=False, schedule=False, poll_seconds=0.02, heartbeat_seconds=0.1, burst=True, max_seconds=30
    )
    Worker(app, options).run()


def test_point11_idle_periodic_runs_stay_off_the_console_while_work_and_failures_log(
    make_app: Callable[..., Flask], capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(LOG_CONSOLE=True)  # the development console, on this test's captured stderr
    periodic = sorted(p.name for p in REGISTRY.periodic())
    assert {"storage.sync", "email.outbox", "maintenance.compensations", "monitoring.alerts"} <= set(periodic)
    _run_jobs(app, periodic)  # a fresh database: every periodic job finds nothing to do
    flush_logs()
    idle = capsys.readouterr().err
    assert "job_duration" not in idle and "Pruned error statistics" not in idle, idle
    assert not [e for e in read_log(app, "performance.log") if e.get("metric") == "job_duration"]

    def busy(ctx: JobContext) -> dict[str, int]:
        return {"done": 1}

    def broken(ctx: JobContext) -> None:
        raise RuntimeError("the sweep broke")

    REGISTRY.register(JobKind("test.console_busy", busy), replace=True)
    REGISTRY.register(JobKind("test.console_broken", broken, policy=RetryPolicy(max_attempts=1)), replace=True)
    try:
        _run_jobs(app, ["test.console_busy", "test.console_broken"])
    finally:
        REGISTRY.unregister("test.console_busy")
        REGISTRY.unregister("test.console_broken")
    flush_logs()
    console = capsys.readouterr().err
    durations = [line for line in console.splitlines() if "job_duration" in line]
    assert len(durations) == 2 and all(" INFO " in line for line in durations), console
    assert "the sweep broke" in console  # the failure itself, at WARNING or ERROR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_point11_make_run_prints_its_url_and_an_idle_run_keeps_the_console_quiet(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(tmp_path, ALERTS_EVALUATE_SECONDS="1")  # make run sets FLASK_ENV=development itself
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            ["make", "run", f"PORT={port}"], cwd=ROOT, env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )
    banner = f"Serving on http://127.0.0.1:{port} (admin dashboard: http://127.0.0.1:{port}/admin/)"
    try:
        deadline = time.monotonic() + 90
        while banner not in out.read_text().splitlines() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert banner in out.read_text().splitlines(), (out.read_text(), err.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/", timeout=10) as page:
            assert page.status == 200
        time.sleep(8)  # the worker's first scheduler tick enqueues and runs every periodic job
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    console = err.read_text()
    assert "Worker" in console and "started" in console, console
    assert "job_duration" not in console, console
    with sqlite3.connect(tmp_path / "oriel.db") as conn:  # the periodic jobs did run: quietly
        ran = {kind for (kind,) in conn.execute("SELECT DISTINCT kind FROM jobs WHERE status = 'succeeded'")}
    assert {"storage.sync", "email.outbox", "maintenance.compensations", "monitoring.alerts"} <= ran, ran
