"""Error statistics, unit level: fingerprints and grouping, classification, sanitising, the buffer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from backend.app.monitoring.errors.client_reports import sanitise, stack_functions, strip_markup
from backend.app.monitoring.errors.fingerprint import exception_frames, fingerprint, normalise_message
from backend.app.monitoring.errors.recorder import ErrorRecorder
from backend.app.monitoring.errors.severity import Category, Severity, categorise, categorise_client, severity_for
from backend.app.monitoring.errors.stats import decode_cursor
from backend.app.monitoring.errors.store import ErrorEventData

TESTS_ROOT = Path(__file__).resolve().parent


def _lookup_user(user_id: int) -> None:
    raise KeyError(f"user {user_id} not found")


def _lookup_order(order_id: int) -> None:
    raise KeyError(f"user {order_id} not found")


def _caught(fn: object, arg: int) -> BaseException:
    try:
        fn(arg)  # type: ignore[operator]
    except KeyError as exc:
        return exc
    raise AssertionError("expected a KeyError")


def _fp(exc: BaseException, *, code: str = "INTERNAL_ERROR", endpoint: str = "orders.show") -> str:
    return fingerprint(
        source="http",
        exc_type=type(exc).__name__,
        code=code,
        endpoint=endpoint,
        frames=exception_frames(exc, TESTS_ROOT),
        message=str(exc),
    )


def test_message_normalisation_strips_numbers_hex_ids_uuids_and_emails() -> None:
    raw = "User 42 (bob@example.com) order 9f86d081884c7d65 job 123e4567-e89b-12d3-a456-426614174000 took 1.5s"
    assert normalise_message(raw) == "User <n> (<email>) order <hex> job <uuid> took <n>s"
    assert normalise_message("v2 handler") == "v2 handler"  # names with digits are not ids


def test_same_bug_with_different_ids_is_one_group() -> None:
    first, second = _caught(_lookup_user, 1), _caught(_lookup_user, 98765)
    assert str(first) != str(second)
    assert _fp(first) == _fp(second)


def test_same_message_from_different_frames_is_two_groups() -> None:
    from_user, from_order = _caught(_lookup_user, 1), _caught(_lookup_order, 1)
    assert str(from_user) == str(from_order)
    assert exception_frames(from_user, TESTS_ROOT)[-1] == "test_error_stats_unit.py:_lookup_user"
    assert _fp(from_user) != _fp(from_order)


def test_frames_use_function_names_not_line_numbers_and_only_in_app_code() -> None:
    frames = exception_frames(_caught(_lookup_user, 1), TESTS_ROOT)
    assert all(":" in f and not f.split(":")[-1].isdigit() for f in frames)
    # Library frames (not under the root) are left out entirely.
    try:
        datetime.strptime("nope", "%Y")
    except ValueError as exc:
        assert all(not f.startswith("/") for f in exception_frames(exc, TESTS_ROOT))


def test_alerts_and_metrics_frames_still_group_after_their_move_under_monitoring() -> None:
    """#16 moved alerts/ and metrics.py under monitoring/: their frames stay in-app, the capture machinery does not."""
    from backend.app.monitoring.errors.fingerprint import BACKEND_ROOT, in_app_frames

    def raised_in(relative: str) -> list[str]:
        namespace: dict[str, Any] = {}
        source = "def deliver():\n    raise RuntimeError('boom')\n"
        exec(compile(source, str(BACKEND_ROOT / relative), "exec"), namespace)
        try:
            namespace["deliver"]()
        except RuntimeError as exc:
            return in_app_frames(exc.__traceback__)
        raise AssertionError("not raised")

    assert raised_in("app/monitoring/alerts/delivery.py") == ["app/monitoring/alerts/delivery.py:deliver"]
    assert raised_in("app/monitoring/metrics.py") == ["app/monitoring/metrics.py:deliver"]
    assert raised_in("app/monitoring/errors/recorder.py") == []
    assert raised_in("app/error_handlers.py") == []


def test_code_endpoint_and_type_split_groups() -> None:
    exc = _caught(_lookup_user, 1)
    assert _fp(exc, code="A") != _fp(exc, code="B")
    assert _fp(exc, endpoint="a") != _fp(exc, endpoint="b")


def test_categories_and_severities_follow_seed_004() -> None:
    assert categorise("RATE_LIMITED", 429, None) is Category.RATE_LIMIT
    assert categorise("VALIDATION_ERROR", 422, None) is Category.VALIDATION
    assert categorise("DATABASE_UNAVAILABLE", 503, OperationalError("x", {}, Exception())) is Category.DATABASE
    assert categorise("INTERNAL_ERROR", 500, ConnectionRefusedError()) is Category.NETWORK
    assert categorise("INTERNAL_ERROR", 500, MemoryError()) is Category.SYSTEM
    assert categorise("INTERNAL_ERROR", 500, ZeroDivisionError()) is Category.PROCESSING
    assert categorise("NOT_FOUND", 404, None) is Category.API
    assert categorise("RENDERING_TIMEOUT", 500, None) is Category.PROCESSING
    assert severity_for(Category.SYSTEM, 500) is Severity.CRITICAL
    assert severity_for(Category.NETWORK, 503) is Severity.HIGH
    assert severity_for(Category.API, 404) is Severity.MEDIUM
    assert severity_for(Category.VALIDATION, 422) is Severity.LOW
    assert severity_for(Category.PROCESSING, 500) is Severity.HIGH  # an unexpected 500 is never LOW
    assert categorise_client("TypeError", "Failed to fetch", None) is Category.NETWORK
    assert categorise_client(None, "something odd", None) is Category.UNKNOWN


def test_client_text_loses_markup_secrets_and_line_breaks() -> None:
    dirty = '<script>alert("x")</script><img src=x onerror=alert(1)>Hi <b>there</b>\r\nBearer abcdefghijklmnop'
    clean = sanitise(dirty)
    assert clean is not None
    assert "<" not in clean and "alert" not in clean and "onerror" not in clean
    assert "\n" not in clean and "\r" not in clean
    assert "abcdefghijklmnop" not in clean
    assert strip_markup("a < b") == "a &lt; b"
    assert "javascript:" not in strip_markup("javascript:alert(1)")


def test_stack_function_names_are_parsed_from_chrome_and_firefox_stacks() -> None:
    chrome = "TypeError: x\n    at renderPlayer (app.js:10:5)\n    at main (app.js:99:1)"
    firefox = "renderPlayer@app.js:10:5\nmain@app.js:99:1"
    assert stack_functions(chrome) == stack_functions(firefox) == ["renderPlayer", "main"]


def test_cursor_round_trip_and_garbage_is_rejected() -> None:
    with pytest.raises(ValueError):
        decode_cursor("!!not-a-cursor")
    with pytest.raises(ValueError):
        decode_cursor("bm9waXBl")  # base64 of "nopipe"


def _event(n: int) -> ErrorEventData:
    return ErrorEventData(
        event_id=f"{n:032x}",
        occurred_at=datetime.now(UTC),
        fingerprint="f" * 40,
        source="job",
        code="X",
        status_code=None,
        category="UNKNOWN",
        severity="MEDIUM",
        title="t",
        message="m",
    )


def test_a_full_buffer_drops_and_counts_instead_of_blocking(app: object) -> None:
    recorder = ErrorRecorder(app, batch_size=2, interval=60, capacity=3)  # type: ignore[arg-type]
    accepted = [recorder.submit(_event(i)) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert recorder.status()["dropped"] == 2 and recorder.pending == 3


def _refuse_writes(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The next `times` batch writes fail as they do while the database is unreachable."""
    from backend.app.monitoring.errors import recorder as recorder_module

    real = recorder_module.write_batch
    left = [times]

    def refusing(engine: Any, events: Any, requests: Any) -> None:
        if left[0]:
            left[0] -= 1
            raise OperationalError("INSERT INTO error_events", {}, ConnectionRefusedError("connection refused"))
        real(engine, events, requests)

    monkeypatch.setattr(recorder_module, "write_batch", refusing)


def test_events_are_kept_through_a_database_outage_and_written_when_it_returns(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression (fault under load): after 3 failed flushes (0.6-1.5 s) a batch used to be dropped, so the
    # 503s of a database outage never reached the statistics.
    from backend.app.models.error_event import ErrorEvent

    _refuse_writes(monkeypatch, 20)
    recorder = ErrorRecorder(app, batch_size=10, interval=60, retry_seconds=300)
    recorder.submit(_event(1))
    recorder.submit(_event(2))
    for _ in range(20):
        assert recorder.flush() == 0
    recorder.submit(_event(3))
    assert recorder.status() == {"pending": 3, "dropped": 0, "failed_flushes": 20, "sampled_out": 0}
    assert recorder.flush() == 3  # the kept batch first, then the newer event
    with app.app_context():
        assert {e.event_id for e in ErrorEvent.query.all()} >= {f"{n:032x}" for n in (1, 2, 3)}


def test_a_batch_refused_for_longer_than_retry_seconds_is_dropped_and_counted(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_writes(monkeypatch, 2)
    recorder = ErrorRecorder(app, batch_size=10, interval=60, retry_seconds=0.0)
    recorder.submit(_event(1))
    assert recorder.flush() == 0  # kept for a retry
    assert recorder.flush() == 0  # refused again past retry_seconds: dropped
    assert recorder.status() == {"pending": 0, "dropped": 1, "failed_flushes": 2, "sampled_out": 0}
