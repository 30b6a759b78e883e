"""Multi-process consistency: 4 gunicorn workers and 2 job workers on Redis + PostgreSQL agree on breaker
state, rate limits, error statistics and metrics.

Every request goes on a new connection (urllib never reuses one) with its own X-Request-ID; the request
log's `pid` field proves the requests really were answered by several workers, not assumed to be.

The job workers are held to the same agreement through the work they really do: renders enqueued through
`POST /api/renders`, run by `flask jobs worker` with FFmpeg behind the `rendering` breaker. FFmpeg is a
wrapper that logs which process started it for which render, so "both job workers did work", "no job
called FFmpeg through an open breaker" and "each render ran once" are read from what happened, not from
what the app says about itself. Rate limits are the web workers' alone: job workers serve no HTTP.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import imageio_ffmpeg
import pytest
import redis

from tests.harness.app import ADMIN_EMAIL
from tests.harness.peers.audio import AudioFactory
from tests.harness.system import Answer, System, running_system

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

WORKERS = 4
ROUNDS = 40  # requests per check: enough for every worker to answer several
RENDERS = 8  # renders per job check: more than two job workers take one at a time
RENDERING_RETRY_AFTER = 3  # the rendering breaker's recovery timeout, so a forced-open breaker says Retry-After 3
RENDER = {"preset": "waveform", "resolution": "320x180", "fps": 24}
FFMPEG_LOG = "ffmpeg-calls.log"
T = TypeVar("T")


def _counting_ffmpeg(folder: Path) -> Path:
    """An FFmpeg that appends "<parent pid> <last argument>" to FFMPEG_LOG beside it, then runs the real one.

    The parent is the process that started FFmpeg: a job worker for a render (whose last argument is the
    output file in `oriel-render-<id>-...`), a web worker for the probe of an upload.
    """
    log = folder / FFMPEG_LOG
    binary = folder / "ffmpeg"
    binary.write_text(
        "#!/bin/sh\n"
        "for last; do :; done\n"
        f'printf \'%s %s\\n\' "$PPID" "$last" >> "{log}"\n'
        f'exec "{imageio_ffmpeg.get_ffmpeg_exe()}" "$@"\n',
        encoding="utf-8",
    )
    binary.chmod(0o755)
    return binary


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """4 gunicorn workers (1 thread each, so concurrent requests must use other processes) and 2 job workers."""
    workdir = tmp_path_factory.mktemp("consistency")
    ffmpeg = _counting_ffmpeg(workdir)
    (workdir / "render").mkdir()
    with running_system(
        workdir,
        workers=WORKERS,
        threads=1,
        job_workers=2,
        redis_db=8,
        extra={
            "FAULT_INJECTION_ENABLED": "true",
            "REQUEST_LOGGING_ENABLED": "true",
            "FFMPEG_BINARY": str(ffmpeg),
            "FREE_RENDER_CREDITS": "50",
            "RENDER_WORK_DIR": str(workdir / "render"),
            "RENDER_MIN_FREE_DISK_MB": "0",
            "RENDER_MIN_FREE_MEMORY_MB": "0",
            "RENDER_JOB_MAX_ATTEMPTS": "25",  # a job waits out the forced-open breaker; it must not run out
            "CIRCUIT_BREAKERS": json.dumps({"rendering": {"recovery_timeout": RENDERING_RETRY_AFTER}}),
        },
    ) as running:
        _wait_for_every_worker(running)
        yield running


def _wait_for_every_worker(system: System, timeout: float = 90.0) -> None:
    """Readiness means one worker answered; the others may still be importing the app, so wait for all."""
    deadline = time.monotonic() + timeout
    while True:
        ids = {rid for rid, _ in _traced_many(system, 16, "GET", "/healthz")}
        if len(_pids(system, ids)) >= WORKERS or time.monotonic() > deadline:
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tokens(system: System) -> dict[str, dict[str, str]]:
    """An admin's and a user's Authorization headers, logged in once (logins count against the login limit)."""
    return {
        "admin": {"Authorization": f"Bearer {system.token(ADMIN_EMAIL)}"},
        "user": {"Authorization": f"Bearer {system.token('buyer@example.com')}"},
    }


def _traced(system: System, method: str, path: str, payload: object = None, **headers: str) -> tuple[str, Answer]:
    rid = uuid.uuid4().hex
    return rid, system.call(method, path, payload, headers={"X-Request-ID": rid, **headers})


def _traced_many(
    system: System, count: int, method: str, path: object, payload: object = None, **headers: str
) -> list[tuple[str, Answer]]:
    """`count` traced requests, 8 at a time: concurrency is what makes them land on several workers.

    Sent one by one, the worker that just answered usually wins the next accept, so a sequential
    loop can stay on one or two processes and prove nothing about the others. `path` and `payload`
    may be functions of the request's number.
    """
    requests = [
        (path(n) if callable(path) else path, payload(n) if callable(payload) else payload) for n in range(count)
    ]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda r: _traced(system, method, r[0], r[1], **headers), requests))


def _pids(system: System, request_ids: set[str], timeout: float = 10.0) -> Counter[int]:
    """Which worker process answered each request, read from the request log (waits for the writers)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {
            line["request_id"]: line["pid"]
            for line in system.log_lines("performance.log")
            if line.get("request_id") in request_ids and "pid" in line
        }
        if len(seen) == len(request_ids) or time.monotonic() > deadline:
            return Counter(seen.values())
        time.sleep(0.3)


def _assert_spread(system: System, request_ids: set[str]) -> None:
    pids = _pids(system, request_ids)
    assert sum(pids.values()) == len(request_ids), "some requests are missing from the request log"
    assert len(pids) >= 3, f"requests did not spread across the workers: {pids}"


def test_requests_really_spread_across_workers(system: System) -> None:
    ids = {rid for rid, _ in _traced_many(system, ROUNDS, "GET", "/api/errors/catalog")}
    _assert_spread(system, ids)


def test_breaker_forced_open_on_one_worker_fails_fast_on_all_and_reset_reaches_all(
    system: System, tokens: dict[str, dict[str, str]]
) -> None:
    admin, user = tokens["admin"], tokens["user"]
    forced = system.call("POST", "/admin/api/monitoring/circuit-breakers/stripe/force-open", headers=admin)
    assert forced.status == 200, forced.body
    before = len(system.stripe.requests)
    ids = set()
    for rid, answer in _traced_many(system, ROUNDS, "POST", "/api/payments/checkout", {"pack": "starter"}, **user):
        ids.add(rid)
        assert answer.status == 503, answer.body
        assert answer.json()["error"]["code"] == "CIRCUIT_OPEN"
        assert int(answer.headers["Retry-After"]) >= 1
    assert len(system.stripe.requests) == before, "a worker called Stripe through a forced-open breaker"
    _assert_spread(system, ids)

    reset = system.call("POST", "/admin/api/monitoring/circuit-breakers/reset/stripe", headers=admin)
    assert reset.status == 200, reset.body
    time.sleep(1.2)  # breaker state read from Redis is cached for at most a second per process
    ids = set()
    for rid, answer in _traced_many(system, ROUNDS, "GET", "/api/errors/circuit-breakers", **admin):
        ids.add(rid)
        assert answer.status == 200, answer.body
        assert answer.json()["breakers"]["stripe"]["state"] == "closed", answer.body
    _assert_spread(system, ids)


def test_a_rate_limit_of_n_is_n_across_workers(system: System, tokens: dict[str, dict[str, str]]) -> None:
    client = redis.Redis.from_url(system.redis_url)
    for key in client.scan_iter("*LIMIT*"):  # the logins made for the tokens must not count here
        client.delete(key)

    # RATELIMIT_LOGIN is 10 per minute per client address: 10 attempts pass (wrong password: 401), then 429.
    # A different account each time, so the per-account throttle (5 failures) is not what stops them.
    def body(n: int) -> dict[str, str]:
        return {"email": f"nobody-{n}@example.com", "password": "wrong-password-123"}

    answers = _traced_many(system, 25, "POST", "/api/auth/login", body)
    ids = {rid for rid, _ in answers}
    statuses = [answer.status for _, answer in answers]
    assert statuses.count(401) == 10, statuses
    assert statuses.count(429) == 15, statuses
    _assert_spread(system, ids)
    # RATELIMIT_LOGIN_ACCOUNT is 5 failures a minute per account from any address, also counted in Redis. One at
    # a time: a failure is counted when its answer is known, so concurrent guesses may overshoot by a few.
    for key in client.scan_iter("*LIMIT*"):
        client.delete(key)
    one = {"email": "target@example.com", "password": "wrong-password-123"}
    statuses = [_traced(system, "POST", "/api/auth/login", one)[1].status for _ in range(9)]
    assert statuses == [401] * 5 + [429] * 4, statuses


def test_error_statistics_add_up_across_workers(system: System, tokens: dict[str, dict[str, str]]) -> None:
    admin = tokens["admin"]

    def not_found() -> int:
        stats = system.call("GET", "/admin/api/monitoring/errors/stats", headers=admin).json()
        return int(stats["by_code"].get("NOT_FOUND", {}).get("total", 0))

    start = not_found()
    ids = set()
    for rid, answer in _traced_many(system, ROUNDS, "GET", lambda n: f"/api/missing/{n}"):
        ids.add(rid)
        assert answer.status == 404
    _assert_spread(system, ids)
    deadline = time.monotonic() + 15  # each worker's writer thread flushes its events on its own schedule
    while not_found() - start < ROUNDS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not_found() - start == ROUNDS


# -- job workers: the same breaker, the same statistics, the same metrics ------------------------------------


@dataclass
class RenderJob:
    """One render's job record, read from the database."""

    render_id: int
    job_id: int
    status: str
    attempts: int
    errors: list[dict[str, Any]]
    started_at: datetime | None


@dataclass
class ForcedOpenRun:
    """What happened while `rendering` and `stripe` were forced open through the admin API, then reset."""

    started_at: datetime
    render_ids: list[int]
    web_rejected: int  # checkouts answered 503 CIRCUIT_OPEN by the web workers
    web_pids: Counter[int]  # which web workers answered them
    while_open: dict[int, RenderJob]  # every job once each had failed and both job workers had failed some
    ffmpeg_while_open: list[tuple[int, str]]
    reset_at: datetime
    after_reset: dict[int, RenderJob]  # every job once all had succeeded
    ffmpeg_after_reset: list[tuple[int, str]]
    circuit_open_before: int  # CIRCUIT_OPEN total in the shared error statistics before the run
    metrics_before: str


def _job_pids(system: System) -> set[int]:
    return {worker.pid for worker in system.job_workers}


def _worker_pids(system: System) -> dict[str, int]:
    """Job worker id → pid, from the workers' own heartbeat rows."""
    return {worker_id: pid for worker_id, pid in system.sql("SELECT worker_id, pid FROM job_workers")}


def _render_jobs(system: System, render_ids: list[int]) -> dict[int, RenderJob]:
    keys = [f"render-{render_id}" for render_id in render_ids]
    rows = system.sql(
        "SELECT id, idempotency_key, status, attempts, errors, started_at FROM jobs "
        "WHERE kind = 'render' AND idempotency_key = ANY(%s)",
        keys,
    )
    jobs = {}
    for job_id, key, status, attempts, errors, started_at in rows:
        render_id = int(key.removeprefix("render-"))
        jobs[render_id] = RenderJob(render_id, job_id, status, attempts, list(errors or []), started_at)
    return jobs


def _ffmpeg_renders(system: System) -> list[tuple[int, str]]:
    """(pid of the process that started FFmpeg, its output) for every render FFmpeg was started for."""
    log = Path(system.env["FFMPEG_BINARY"]).parent / FFMPEG_LOG
    calls = []
    for line in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
        parent, _, output = line.partition(" ")
        if "oriel-render-" in output:
            calls.append((int(parent), output))
    return calls


def _render_of(output: str) -> int:
    return int(re.search(r"oriel-render-(\d+)-", output).group(1))  # type: ignore[union-attr]


def _when(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["time"])


def _wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check()` until it returns something truthy; fail saying `what` did not happen in time."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s"
        time.sleep(0.3)


def _upload(system: System, user: dict[str, str], audio: bytes) -> int:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="tone.wav"\r\n'
    body = (head + "Content-Type: audio/wav\r\n\r\n").encode() + audio + f"\r\n--{boundary}--\r\n".encode()
    headers = {**user, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    answer = system.call("POST", "/api/uploads", headers=headers, body=body)
    assert answer.status == 201, answer.body[:500]
    return int(answer.json()["upload"]["id"])


def _circuit_open_total(system: System, admin: dict[str, str]) -> int:
    stats = system.call("GET", "/admin/api/monitoring/errors/stats", headers=admin).json()
    return int(stats["by_code"].get("CIRCUIT_OPEN", {}).get("total", 0))


def _settled_circuit_open_total(system: System, admin: dict[str, str]) -> int:
    """The CIRCUIT_OPEN total once no writer has any left to flush (unchanged over 3 reads, 0.6 s apart)."""
    seen = [_circuit_open_total(system, admin)]
    deadline = time.monotonic() + 15
    while len(seen) < 3 or len(set(seen[-3:])) > 1:
        assert time.monotonic() < deadline, f"the error statistics kept changing: {seen}"
        time.sleep(0.6)
        seen.append(_circuit_open_total(system, admin))
    return seen[-1]


def _admin_action(system: System, admin: dict[str, str], path: str) -> None:
    answer = system.call("POST", f"/admin/api/monitoring/circuit-breakers/{path}", headers=admin)
    assert answer.status == 200, answer.body


@pytest.fixture(scope="module")
def forced_open_run(system: System, tokens: dict[str, dict[str, str]], audio_files: AudioFactory) -> ForcedOpenRun:
    """Force `rendering` and `stripe` open through the web, let renders fail in both job workers, reset, let them run.

    Renders are posted one by one: each commit wakes one idle job worker, and Redis hands wake-ups to the
    longest waiter, so the two workers take turns. The breakers stay open until every job has failed at
    least once and both job workers have failed some (or the wait fails the test).
    """
    admin, user = tokens["admin"], tokens["user"]
    upload_id = _upload(system, user, audio_files.make("wav", seconds=1.0).read_bytes())
    circuit_open_before = _settled_circuit_open_total(system, admin)
    metrics_before = system.call("GET", "/metrics").body.decode()
    started_at = datetime.now(UTC)

    _admin_action(system, admin, "rendering/force-open")
    _admin_action(system, admin, "stripe/force-open")
    render_ids = []
    for _ in range(RENDERS):
        body = {"upload_id": upload_id, **RENDER}
        answer = system.call("POST", "/api/renders", body, headers={**user, "Idempotency-Key": uuid.uuid4().hex})
        assert answer.status == 202, answer.body[:500]
        render_ids.append(int(answer.json()["render"]["id"]))
        time.sleep(0.2)
    checkouts = _traced_many(system, 16, "POST", "/api/payments/checkout", {"pack": "starter"}, **user)
    assert [answer.json()["error"]["code"] for _, answer in checkouts] == ["CIRCUIT_OPEN"] * 16
    web_pids = _pids(system, {rid for rid, _ in checkouts})
    _admin_action(system, admin, "reset/stripe")

    def every_job_failed_in_both_workers() -> dict[int, RenderJob] | None:
        jobs = _render_jobs(system, render_ids)
        pids = _worker_pids(system)
        failed_in = {pids.get(entry["worker"]) for job in jobs.values() for entry in job.errors}
        failed = len(jobs) == RENDERS and all(job.errors for job in jobs.values())
        return jobs if failed and failed_in == _job_pids(system) else None

    while_open = _wait_for(every_job_failed_in_both_workers, 90, "render jobs failing in both job workers")
    ffmpeg_while_open = _ffmpeg_renders(system)
    _admin_action(system, admin, "reset/rendering")
    reset_at = datetime.now(UTC)

    def every_job_succeeded() -> dict[int, RenderJob] | None:
        jobs = _render_jobs(system, render_ids)
        return jobs if all(job.status == "succeeded" for job in jobs.values()) else None

    after_reset = _wait_for(every_job_succeeded, 120, "every render job succeeding after the reset")
    return ForcedOpenRun(
        started_at=started_at,
        render_ids=render_ids,
        web_rejected=len(checkouts),
        web_pids=web_pids,
        while_open=while_open,
        ffmpeg_while_open=ffmpeg_while_open,
        reset_at=reset_at,
        after_reset=after_reset,
        ffmpeg_after_reset=_ffmpeg_renders(system),
        circuit_open_before=circuit_open_before,
        metrics_before=metrics_before,
    )


def test_a_breaker_forced_open_on_one_web_worker_makes_both_job_workers_wait_retry_after_without_calling_ffmpeg(
    system: System, forced_open_run: ForcedOpenRun
) -> None:
    run = forced_open_run
    owners = _worker_pids(system)
    failed_in = {owners[entry["worker"]] for job in run.while_open.values() for entry in job.errors}
    assert failed_in == _job_pids(system), (failed_in, _job_pids(system))
    assert run.ffmpeg_while_open == [], "a job worker started FFmpeg through a forced-open breaker"
    for job in run.after_reset.values():  # every failure of the run, up to the reset
        for entry in job.errors:
            assert (entry["code"], entry["kind"], entry["retry_after"]) == (
                "CIRCUIT_OPEN",
                "throttled",
                RENDERING_RETRY_AFTER,
            ), entry
    # Retry-After honoured by whichever worker took the next attempt: attempts at least 3 s apart.
    for job in run.after_reset.values():
        failures = [_when(entry) for entry in job.errors]
        attempts = [*failures, job.started_at]  # the succeeding attempt started after the last failure
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(attempts)]
        assert min(gaps) >= RENDERING_RETRY_AFTER, (job.render_id, gaps)


def test_a_breaker_reset_on_one_web_worker_reaches_both_job_workers_and_each_render_runs_once(
    system: System, forced_open_run: ForcedOpenRun
) -> None:
    run = forced_open_run
    for job in run.after_reset.values():
        late = [entry for entry in job.errors if (_when(entry) - run.reset_at).total_seconds() > 1.0]
        assert not late, f"job {job.job_id} was still rejected after the reset: {late}"
        assert job.attempts == len(job.errors) + 1, job  # one run that succeeded, after the rejected ones
    renders = Counter(_render_of(output) for _, output in run.ffmpeg_after_reset)
    assert renders == dict.fromkeys(run.render_ids, 1), renders  # FFmpeg once per render, none twice
    ran_in = {parent for parent, _ in run.ffmpeg_after_reset}
    assert ran_in == _job_pids(system), (ran_in, _job_pids(system))  # both job workers rendered after the reset
    for render_id in run.render_ids:
        sent = system.sendgrid.count(custom_arg=("dedup_key", f"render-finished:{render_id}"))
        assert sent == 1, (render_id, sent)


def test_errors_of_both_job_workers_add_up_with_the_web_workers_in_the_shared_statistics(
    system: System, tokens: dict[str, dict[str, str]], forced_open_run: ForcedOpenRun
) -> None:
    run, admin = forced_open_run, tokens["admin"]
    assert len(run.web_pids) >= 3, f"the rejected checkouts did not spread across the web workers: {run.web_pids}"
    job_rejected = sum(len(job.errors) for job in run.after_reset.values())
    expected = run.web_rejected + job_rejected
    deadline = time.monotonic() + 15  # every process's writer thread flushes on its own schedule
    while _circuit_open_total(system, admin) - run.circuit_open_before < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _circuit_open_total(system, admin) - run.circuit_open_before == expected, (run.web_rejected, job_rejected)

    query = urllib.parse.urlencode({"code": "CIRCUIT_OPEN", "since": run.started_at.isoformat(), "limit": 200})
    page = system.call("GET", f"/admin/api/monitoring/logs/recent-errors?{query}", headers=admin).json()
    assert page["next_cursor"] is None
    by_source = Counter((event["source"], event["endpoint"]) for event in page["events"])
    assert by_source == {("http", "payments.checkout"): run.web_rejected, ("job", "job:render"): job_rejected}


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of metric `name` with these labels (0 when absent), from Prometheus text."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_of_both_job_workers_add_up_with_the_web_workers_on_every_scrape(
    system: System, forced_open_run: ForcedOpenRun
) -> None:
    run = forced_open_run
    job_rejected = sum(len(job.errors) for job in run.after_reset.values())
    scrapes = _traced_many(system, 12, "GET", "/metrics")
    _assert_spread(system, {rid for rid, _ in scrapes})
    expected = {
        # rendering is called by job workers only, Stripe by web workers only
        ("oriel_circuit_breaker_rejections_total", ("service", "rendering")): job_rejected,
        ("oriel_circuit_breaker_rejections_total", ("service", "stripe")): run.web_rejected,
        ("oriel_outbound_calls_total", ("service", "rendering"), ("outcome", "rejected")): job_rejected,
        ("oriel_outbound_calls_total", ("service", "rendering"), ("outcome", "ok")): RENDERS,
    }
    for _, answer in scrapes:
        text = answer.body.decode()
        for (name, *labels), count in expected.items():
            delta = _sample(text, name, **dict(labels)) - _sample(run.metrics_before, name, **dict(labels))
            assert delta == count, (name, labels, delta, count)


def test_a_breaker_opened_by_failures_in_a_job_worker_is_seen_open_by_every_web_worker(
    system: System, tokens: dict[str, dict[str, str]], audio_files: AudioFactory, forced_open_run: ForcedOpenRun
) -> None:
    """The other direction: job workers' own failed calls open the breaker; every web worker reports it open.

    A fault rule (shared through Redis) makes SendGrid calls fail; the render jobs' "your video is ready"
    emails, sent by the job workers, fail until the `email` breaker opens. It runs after `forced_open_run`
    (a parameter for that reason), so no email of those renders is still on its way.
    """
    admin, user = tokens["admin"], tokens["user"]
    upload_id = _upload(system, user, audio_files.make("wav", seconds=1.0).read_bytes())
    metrics_before = system.call("GET", "/metrics").body.decode()
    fault = {"service": "email", "mode": "fail", "rate": 1.0, "duration_seconds": 120}
    added = system.call("POST", "/admin/api/monitoring/faults", fault, headers=admin)
    assert added.status == 201, added.body
    try:
        time.sleep(1.5)  # every process re-reads the shared rules at most once a second
        for _ in range(5):  # 5 emails: the breaker's minimum number of calls, every one failing
            body = {"upload_id": upload_id, **RENDER}
            answer = system.call("POST", "/api/renders", body, headers={**user, "Idempotency-Key": uuid.uuid4().hex})
            assert answer.status == 202, answer.body[:500]

        def email_breaker_open() -> bool:
            listing = system.call("GET", "/api/errors/circuit-breakers", headers=admin).json()
            return bool(listing["breakers"]["email"]["state"] == "open")

        _wait_for(email_breaker_open, 90, "the email breaker opening")
        answers = _traced_many(system, ROUNDS, "GET", "/api/errors/circuit-breakers", **admin)
        seen = {
            (a.json()["breakers"]["email"]["state"], a.json()["breakers"]["email"]["opened_at"]) for _, a in answers
        }
        assert len(seen) == 1 and next(iter(seen))[0] == "open", seen  # one state, one opening, in every web worker
        _assert_spread(system, {rid for rid, _ in answers})
    finally:
        cleared = system.call("DELETE", "/admin/api/monitoring/faults/email", headers=admin)
        _admin_action(system, admin, "reset/email")
    assert cleared.status == 200, cleared.body

    def opened_by() -> list[int]:
        """The pid of every process that logged the email breaker's closed -> open transition."""
        return [
            line["pid"]
            for line in system.log_lines("app.log")
            if line.get("breaker") == "email" and (line.get("old_state"), line.get("new_state")) == ("closed", "open")
        ]

    pids = _wait_for(opened_by, 10, "the transition reaching app.log")
    assert len(pids) == 1 and pids[0] in _job_pids(system), (pids, _job_pids(system))  # one job worker opened it
    transitions = (
        "oriel_circuit_breaker_transitions_total",
        {"service": "email", "from_state": "closed", "to_state": "open"},
    )
    after = system.call("GET", "/metrics").body.decode()
    assert (
        _sample(after, transitions[0], **transitions[1]) - _sample(metrics_before, transitions[0], **transitions[1])
        == 1
    )


def _metric_total(text: str, path_pattern: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or "_total{" not in line or "request" not in line:
            continue
        if re.search(path_pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_totals_equal_the_requests_sent(system: System) -> None:
    for worker in system.job_workers:  # the last test: both job workers survived the whole module
        assert worker.poll() is None, "a job worker exited"
    first = system.call("GET", "/metrics")
    assert first.status == 200, first.body[:300]
    route = r'(?:endpoint|route|path)="[^"]*system[-_]health'
    before = _metric_total(first.body.decode(), route)
    ids = {rid for rid, _ in _traced_many(system, ROUNDS, "GET", "/api/errors/system-health")}
    _assert_spread(system, ids)
    after = _metric_total(system.call("GET", "/metrics").body.decode(), route)
    assert after - before == ROUNDS, (before, after)
