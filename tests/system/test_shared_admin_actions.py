"""Admin actions reach the processes that serve and render, or are refused (#15 points 1 and 2).

Real processes on 127.0.0.1: gunicorn with two sync workers (each request names its worker through the pid on
its performance.log line), `flask monitoring reset` as a separate CLI process, and `flask jobs worker` for
renders. Without Redis the actions travel through the SQLite file every process opens; with Redis through Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask
from sqlalchemy import text

from backend.app import create_app
from backend.app.errors import CircuitOpenError
from backend.app.extensions import db
from bench.harness import BENCH_SECRETS, Server, gunicorn
from config import TestingConfig
from tests.harness.app import ADMIN_EMAIL, base_settings, bearer, login, read_log
from tests.harness.contract import assert_error
from tests.harness.peers.audio import AudioFactory
from tests.harness.peers.gcs_emulator import GCSEmulator
from tests.harness.peers.sendgrid_peer import SendGridPeer
from tests.harness.render_jobs import finished, flask_worker, job_of, peer_settings, worker_env
from tests.harness.renders import User

ROOT = Path(__file__).resolve().parents[2]
FLASK = str(Path(sys.executable).with_name("flask"))
PASSWORD = "correct-horse-battery"
BREAKERS = "/admin/api/monitoring/circuit-breakers"

pytestmark = pytest.mark.slow


def app_env(workdir: Path, redis_url: str | None = None) -> dict[str, str]:
    """The environment every process of one deployment shares: one SQLite file, one log folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "LOG_", "DATABASE_URL", "REDIS_URL"))}
    env.update(BENCH_SECRETS)
    env.update(
        FLASK_APP="wsgi",
        FLASK_ENV="production",
        DATABASE_URL=f"sqlite:///{workdir / 'app.db'}",
        LOG_DIR=str(workdir / "logs"),
        ADMIN_EMAILS=ADMIN_EMAIL,
        RATELIMIT_ENABLED="false",
        PYTHONPATH=str(ROOT),
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
        env["CIRCUIT_BREAKER_KEY_PREFIX"] = f"test:{uuid.uuid4().hex[:8]}:"
    return env


def delete_keys(redis_url: str, prefix: str) -> None:
    """Remove one test's keys (other suites share the Redis server, under other prefixes)."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def flask_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `flask ARGS` in its own process, as an operator with a shell would."""
    return subprocess.run([FLASK, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Server, dict[str, str], str]]:
    """gunicorn (two sync workers) on a migrated SQLite file, Redis when the test asks; an admin token."""
    redis_url = request.getfixturevalue("redis_url") if getattr(request, "param", None) == "redis" else None
    env = app_env(tmp_path, redis_url)
    migrated = flask_cli(env, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    try:
        with gunicorn(env, workers=2, threads=1, worker_class="sync", ready_timeout=120) as server:
            http = requests.Session()
            register = {"email": ADMIN_EMAIL, "password": PASSWORD}
            http.post(server.url("/api/auth/register"), json=register, timeout=10)
            promoted = flask_cli(env, "users", "create-admin", ADMIN_EMAIL)
            assert promoted.returncode == 0, promoted.stderr[-2000:]
            answer = http.post(server.url("/api/auth/login"), json=register, timeout=10)
            assert answer.status_code == 200, answer.text
            yield server, env, answer.json()["access_token"]
    finally:
        if redis_url is not None:
            delete_keys(redis_url, env["CIRCUIT_BREAKER_KEY_PREFIX"])


def answering_pid(server: Server, request_id: str, timeout: float = 10.0) -> int:
    """The gunicorn worker that answered `request_id` (its performance.log line; logs are written in batches)."""
    deadline = time.monotonic() + timeout
    path = server.log_dir / "performance.log"
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if request_id in line:
                    entry = json.loads(line)
                    if entry.get("request_id") == request_id:
                        return int(entry["pid"])
        time.sleep(0.1)
    raise AssertionError(f"no performance.log line for request {request_id}")


def states_by_worker(server: Server, token: str, service: str, *, workers: int = 2) -> dict[int, set[str]]:
    """Ask (a new connection each time) until every worker has answered at least twice: {pid: states seen}."""
    seen: dict[int, list[str]] = {}
    for _ in range(80):
        answer = requests.get(server.url(BREAKERS), headers=bearer(token) | {"Connection": "close"}, timeout=10)
        assert answer.status_code == 200, answer.text
        pid = answering_pid(server, answer.headers["X-Request-ID"])
        seen.setdefault(pid, []).append(answer.json()["breakers"][service]["state"])
        if len(seen) >= workers and all(len(v) >= 2 for v in seen.values()):
            break
    assert len(seen) == workers, f"only workers {sorted(seen)} answered"
    return {pid: set(states) for pid, states in seen.items()}


def assert_every_worker_says(server: Server, token: str, service: str, state: str, within: float) -> None:
    """Wait the advertised propagation delay, then every worker must answer `state`, every time."""
    time.sleep(within + 0.3)
    states = states_by_worker(server, token, service)
    assert all(seen == {state} for seen in states.values()), states


@pytest.mark.parametrize("deployment", ["sqlite", "redis"], indirect=True)
def test_point1_api_and_cli_breaker_actions_reach_every_serving_process(
    deployment: tuple[Server, dict[str, str], str],
) -> None:
    """Force-open through one worker reaches the other; `flask monitoring reset` in its own process reaches both."""
    server, env, token = deployment
    within = 0.0 if "REDIS_URL" in env else 1.0  # what the answers below must advertise
    forced = requests.post(server.url(f"{BREAKERS}/storage/force-open"), headers=bearer(token), timeout=10)
    assert forced.status_code == 200, forced.text
    assert_every_worker_says(server, token, "storage", "forced_open", within)
    through = "redis" if "REDIS_URL" in env else "database"
    assert forced.json()["propagation"] == {"shared_through": through, "within_seconds": within}

    reset = flask_cli(env, "monitoring", "reset", "storage")
    assert reset.returncode == 0, reset.stderr[-2000:]
    assert "Reset storage." in reset.stdout
    assert_every_worker_says(server, token, "storage", "closed", within)
    says = "shared through Redis" if "REDIS_URL" in env else "within 1 s (shared through the database)"
    assert says in reset.stdout

    disabled = requests.post(server.url(f"{BREAKERS}/email/disable"), headers=bearer(token), timeout=10)
    assert disabled.status_code == 200, disabled.text
    assert_every_worker_says(server, token, "email", "disabled", within)


def test_point1_cli_reset_is_refused_when_redis_is_unreachable(make_app: Callable[..., Flask]) -> None:
    """Redis configured but down: no local-only reset that the server never sees, and no success logged."""
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0", CIRCUIT_BREAKER_REDIS_TIMEOUT=0.1)
    result = app.test_cli_runner().invoke(args=["monitoring", "reset", "storage"])
    assert result.exit_code != 0
    assert "ADMIN_ACTION_NOT_APPLIED" in result.output and "Redis" in result.output
    assert "Reset storage." not in result.output
    assert "Traceback" not in result.output
    events = [e.get("event_type") for e in read_log(app, "security.log")]
    assert "circuit_breaker_reset" not in events and "circuit_breaker_reset_refused" in events


def test_point1_api_action_is_refused_in_the_envelope_when_the_database_cannot_share_it(
    make_app: Callable[..., Flask],
) -> None:
    """Without Redis the database carries the action; when it refuses the write, 503 and nothing changed."""
    app = make_app()
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    with app.app_context():
        db.session.execute(text("DROP TABLE shared_overrides"))  # the write can only fail now
        db.session.commit()
    response = client.post(f"{BREAKERS}/storage/force-open", headers=headers)
    body = assert_error(response, 503, "ADMIN_ACTION_NOT_APPLIED")
    assert "Nothing was changed" in body["message"]
    assert app.extensions["breakers"].get("storage").state.value == "closed"


def test_point1_cli_refuses_when_breaker_state_cannot_leave_its_process(make_app: Callable[..., Flask]) -> None:
    """A database in memory and no Redis: the command says it cannot reach the server instead of "Reset"."""
    app = make_app(SQLALCHEMY_DATABASE_URI="sqlite://")
    result = app.test_cli_runner().invoke(args=["monitoring", "reset-all"])
    assert result.exit_code != 0
    assert "Not applied" in result.output and "admin API" in result.output
    assert "Reset" not in result.output.replace("Not applied", "")


@pytest.mark.parametrize("through", ["database", "redis"])
def test_point2_a_rendering_fault_reaches_the_job_worker_that_renders(
    make_app: Callable[..., Flask],
    gcs_emulator: GCSEmulator,
    gcs_bucket: str,
    sendgrid_peer: SendGridPeer,
    audio_files: AudioFactory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    through: str,
) -> None:
    """A `rendering` rule added through the API fails the render in a separate `flask jobs worker` process."""
    settings = {**peer_settings(tmp_path, gcs_emulator, gcs_bucket, sendgrid_peer), "FAULT_INJECTION_ENABLED": True}
    if through == "redis":
        redis_url = request.getfixturevalue("redis_url")
        settings["CIRCUIT_BREAKER_KEY_PREFIX"] = prefix = f"test:{uuid.uuid4().hex[:8]}:"  # the worker's too
        request.addfinalizer(lambda: delete_keys(redis_url, prefix))
        # Its own rate-limit keys too: the shared Redis keeps other runs' sign-up counts for an hour.
        app = make_app(**settings, REDIS_URL=redis_url, RATELIMIT_KEY_PREFIX=prefix)
    else:
        app = make_app(**settings)
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    rule = {"service": "rendering", "mode": "fail", "duration_seconds": 120}
    added = client.post("/admin/api/monitoring/faults", headers=headers, json=rule)
    assert added.status_code == 201, added.get_json()
    assert added.get_json()["scope"] == "shared"
    assert added.get_json()["propagation"] == {"shared_through": through, "within_seconds": 1.0}

    user = User(app.test_client(), "render@example.com")
    upload_id = user.upload(audio_files.make("mp3", seconds=1.0).read_bytes(), "song.mp3")
    started = user.start(upload_id)
    assert started.status_code == 202, started.get_json()
    render_id = started.get_json()["render"]["id"]

    output = finished(flask_worker(worker_env(app, settings), "--burst", "-q", "renders"), 120)
    job = job_of(app, render_id)
    assert job["status"] != "succeeded", (job, output[-2000:])
    assert job["errors"], job
    assert job["errors"][0]["code"] == "EXTERNAL_SERVICE_UNAVAILABLE", job["errors"]
    # The call the worker process made met the injected refusal (FFmpeg never ran): its outbound-call line says so.
    calls = [
        line
        for line in read_log(app, "performance.log")
        if line.get("metric") == "outbound_call" and line.get("service") == "rendering"
    ]
    assert calls and all(line["exc_type"] == "InjectedConnectionError" for line in calls), calls
    assert {line["pid"] for line in calls} and os.getpid() not in {line["pid"] for line in calls}
    assert user.get(render_id)["status"] != "succeeded"

    listing = client.get("/admin/api/monitoring/faults", headers=headers).get_json()
    assert [r["service"] for r in listing["rules"]] == ["rendering"]  # one rule, read back from the shared store
    cleared = client.delete("/admin/api/monitoring/faults/rendering", headers=headers)
    assert cleared.status_code == 200 and cleared.get_json()["rules"] == []


def test_point1_two_apps_on_one_database_share_admin_actions_within_the_refresh(make_app: Callable[..., Flask]) -> None:
    """Two apps on one SQLite file stand for two processes: a force-open in one is applied by the other."""
    first = make_app(OVERRIDES_REFRESH_SECONDS=0.2)
    second = create_app(TestingConfig, **{**base_settings(Path(first.config["LOG_DIR"]).parent)})
    try:
        breaker = second.extensions["breakers"].get("stripe")
        assert breaker.state.value == "closed"
        first.extensions["breakers"].get("stripe").force_open("test")
        deadline = time.monotonic() + 5
        while breaker.state.value != "forced_open" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert breaker.state.value == "forced_open"
        with pytest.raises(CircuitOpenError):
            breaker.acquire()
        first.extensions["breakers"].get("stripe").reset("test")
        deadline = time.monotonic() + 5
        while breaker.state.value != "closed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert breaker.state.value == "closed"
    finally:
        with second.app_context():
            db.engine.dispose()
