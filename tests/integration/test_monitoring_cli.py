"""`flask monitoring ...` for an admin on the box: every command as a table and as --json, the same data
as the admin API, and admin actions written to security.log with the actor "cli:<os user>"."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from backend.app.admin.cli import cli_actor, table
from backend.app.errors import ValidationError
from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue
from backend.app.jobs.registry import JobKind
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models.job import DEAD, QUEUED, Job
from backend.app.monitoring import flush_error_stats
from backend.app.resilience.retry import RetryPolicy
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log

KIND = "test.cli_bad_data"


def run(app: Flask, *args: str) -> Result:
    """Invoke `flask monitoring <args>` in-process."""
    return app.test_cli_runner().invoke(args=["monitoring", *args])


def run_json(app: Flask, *args: str) -> Any:
    """Invoke with --json; the parsed output (the command must succeed)."""
    result = run(app, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def api(app: Flask, path: str) -> Any:
    """The admin API's answer for the same read."""
    client = app.test_client()
    response = client.get(path, headers=bearer(login(client, ADMIN_EMAIL)["access_token"]))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def dead_letter(app: Flask) -> Iterator[int]:
    """A real dead letter from the job engine (a data issue, no retry)."""

    def handler(ctx: JobContext) -> None:
        raise ValidationError("Audio file has no samples", field="file")

    REGISTRY.register(JobKind(KIND, handler, policy=RetryPolicy(permanent_retries=0)), replace=True)
    with app.app_context():
        job_id = enqueue(KIND, {"upload": 3}).id
    options = WorkerOptions(install_signals=False, schedule=False, poll_seconds=0.02, burst=True, max_seconds=10.0)
    Worker(app, options).run()
    yield job_id
    REGISTRY.unregister(KIND)


def test_table_pads_columns_and_upper_cases_headers() -> None:
    text = table(("service", "state"), [["email", "open"], ["database", None]])
    assert text.splitlines() == ["SERVICE   STATE", "--------  -----", "email     open", "database"]


def test_cli_actor_names_the_os_user() -> None:
    assert cli_actor() == f"cli:{getpass.getuser()}"


def test_monitoring_group_keeps_prune_errors_and_lists_every_command(app: Flask) -> None:
    result = run(app, "--help")
    assert result.exit_code == 0
    for name in ("health", "stats", "breakers", "reset", "reset-all", "dlq", "alerts", "failed-work", "prune-errors"):
        assert f"  {name} " in result.output, name
    assert run(app, "dlq", "--help").exit_code == 0 and "requeue" in run(app, "dlq", "--help").output


def test_health_as_table_and_json(app: Flask) -> None:
    result = run(app, "health")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Overall: ")
    assert lines[1].split() == ["SERVICE", "CONFIGURED", "PROBE", "LATENCY", "BREAKER", "DETAIL"]
    database = next(line for line in lines if line.startswith("database "))
    assert database.split()[:4] == ["database", "yes", "ok", database.split()[3]] and "closed" in database
    assert any(line.startswith("stripe ") and "not_configured" in line for line in lines)
    assert lines[-1] == "Queue: 0 ready, 0 scheduled, 0 running; 0 worker(s) alive; 0 dead letter(s). Logs: ok."
    data = run_json(app, "health")
    assert set(data["services"]) == set(api(app, "/admin/api/monitoring/health/services")["services"])
    assert data["services"]["database"]["probe"]["status"] == "ok"


def test_stats_as_table_and_json_match_the_api(app: Flask) -> None:
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/me").status_code == 401  # three recorded errors, one group
    flush_error_stats(app)
    result = run(app, "stats", "--top", "5")
    assert result.exit_code == 0, result.output
    assert "Errors: 3 in 1 groups (1 unresolved" in result.output
    assert "WINDOW  REQUESTS  5XX  5XX RATIO  4XX  4XX RATIO" in result.output  # #15 point 4: apart
    five_minutes = next(line.split() for line in result.output.splitlines() if line.startswith("5m "))
    assert five_minutes[2:4] == ["0", "0.00%"] and five_minutes[4] == "3"  # three 401s: client errors
    assert any(line.split()[:4] == ["1", "TOKEN_MISSING", "3", "3"] for line in result.output.splitlines())
    data = run_json(app, "stats")
    via_api = api(app, "/admin/api/monitoring/errors/stats")
    assert data["totals"] == {**via_api["totals"]} and data["top_groups"][0]["code"] == "TOKEN_MISSING"
    assert run(app, "stats", "--top", "0").exit_code == 2  # click refuses it


def test_breakers_reset_and_reset_all_log_the_cli_actor(app: Flask) -> None:
    registry = app.extensions["breakers"]
    registry.get("email").force_open("test")
    registry.get("stripe").disable("test")
    result = run(app, "breakers")
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split()[:3] == ["SERVICE", "STATE", "FAILURES"]
    assert any(line.split()[:2] == ["email", "forced_open"] for line in result.output.splitlines())
    assert run_json(app, "breakers")["breakers"]["stripe"]["state"] == "disabled"

    result = run(app, "reset", "email")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Reset email.") and "closed" in result.output
    assert registry.get("email").snapshot()["state"] == "closed"
    assert registry.get("stripe").snapshot()["state"] == "disabled"  # only the one named

    data = run_json(app, "reset-all")
    assert data["action"] == "reset" and {s["state"] for s in data["breakers"].values()} == {"closed"}
    registry.get("storage").force_open("test")
    result = run(app, "reset-all")
    assert result.exit_code == 0 and result.output.startswith("Reset 5 breakers.")
    assert registry.get("storage").snapshot()["state"] == "closed"

    data = run_json(app, "reset", "email")
    assert data["breakers"]["email"]["state"] == "closed"
    actor = cli_actor()
    events = [e for e in read_log(app, "security.log") if e.get("event_type") == "circuit_breaker_reset"]
    assert any(e["breaker"] == "email" and e["actor"] == actor for e in events)
    assert {e["breaker"] for e in events if e["actor"] == actor} >= {"email", "stripe", "storage", "database"}


def test_reset_of_an_unknown_breaker_fails_without_creating_one(app: Flask) -> None:
    result = run(app, "reset", "nosuch")
    assert result.exit_code == 1 and "No circuit breaker named 'nosuch'" in result.output
    assert "nosuch" not in app.extensions["breakers"].all()


def test_dlq_list_and_requeue(app: Flask, dead_letter: int) -> None:
    result = run(app, "dlq", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "1 dead letter(s)"
    assert lines[1].split()[:4] == ["ID", "KIND", "ANALYSIS", "ATTEMPTS"]
    assert lines[3].split()[:4] == [str(dead_letter), KIND, "data_issue", "1/5"]
    assert "VALIDATION_ERROR Audio file has no samples" in lines[3]
    data = run_json(app, "dlq", "list", "--kind", KIND)
    assert data["total"] == 1 and data["items"][0]["id"] == dead_letter
    assert run_json(app, "dlq", "list", "--kind", "other.kind") == {"items": [], "total": 0}

    result = run(app, "dlq", "requeue", str(dead_letter))
    assert result.exit_code == 0 and result.output.strip() == f"Requeued dead letter {dead_letter}."
    with app.app_context():
        job = db.session.get(Job, dead_letter)
        assert job.status == QUEUED and job.errors[-1]["message"] == f"Requeued by {cli_actor()}"
    again = run(app, "dlq", "requeue", str(dead_letter))  # no longer dead
    assert again.exit_code == 1 and "No dead letter" in again.output
    assert run_json(app, "dlq", "list")["total"] == 0
    audit = [e for e in read_log(app, "security.log") if e.get("event_type") == "dead_letter_requeued"]
    assert audit and audit[-1]["actor"] == cli_actor() and audit[-1]["job_ids"] == [dead_letter]


def test_dlq_requeue_json(app: Flask, dead_letter: int) -> None:
    assert run_json(app, "dlq", "requeue", str(dead_letter)) == {
        "message": "Requeued 1 dead letter.",
        "job_ids": [dead_letter],
    }
    with app.app_context():
        assert db.session.get(Job, dead_letter).status != DEAD


def _rule(app: Flask, body: dict[str, Any]) -> None:
    client = app.test_client()
    response = client.post(
        "/admin/api/monitoring/alerts/configure",
        json=body,
        headers=bearer(login(client, ADMIN_EMAIL)["access_token"]),
    )
    assert response.status_code == 200, response.get_json()


def test_alerts_test_evaluates_without_changing_state_or_sending(app: Flask, webhook_receiver: Any) -> None:
    hook = [{"type": "webhook", "url": webhook_receiver.url}]
    _rule(app, {"name": "email-breaker", "kind": "breaker_open", "params": {"service": "email"}, "channels": hook})
    result = run(app, "alerts", "test", "email-breaker")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "email-breaker (breaker_open, enabled, now ok): would not fire",
        "circuit breaker email is closed",
    ]
    app.extensions["breakers"].get("email").force_open("test")
    data = run_json(app, "alerts", "test", "email-breaker")
    assert data["would_fire"] is True and data["state"] == "ok" and "forced_open" in data["summary"]
    result = run(app, "alerts", "test", "email-breaker")
    assert "WOULD FIRE" in result.output
    rules = api(app, "/admin/api/monitoring/alerts/configure")
    assert rules["rules"][0]["state"] == "ok" and rules["deliveries"] == []  # a dry run: nothing recorded
    assert webhook_receiver.bodies == []
    missing = run(app, "alerts", "test", "no-such-rule")
    assert missing.exit_code == 1 and "No alert rule named 'no-such-rule'" in missing.output
