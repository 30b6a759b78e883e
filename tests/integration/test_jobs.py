"""Background jobs on the embedded default: retries by class, dead letters, reaper, fencing,
compensation, idempotent enqueue, periodic scheduling, heartbeats and the `flask jobs` commands."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text

from backend.app import timeutil
from backend.app.errors import RateLimitError, RenderingError, ValidationError
from backend.app.extensions import db
from backend.app.jobs import REGISTRY, JobContext, enqueue, queue_depth, records, register_periodic, worker_heartbeats
from backend.app.jobs.compensation import run_compensations, sweep_pending
from backend.app.jobs.context import LeaseLostError
from backend.app.jobs.dead_letters import analyse, archive_expired
from backend.app.jobs.registry import JobKind, job_kind
from backend.app.jobs.scheduler.periodic import PeriodicScheduler
from backend.app.jobs.worker import Worker, WorkerOptions
from backend.app.models.job import DEAD, FAILED, QUEUED, RETRYING, RUNNING, SUCCEEDED, Job, JobStep
from backend.app.resilience.classifier import Classification, ErrorKind, classify
from backend.app.resilience.history import error_entry
from backend.app.resilience.retry import RetryPolicy, backoff_ceiling, decide
from tests.harness.app import ADMIN_EMAIL, bearer, login, read_log

# A minute boundary in the past: fake-clock jobs are due for a real-clock worker too.
T0 = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)


class FakeClock:
    """A settable clock for the worker (no sleeping in retry tests)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def upper(lo: float, hi: float) -> float:
    """The jitter source that always picks the top of the range, so delays are exact."""
    return hi


def run_worker(app: Flask, *, clock: Callable[[], datetime] = timeutil.utcnow, rng: Any = upper, **options: Any) -> int:
    """Run a worker in this process until its stop condition; the number of jobs it processed."""
    settings: dict[str, Any] = {
        "install_signals": False,
        "schedule": False,
        "poll_seconds": 0.02,
        "heartbeat_seconds": 0.1,
        "lease_seconds": 5.0,
        "max_seconds": 20.0,
    }
    settings.update(options)
    return Worker(app, WorkerOptions(**settings), clock=clock, rng=rng).run()


def load(app: Flask, job_id: int) -> Job:
    """A fresh copy of a job record."""
    with app.app_context():
        job = db.session.execute(
            select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        ).scalar_one()
        db.session.expunge(job)
        return job


def failing(name: str, make_error: Callable[[int], Exception], calls: list[int], **policy: Any) -> JobKind:
    """A kind that fails every attempt with `make_error(attempt)` and records its attempts."""

    def handler(ctx: JobContext) -> None:
        calls.append(ctx.attempt)
        raise make_error(ctx.attempt)

    return JobKind(name, handler, policy=RetryPolicy(**policy))


# -- the policy, as a pure function ---------------------------------------------------------------


def test_policy_permanent_errors_get_at_most_one_retry() -> None:
    permanent = Classification(ErrorKind.PERMANENT, None, "ValidationError VALIDATION_ERROR", 422)
    one_retry = RetryPolicy(max_attempts=10, base_delay=3)
    assert decide(permanent, 1, 10, one_retry).retry is True
    assert decide(permanent, 1, 10, one_retry).delay == 3
    assert decide(permanent, 2, 10, one_retry).retry is False
    assert decide(permanent, 1, 10, RetryPolicy(permanent_retries=0)).retry is False
    with pytest.raises(ValueError, match="at most one retry"):
        RetryPolicy(permanent_retries=2)


def test_policy_transient_backoff_is_exponential_full_jitter_capped() -> None:
    transient = Classification(ErrorKind.TRANSIENT, None, "ConnectionError", None)
    policy = RetryPolicy(max_attempts=8, base_delay=1, max_delay=10)
    assert [decide(transient, n, 8, policy, rng=upper).delay for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    assert decide(transient, 8, 8, policy).retry is False
    rng = random.Random(5)
    for attempt in range(1, 8):
        for _ in range(200):
            delay = decide(transient, attempt, 8, policy, rng=rng.uniform).delay
            assert 0 <= delay <= backoff_ceiling(policy, attempt)
    # Full jitter spreads retries over the whole range, not around its top.
    delays = [decide(transient, 4, 8, policy, rng=rng.uniform).delay for _ in range(500)]
    assert min(delays) < 1 and max(delays) > 7


def test_policy_throttled_waits_retry_after_and_falls_back_to_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=1, max_delay=60, max_throttle_delay=120)
    assert decide(Classification(ErrorKind.THROTTLED, 7.0, "429", 429), 1, 5, policy).delay == 7
    assert decide(Classification(ErrorKind.THROTTLED, 900.0, "429", 429), 1, 5, policy).delay == 120
    assert decide(Classification(ErrorKind.THROTTLED, None, "429", 429), 3, 5, policy, rng=upper).delay == 4
    # A 503 that says when to come back: the backoff never undercuts it.
    assert decide(Classification(ErrorKind.TRANSIENT, 30.0, "503", 503), 1, 5, policy, rng=upper).delay == 30


# -- retries through the worker, with an injected clock --------------------------------------------


def drive(app: Flask, job_id: int, clock: FakeClock) -> list[tuple[datetime, datetime | None]]:
    """Run every attempt of a job at its due time; (failure time, next attempt time) per attempt."""
    schedule: list[tuple[datetime, datetime | None]] = []
    for _ in range(20):
        job = load(app, job_id)
        if job.status in (DEAD, FAILED, SUCCEEDED):
            return schedule
        due = timeutil.as_utc(job.next_attempt_at)
        assert due is not None
        clock.now = due - timedelta(milliseconds=500)
        assert run_worker(app, clock=clock, burst=True, max_jobs=1) == 0, "ran before its next attempt time"
        clock.now = due
        assert run_worker(app, clock=clock, burst=True, max_jobs=1) == 1
        after = load(app, job_id)
        schedule.append((due, timeutil.as_utc(after.next_attempt_at) if after.status == RETRYING else None))
    raise AssertionError("job never finished")


def test_transient_errors_back_off_exponentially_then_dead_letter_with_real_messages(
    app: Flask, kinds: Callable[[JobKind], JobKind]
) -> None:
    calls: list[int] = []
    kinds(
        failing(
            "test.transient",
            lambda n: ConnectionError(f"SendGrid refused the connection (attempt {n})"),
            calls,
            max_attempts=4,
            base_delay=1,
            max_delay=3,
        )
    )
    clock = FakeClock()
    with app.app_context():
        job_id = enqueue("test.transient", {"to": "user@example.com"}, now=clock.now).id
    schedule = drive(app, job_id, clock)
    delays = [(nxt - at).total_seconds() for at, nxt in schedule if nxt is not None]
    assert calls == [1, 2, 3, 4]
    assert delays == [1.0, 2.0, 3.0]
    job = load(app, job_id)
    assert (job.status, job.attempts, job.failure_analysis) == (DEAD, 4, "transient")
    assert [e["message"] for e in job.errors] == [
        f"SendGrid refused the connection (attempt {n})" for n in (1, 2, 3, 4)
    ]
    assert {e["code"] for e in job.errors} == {"ConnectionError"}
    assert {e["kind"] for e in job.errors} == {"transient"}
    assert job.last_error_message == "SendGrid refused the connection (attempt 4)"
    assert job.dead_at is not None and job.lease_owner is None


def test_permanent_error_stops_after_one_retry_as_a_data_issue(app: Flask, kinds: Callable[[JobKind], JobKind]) -> None:
    calls: list[int] = []
    kinds(
        failing(
            "test.permanent",
            lambda n: ValidationError(f"Recipient address is invalid (attempt {n})", field="to"),
            calls,
            max_attempts=10,
            base_delay=2,
        )
    )
    clock = FakeClock()
    with app.app_context():
        job_id = enqueue("test.permanent", {}, now=clock.now).id
    schedule = drive(app, job_id, clock)
    assert calls == [1, 2]
    assert [(nxt - at).total_seconds() for at, nxt in schedule if nxt] == [2.0]
    job = load(app, job_id)
    assert (job.status, job.attempts, job.max_attempts, job.failure_analysis) == (DEAD, 2, 10, "data_issue")
    assert job.errors[-1]["code"] == "VALIDATION_ERROR" and job.errors[-1]["status"] == 422
    assert job.errors[-1]["message"] == "Recipient address is invalid (attempt 2)"


def test_permanent_error_with_no_retry_dies_on_the_first_attempt(
    app: Flask, kinds: Callable[[JobKind], JobKind]
) -> None:
    calls: list[int] = []
    kinds(failing("test.no_retry", lambda n: KeyError("user_id"), calls, permanent_retries=0))
    with app.app_context():
        job_id = enqueue("test.no_retry").id
    run_worker(app, burst=True)
    job = load(app, job_id)
    assert calls == [1] and job.status == DEAD and job.failure_analysis == "data_issue"
    assert job.errors[0]["message"] == "'user_id'" and job.errors[0]["exc_type"] == "builtins.KeyError"


def test_throttled_errors_wait_retry_after(app: Flask, kinds: Callable[[JobKind], JobKind]) -> None:
    calls: list[int] = []
    kinds(
        failing(
            "test.throttled",
            lambda n: RateLimitError(f"Provider rate limit hit (attempt {n})", retry_after=7),
            calls,
            max_attempts=3,
            base_delay=1,
        )
    )
    clock = FakeClock()
    with app.app_context():
        job_id = enqueue("test.throttled", now=clock.now).id
    schedule = drive(app, job_id, clock)
    assert [(nxt - at).total_seconds() for at, nxt in schedule if nxt] == [7.0, 7.0]
    job = load(app, job_id)
    assert (job.status, job.attempts) == (DEAD, 3)
    assert [e["kind"] for e in job.errors] == ["throttled"] * 3
    assert [e["retry_after"] for e in job.errors] == [7, 7, 7]


def test_retry_delays_are_real_waits_on_the_wall_clock(app: Flask, kinds: Callable[[JobKind], JobKind]) -> None:
    seen: list[float] = []

    def handler(ctx: JobContext) -> str:
        seen.append(time.monotonic())
        if ctx.attempt < 3:
            raise TimeoutError(f"storage upload timed out (attempt {ctx.attempt})")
        return "uploaded"

    kinds(JobKind("test.wall", handler, policy=RetryPolicy(max_attempts=3, base_delay=0.2, max_delay=5)))
    with app.app_context():
        job_id = enqueue("test.wall").id
    run_worker(app, drain=True)
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert len(gaps) == 2
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4
    assert gaps[0] < 2.0 and gaps[1] < 2.0
    job = load(app, job_id)
    assert (job.status, job.attempts, job.result) == (SUCCEEDED, 3, "uploaded")
    assert [e["message"] for e in job.errors] == [f"storage upload timed out (attempt {n})" for n in (1, 2)]


def test_unknown_kind_is_a_system_issue_dead_letter(app: Flask, kinds: Callable[[JobKind], JobKind]) -> None:
    kinds(JobKind("test.retired", lambda ctx: None))
    with app.app_context():
        job_id = enqueue("test.retired").id
    REGISTRY.unregister("test.retired")  # a worker that does not know the kind (deploy skew)
    run_worker(app, burst=True)
    job = load(app, job_id)
    assert job.status == DEAD and job.failure_analysis == "system_issue"
    assert "test.retired" in job.errors[0]["message"]


def test_enqueue_refuses_unknown_kinds_and_oversized_payloads(app: Flask) -> None:
    with app.app_context():
        with pytest.raises(records.UnknownJobKindError):
            enqueue("no.such.kind")
        with pytest.raises(ValueError, match="by reference"):
            enqueue("maintenance.noop", {"blob": "x" * 70_000})


def test_failure_analysis_sorts_errors_like_seed_003() -> None:
    def entry(exc: Exception) -> dict[str, Any]:
        return error_entry(exc, classify(exc), 1, T0, worker=None)

    assert analyse([entry(ConnectionError("refused"))]) == "transient"
    assert analyse([entry(RateLimitError("slow down", retry_after=3))]) == "transient"
    assert analyse([entry(ValidationError("bad email", field="email"))]) == "data_issue"
    assert analyse([entry(ValueError("not a number"))]) == "data_issue"
    assert analyse([entry(PermissionError("read-only bucket"))]) == "system_issue"
    assert analyse([entry(RenderingError("FFmpeg crashed"))]) == "permanent"
    assert analyse([entry(TypeError("bug"))]) == "permanent"
    assert analyse([]) == "permanent"


# -- idempotent enqueue ----------------------------------------------------------------------------


def test_enqueueing_the_same_logical_job_twice_yields_one_record(app: Flask) -> None:
    with app.app_context():
        first = enqueue("maintenance.noop", {"n": 1}, idempotency_key="render-42")
        second = enqueue("maintenance.noop", {"n": 2}, idempotency_key="render-42")
        other = enqueue("maintenance.noop", {"n": 3}, idempotency_key="render-43")
        unkeyed = [enqueue("maintenance.noop").id for _ in range(2)]
        assert first.id == second.id and second.payload == {"n": 1}
        assert len({first.id, other.id, *unkeyed}) == 4
        count = db.session.execute(text("SELECT count(*) FROM jobs WHERE idempotency_key = 'render-42'")).scalar()
        assert count == 1


def test_enqueue_inside_a_rolled_back_transaction_leaves_no_job(app: Flask) -> None:
    with app.app_context():
        enqueue("maintenance.noop", idempotency_key="never", commit=False)
        db.session.rollback()
        assert db.session.execute(select(Job).where(Job.idempotency_key == "never")).first() is None


# -- leases, reaper and fencing --------------------------------------------------------------------


def test_reaper_requeues_a_job_whose_worker_died_and_fences_the_old_owner(app: Flask) -> None:
    with app.app_context():
        job_id = enqueue("maintenance.noop", max_attempts=3, now=T0).id
        lost = records.claim("dead-worker", None, 10, now=T0)
        assert lost is not None and lost.id == job_id
        assert records.reap_expired(now=T0 + timedelta(seconds=9)) == []
        assert records.reap_expired(now=T0 + timedelta(seconds=11)) == [(job_id, RETRYING)]
        job = db.session.get(Job, job_id)
        assert job is not None and job.status == RETRYING and job.errors[0]["code"] == "WORKER_LOST"
        assert "dead-worker" in job.errors[0]["message"]
        taken = records.claim("live-worker", None, 10, now=T0 + timedelta(seconds=12))
        assert taken is not None and taken.attempt == 2
        # The old owner wakes up: it can neither complete nor record a step.
        assert records.complete(lost, "late", now=T0 + timedelta(seconds=13)) is False
        with pytest.raises(LeaseLostError):
            JobContext(lost, "dead-worker").step("send", lambda: "sent", atomic=True)
        assert records.complete(taken, "ok", now=T0 + timedelta(seconds=13)) is True
        assert db.session.get(JobStep, (job_id, "send")) is None


def test_a_job_that_keeps_losing_its_worker_ends_dead_as_a_system_issue(app: Flask) -> None:
    with app.app_context():
        job_id = enqueue("maintenance.noop", max_attempts=2, now=T0).id
        for n in range(2):
            at = T0 + timedelta(seconds=100 * n)
            assert records.claim(f"w{n}", None, 5, now=at) is not None
            records.reap_expired(now=at + timedelta(seconds=6))
        job = db.session.get(Job, job_id)
        assert job is not None and (job.status, job.failure_analysis) == (DEAD, "system_issue")
        assert [e["code"] for e in job.errors] == ["WORKER_LOST", "WORKER_LOST"]


def test_claims_are_exclusive_across_threads(app: Flask) -> None:
    with app.app_context():
        for n in range(40):
            enqueue("maintenance.noop", {"n": n})
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        with app.app_context():
            while (got := records.claim(name, None, 30)) is not None:
                with lock:
                    claimed.append(got.id)
            db.session.remove()

    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(claimed) == 40 and len(set(claimed)) == 40


def test_heartbeats_keep_a_long_job_leased_past_its_lease_time(app: Flask, kinds: Callable[[JobKind], JobKind]) -> None:
    runs: list[int] = []

    def slow(ctx: JobContext) -> str:
        runs.append(ctx.attempt)
        for pct in (25, 50, 75):
            time.sleep(0.6)
            ctx.progress(pct)
        return "done"

    kinds(JobKind("test.slow", slow))
    with app.app_context():
        job_id = enqueue("test.slow").id
    # Two workers, lease 0.8 s, job 1.8 s: the idle one reaps constantly, the busy one must keep heartbeating.
    workers = [
        threading.Thread(target=run_worker, args=(app,), kwargs={"drain": True, "lease_seconds": 0.8}) for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    job = load(app, job_id)
    assert runs == [1] and (job.status, job.attempts, job.progress) == (SUCCEEDED, 1, 100.0)


# -- steps and compensation ------------------------------------------------------------------------


def _credit_kind(fail_flag: Path) -> JobKind:
    def render(ctx: JobContext) -> dict[str, Any]:
        user = ctx.payload["user"]

        def consume() -> int:
            db.session.execute(text("UPDATE test_credits SET balance = balance - 1 WHERE user_id = :u"), {"u": user})
            return 1

        ctx.step("consume_credit", consume, atomic=True, compensate=("refund_credit", {"user": user}))
        if fail_flag.exists():
            raise RenderingError("FFmpeg exited with status 1: Invalid data found when processing input")
        return {"rendered": True}

    kind = JobKind("test.render", render, policy=RetryPolicy(max_attempts=3, base_delay=0))

    @kind.compensation("refund_credit")
    def refund(cctx: Any, args: dict[str, Any]) -> None:
        db.session.execute(
            text("UPDATE test_credits SET balance = balance + 1 WHERE user_id = :u"), {"u": args["user"]}
        )

    return kind


def _balance(app: Flask) -> int:
    with app.app_context():
        return int(db.session.execute(text("SELECT balance FROM test_credits WHERE user_id = 7")).scalar_one())


def test_a_failed_render_gives_the_consumed_credit_back_once(
    app: Flask, kinds: Callable[[JobKind], JobKind], tmp_path: Path
) -> None:
    flag = tmp_path / "fail"
    flag.touch()
    kinds(_credit_kind(flag))
    with app.app_context():
        db.session.execute(text("CREATE TABLE test_credits (user_id INTEGER PRIMARY KEY, balance INTEGER)"))
        db.session.execute(text("INSERT INTO test_credits VALUES (7, 1)"))
        db.session.commit()
        job_id = enqueue("test.render", {"user": 7}).id
    run_worker(app, drain=True)
    job = load(app, job_id)
    # Attempt 2 (the one permanent retry) skipped the consumed step; the dead job refunded it.
    assert (job.status, job.attempts) == (DEAD, 2)
    assert _balance(app) == 1
    assert [c["state"] for c in job.compensations] == ["done"] and not job.compensation_pending
    with app.app_context():
        steps = set(db.session.execute(select(JobStep.name).where(JobStep.job_id == job_id)).scalars())
        assert steps == {"consume_credit", "compensate:consume_credit"}
        assert run_compensations(job_id) == 0 and sweep_pending() == 0
    assert _balance(app) == 1

    # Requeued after the fix: the undone step runs again, once.
    flag.unlink()
    with app.app_context():
        from backend.app.jobs.dead_letters import requeue

        assert requeue(job_id, actor="test") is True
    run_worker(app, drain=True)
    job = load(app, job_id)
    assert job.status == SUCCEEDED and _balance(app) == 0
    assert [e["code"] for e in job.errors][-1] == "REQUEUED"


def test_a_failing_compensation_is_recorded_and_retried_by_the_sweep(
    app: Flask, kinds: Callable[[JobKind], JobKind], tmp_path: Path
) -> None:
    broken = {"on": True}

    def handler(ctx: JobContext) -> None:
        ctx.step("reserve", lambda: "seat 4", atomic=True, compensate=("release", {"seat": 4}))
        raise ValueError("seat map is corrupt")

    kind = JobKind("test.reserve", handler, policy=RetryPolicy(max_attempts=1))
    released: list[int] = []

    @kind.compensation("release")
    def release(cctx: Any, args: dict[str, Any]) -> None:
        if broken["on"]:
            raise ConnectionError("inventory service refused the connection")
        released.append(args["seat"])

    kinds(kind)
    with app.app_context():
        job_id = enqueue("test.reserve").id
    run_worker(app, drain=True)
    job = load(app, job_id)
    assert job.status == DEAD and job.compensation_pending
    assert job.errors[-1]["code"] == "COMPENSATION_FAILED"
    assert "inventory service refused the connection" in job.errors[-1]["message"]
    broken["on"] = False
    with app.app_context():
        assert sweep_pending() == 1
        assert sweep_pending() == 0
    assert released == [4] and not load(app, job_id).compensation_pending


# -- periodic scheduling ---------------------------------------------------------------------------


def test_periodic_jobs_are_enqueued_once_per_slot_across_schedulers(app: Flask) -> None:
    ran: list[int] = []
    register_periodic("test.tick", 60, lambda ctx: ran.append(ctx.payload["slot"]))

    def ticks() -> int:
        return len(db.session.execute(select(Job.id).where(Job.kind == "test.tick")).scalars().all())

    try:
        with app.app_context():
            first, second = PeriodicScheduler(), PeriodicScheduler()  # two workers ticking
            first.tick(T0)
            second.tick(T0 + timedelta(seconds=5))
            first.tick(T0 + timedelta(seconds=30))
            assert ticks() == 1
            second.tick(T0 + timedelta(seconds=61))
            first.tick(T0 + timedelta(seconds=62))
            assert ticks() == 2
        run_worker(app, drain=True)
        slot = int(T0.timestamp() // 60)
        assert sorted(ran) == [slot, slot + 1]
    finally:
        REGISTRY.unregister("test.tick")


def test_a_running_worker_schedules_the_maintenance_jobs(app: Flask) -> None:
    run_worker(app, drain=True, schedule=True)
    with app.app_context():
        kinds_run = dict(db.session.execute(select(Job.kind, Job.status).where(Job.kind.like("maintenance.%"))).all())
    assert kinds_run == {
        "maintenance.dead_letter_ttl": SUCCEEDED,
        "maintenance.compensations": SUCCEEDED,
        "maintenance.failed_work_retention": SUCCEEDED,  # #13 point 6: given-up work is deleted after retention
    }


def test_dead_letters_are_archived_after_the_ttl_not_deleted(app: Flask, kinds: Callable[[JobKind], JobKind]) -> None:
    kinds(failing("test.expire", lambda n: ValueError("bad input"), [], permanent_retries=0))
    with app.app_context():
        job_id = enqueue("test.expire").id
    run_worker(app, burst=True)
    with app.app_context():
        assert archive_expired(7, now=timeutil.utcnow() + timedelta(days=6)) == 0
        assert archive_expired(7, now=timeutil.utcnow() + timedelta(days=8)) == 1
    job = load(app, job_id)
    assert job.status == DEAD and job.archived_at is not None and job.errors[0]["message"] == "bad input"


# -- worker heartbeat, queue depth and the CLI -----------------------------------------------------


def test_queue_depth_and_worker_heartbeats(app: Flask) -> None:
    with app.app_context():
        enqueue("maintenance.noop")
        enqueue("maintenance.noop", delay=3600)
        depth = queue_depth()
        assert (depth["ready"], depth["scheduled"], depth["running"]) == (1, 1, 0)
    run_worker(app, burst=True)
    with app.app_context():
        assert queue_depth()["ready"] == 0
        assert worker_heartbeats() == []  # the burst worker stopped
        beats = worker_heartbeats(include_stopped=True)
        assert len(beats) == 1 and beats[0]["processed"] == 1 and beats[0]["alive"] is False


def test_a_live_worker_reports_a_fresh_heartbeat(app: Flask) -> None:
    holder: dict[str, Worker] = {}

    def run() -> None:
        opts = WorkerOptions(install_signals=False, schedule=False, poll_seconds=0.05, heartbeat_seconds=0.1)
        holder["w"] = Worker(app, opts)
        holder["w"].run()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        beats: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not beats:
            time.sleep(0.2)
            with app.app_context():
                beats = worker_heartbeats()
        assert len(beats) == 1 and beats[0]["alive"] is True and beats[0]["age_seconds"] < 5
    finally:
        while "w" not in holder:
            time.sleep(0.05)
        holder["w"].stop()
        thread.join(15)
    assert not thread.is_alive()


def test_flask_jobs_commands_enqueue_run_and_report(app: Flask) -> None:
    runner = app.test_cli_runner()
    out = runner.invoke(args=["jobs", "enqueue", "maintenance.noop", "--payload", '{"n": 1}', "--key", "cli-1"])
    assert out.exit_code == 0, out.output
    assert runner.invoke(args=["jobs", "enqueue", "maintenance.noop", "--payload", "[1]"]).exit_code != 0
    out = runner.invoke(args=["jobs", "worker", "--burst", "--concurrency", "2"])
    assert out.exit_code == 0, out.output
    assert "worker stopped after 1 jobs" in out.output
    status = runner.invoke(args=["jobs", "status"])
    assert status.exit_code == 0 and '"ready": 0' in status.output
    with app.app_context():
        job = db.session.execute(select(Job).where(Job.idempotency_key == "cli-1")).scalar_one()
        assert job.status == SUCCEEDED and job.result == {"job_id": job.id}


# -- the dead-letter admin API ---------------------------------------------------------------------


@pytest.fixture
def dead_jobs(app: Flask, kinds: Callable[[JobKind], JobKind]) -> dict[str, int]:
    """Two real dead letters: a data issue and a transient one."""
    kinds(
        failing(
            "test.bad_data",
            lambda n: ValidationError("Audio file has no samples", field="file"),
            [],
            permanent_retries=0,
        )
    )
    kinds(failing("test.flaky", lambda n: ConnectionError("storage emulator refused"), [], max_attempts=1))
    with app.app_context():
        ids = {"data": enqueue("test.bad_data", {"upload": 1}).id, "flaky": enqueue("test.flaky", {"api_key": "k"}).id}
    run_worker(app, burst=True)
    return ids


def test_dead_letter_endpoints_require_an_admin(app: Flask, dead_jobs: dict[str, int]) -> None:
    client = app.test_client()
    paths = [
        ("get", "/admin/api/monitoring/dead-letters"),
        ("get", f"/admin/api/monitoring/dead-letters/{dead_jobs['data']}"),
        ("post", f"/admin/api/monitoring/dead-letters/{dead_jobs['data']}/requeue"),
        ("post", "/admin/api/monitoring/dead-letters/requeue"),
        ("post", f"/admin/api/monitoring/dead-letters/{dead_jobs['data']}/archive"),
    ]
    user = login(client)["access_token"]
    for method, path in paths:
        assert getattr(client, method)(path).status_code == 401
        response = getattr(client, method)(path, headers=bearer(user), json={"kind": "test.flaky"})
        assert response.status_code == 403 and response.get_json()["error"]["code"] == "ADMIN_REQUIRED"
    assert load(app, dead_jobs["data"]).status == DEAD


def test_admins_list_filter_inspect_requeue_and_archive_dead_letters(app: Flask, dead_jobs: dict[str, int]) -> None:
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    base = "/admin/api/monitoring/dead-letters"

    listed = client.get(base, headers=headers).get_json()
    assert listed["total"] == 2 and {i["kind"] for i in listed["items"]} == {"test.bad_data", "test.flaky"}
    data_only = client.get(f"{base}?analysis=data_issue", headers=headers).get_json()
    assert [i["id"] for i in data_only["items"]] == [dead_jobs["data"]]
    assert data_only["items"][0]["recommended_action"].startswith("Fix the job's input")
    assert client.get(f"{base}?kind=test.flaky&per_page=1", headers=headers).get_json()["total"] == 1
    future = (timeutil.utcnow() + timedelta(hours=1)).isoformat()
    assert client.get(base, headers=headers, query_string={"since": future}).get_json()["total"] == 0
    assert client.get(f"{base}?since=yesterday", headers=headers).status_code == 422
    assert client.get(f"{base}?analysis=bogus", headers=headers).status_code == 422
    assert client.get(f"{base}?per_page=1000", headers=headers).status_code == 422

    one = client.get(f"{base}/{dead_jobs['flaky']}", headers=headers).get_json()["dead_letter"]
    assert one["errors"][0]["message"] == "storage emulator refused" and one["failure_analysis"] == "transient"
    assert one["payload"]["api_key"] != "k"  # secrets in payloads are masked for admins too
    assert client.get(f"{base}/999999", headers=headers).status_code == 404

    assert client.post(f"{base}/requeue", headers=headers, json={}).status_code == 422
    by_filter = client.post(f"{base}/requeue", headers=headers, json={"analysis": "transient"}).get_json()
    assert by_filter["job_ids"] == [dead_jobs["flaky"]] and load(app, dead_jobs["flaky"]).status == QUEUED
    assert client.post(f"{base}/{dead_jobs['flaky']}/requeue", headers=headers).status_code == 404

    requeued = client.post(f"{base}/{dead_jobs['data']}/requeue", headers=headers)
    assert requeued.status_code == 200 and load(app, dead_jobs["data"]).status == QUEUED
    run_worker(app, burst=True)
    archived = client.post(f"{base}/{dead_jobs['data']}/archive", headers=headers)
    assert archived.status_code == 200
    assert client.post(f"{base}/{dead_jobs['data']}/archive", headers=headers).status_code == 404
    assert [i["id"] for i in client.get(f"{base}?archived=true", headers=headers).get_json()["items"]] == [
        dead_jobs["data"]
    ]
    job = load(app, dead_jobs["data"])
    assert job.status == DEAD and [e["code"] for e in job.errors] == [
        "VALIDATION_ERROR",
        "REQUEUED",
        "VALIDATION_ERROR",
    ]

    events = {e.get("event_type"): e for e in read_log(app, "security.log")}
    for name in ("dead_letter_requeued", "dead_letters_requeued", "dead_letter_archived"):
        assert name in events, name
    assert events["dead_letters_requeued"]["job_ids"] == [dead_jobs["flaky"]]
    assert events["dead_letter_archived"]["user_id"] is not None


def test_running_and_queued_jobs_are_not_dead_letters(app: Flask) -> None:
    client = app.test_client()
    headers = bearer(login(client, ADMIN_EMAIL)["access_token"])
    with app.app_context():
        job_id = enqueue("maintenance.noop").id
        assert records.claim("w", None, 30) is not None
        assert db.session.get(Job, job_id).status == RUNNING  # type: ignore[union-attr]
    assert client.get(f"/admin/api/monitoring/dead-letters/{job_id}", headers=headers).status_code == 404
    assert client.post(f"/admin/api/monitoring/dead-letters/{job_id}/requeue", headers=headers).status_code == 404


def test_job_kind_decorator_registers_and_refuses_a_second_handler() -> None:
    @job_kind("test.decorated", max_attempts=2)
    def first(ctx: JobContext) -> None:
        return None

    try:
        assert REGISTRY.get("test.decorated") is first and first.policy.max_attempts == 2
        with pytest.raises(ValueError, match="already registered"):
            job_kind("test.decorated")(lambda ctx: None)
    finally:
        REGISTRY.unregister("test.decorated")


# -- wake-ups --------------------------------------------------------------------------------------


def _wakes_idle_worker(app: Flask, producer: Flask | None = None) -> float:
    """Seconds from enqueue (by `producer`, default `app`) to success while the worker polls every 5 s."""
    holder: dict[str, Worker] = {}

    def run() -> None:
        opts = WorkerOptions(install_signals=False, schedule=False, poll_seconds=5.0, heartbeat_seconds=0.2)
        holder["w"] = Worker(app, opts)
        holder["w"].run()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        time.sleep(1.0)  # the worker is up, found nothing and is now waiting
        started = time.monotonic()
        with (producer or app).app_context():
            job_id = enqueue("maintenance.noop").id
        while time.monotonic() - started < 10 and load(app, job_id).status != SUCCEEDED:
            time.sleep(0.02)
        return time.monotonic() - started
    finally:
        while "w" not in holder:
            time.sleep(0.05)
        holder["w"].stop()
        thread.join(15)


def test_enqueue_wakes_an_idle_worker_in_process(app: Flask) -> None:
    assert _wakes_idle_worker(app) < 2.5


def test_enqueue_wakes_an_idle_worker_through_redis(make_app: Callable[..., Flask], redis_url: str) -> None:
    from backend.app import create_app
    from backend.app.jobs import runtime
    from backend.app.jobs.dispatch import RedisDispatcher
    from config import TestingConfig

    app = make_app(REDIS_URL=redis_url)
    # Another process's app (its own dispatcher): only Redis can carry the wake-up to the worker.
    keys = ("SECRET_KEY", "JWT_SECRET_KEY", "LOG_DIR", "SQLALCHEMY_DATABASE_URI", "REDIS_URL", "LOCAL_STORAGE_DIR")
    producer = create_app(TestingConfig, **{k: app.config[k] for k in keys})
    try:
        with producer.app_context():
            assert isinstance(runtime().dispatcher, RedisDispatcher)
            assert runtime().dispatcher is not runtime(app).dispatcher
        assert _wakes_idle_worker(app, producer) < 2.5
    finally:
        with producer.app_context():
            db.engine.dispose()


def test_a_job_abandoned_while_still_leased_is_handed_back_not_left_running(
    app: Flask, kinds: Callable[[JobKind], JobKind]
) -> None:
    def spurious(ctx: JobContext) -> None:
        raise LeaseLostError("heartbeat hiccup")  # the lease is in fact still ours

    kinds(JobKind("test.spurious", spurious))
    with app.app_context():
        job_id = enqueue("test.spurious").id
    run_worker(app, burst=True, max_jobs=1)
    job = load(app, job_id)
    assert (job.status, job.attempts, job.lease_owner) == (RETRYING, 0, None)
