"""Issue #14 point 9: the per-request work cut from the stack does the same as what it replaced."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import text

from backend.app.errors import APIError
from backend.app.extensions import db


def test_point9_one_teardown_ends_the_database_session(make_app: Callable[..., Flask]) -> None:
    """Flask-SQLAlchemy's own teardown is folded into ours: one hook, and an opened session is still ended."""
    app = make_app()
    sqlalchemy_teardown = app.extensions["sqlalchemy"]._teardown_session
    assert sqlalchemy_teardown not in app.teardown_appcontext_funcs
    assert [f.__name__ for f in app.teardown_appcontext_funcs] == ["_release_session"]

    opened: list[object] = []

    @app.get("/test/uses-db")
    def uses_db() -> dict[str, int]:
        opened.append(db.session())
        return {"one": db.session.execute(text("SELECT 1")).scalar_one()}

    client = app.test_client()
    assert client.get("/test/uses-db").status_code == 200
    assert opened and not db.session.registry.registry  # removed at teardown: no scope holds a session
    with app.app_context():
        assert db.session() is not opened[0]  # a new request context gets a new session
    assert not db.session.registry.registry  # and a plain app context ends its own too


def test_point9_a_request_without_cookies_parses_none_and_answers_as_flasks_own_sessions(
    make_app: Callable[..., Flask],
) -> None:
    """Without a Cookie header no cookie is parsed; the session and the headers are what Flask's interface gives."""
    app = make_app()
    seen: dict[str, object] = {}

    @app.get("/test/session/read")
    def read_session() -> dict[str, object]:
        seen["type"] = type(session._get_current_object())  # type: ignore[attr-defined]
        seen["empty"] = not session
        return {"ok": True}

    @app.get("/test/session/set")
    def set_session() -> dict[str, object]:
        session["n"] = int(session.get("n", 0)) + 1
        return {"n": session["n"]}

    @app.get("/test/session/none")
    def no_session() -> dict[str, object]:
        seen["cookies_parsed"] = "cookies" in request.__dict__  # werkzeug's cached property
        return {"ok": True}

    def answers() -> list[tuple[int, object, str | None, str | None]]:
        client = app.test_client()
        out = []
        for path in ("/test/session/none", "/test/session/read", "/test/session/set", "/test/session/set", "/healthz"):
            response = client.get(path)
            out.append(
                (
                    response.status_code,
                    response.get_json(),
                    response.headers.get("Vary"),
                    response.headers.get("Set-Cookie") and "set",
                )
            )
        return out

    ours = answers()
    assert seen == {"cookies_parsed": False, "type": app.session_interface.session_class, "empty": True}
    assert ours[2][1] == {"n": 1} and ours[3][1] == {"n": 2}  # a written session is saved and read back
    app.session_interface = SecureCookieSessionInterface()  # Flask's own, for comparison
    assert answers() == ours
    assert seen["cookies_parsed"] is True  # what the fast path saves


def test_point9_without_a_secret_key_the_session_is_flasks_null_session(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    app.secret_key = None
    with app.test_request_context("/"):
        req = request._get_current_object()  # type: ignore[attr-defined]
        assert app.session_interface.open_session(app, req) is None
        assert SecureCookieSessionInterface().open_session(app, req) is None


def test_point9_error_listeners_are_called_without_blinkers_send(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every receiver connected for the app gets each error (not while muted), as `send` would call it."""
    from backend.app.signals import error_occurred

    app = make_app()
    calls: list[tuple[str, str | None]] = []

    def listen(sender: Flask, error: APIError, exception: BaseException | None = None, **_: object) -> None:
        assert sender is app
        calls.append((error.code, type(exception).__name__ if exception is not None else None))

    def no_send(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("error_occurred.send is not on the error path")

    monkeypatch.setattr(error_occurred, "send", no_send)
    error_occurred.connect(listen, sender=app)
    try:
        client = app.test_client()
        assert client.get("/no/such/page").status_code == 404
        assert calls == [("NOT_FOUND", "NotFound")]
        with error_occurred.muted():
            assert client.get("/no/such/page").status_code == 404
        assert len(calls) == 1
    finally:
        error_occurred.disconnect(listen, sender=app)


def test_point9_frame_labels_are_remembered_per_code_object() -> None:
    """The error capture's frame walk labels each code object once; in-app frames are found as before."""
    from backend.app.monitoring.errors import fingerprint

    def raise_here() -> None:
        raise ValueError("x")

    try:
        raise_here()
    except ValueError as exc:
        frames = fingerprint.exception_frames(exc)
        tb = exc.__traceback__
    # This file is outside backend/: no in-app frame, and each code object is remembered as such.
    assert frames == []
    code = tb.tb_frame.f_code if tb is not None else None
    assert code is not None and fingerprint._LABELS.get((code, code.co_filename), "missing") is None
    here = raise_here.__code__
    fingerprint._LABELS[(here, here.co_filename)] = "app/pretend.py:raise_here"  # a remembered label is what counts
    try:
        raise_here()
    except ValueError as exc:
        assert fingerprint.exception_frames(exc) == ["app/pretend.py:raise_here"]
    fingerprint._LABELS.clear()


def test_point9_an_error_reads_its_request_id_once(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The envelope and the X-Request-ID header of an error carry the one id, read once."""
    from backend.app import error_handlers

    reads: list[str] = []
    real = error_handlers.get_request_id

    def counted() -> str:
        reads.append(real())
        return reads[-1]

    monkeypatch.setattr(error_handlers, "get_request_id", counted)
    response = make_app().test_client().get("/no/such/page")
    assert response.status_code == 404
    assert response.get_json()["error"]["request_id"] == response.headers["X-Request-ID"] == reads[0]
    assert len(reads) == 1
