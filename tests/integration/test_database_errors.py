"""Database failures map to 409/503/500, roll back, and never poison the next request."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import text

from backend.app.extensions import db
from tests.harness.app import login, register
from tests.harness.contract import assert_error


def _add_failing_routes(app: Flask) -> None:
    @app.get("/__test/bad-sql")
    def bad_sql() -> None:
        db.session.execute(text("SELECT * FROM no_such_table_xyz"))

    @app.get("/__test/duplicate")
    def duplicate() -> None:
        from backend.app.models import User

        db.session.add(User(email="user@example.com", password_hash="x"))
        db.session.flush()  # the unique index fires here, inside the request


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_app(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> Flask:
    app = make_app() if request.param == "sqlite" else request.getfixturevalue("pg_app")
    _add_failing_routes(app)
    return app


def test_a_failed_query_does_not_break_the_next_request(any_db_app: Flask) -> None:
    client = any_db_app.test_client()
    error = assert_error(client.get("/__test/bad-sql"), 500, "DATABASE_ERROR")
    assert "no_such_table" not in str(error)
    # Same client, same process, same connection pool: the next request works.
    assert register(client, "after@example.com").status_code == 201
    assert login(client, "after@example.com")["access_token"]


def test_integrity_conflict_is_409_and_rolled_back(any_db_app: Flask) -> None:
    client = any_db_app.test_client()
    register(client)
    assert_error(client.get("/__test/duplicate"), 409, "CONFLICT")
    assert register(client, "second@example.com").status_code == 201


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://postgres@127.0.0.1:1/test", "sqlite:////nonexistent-dir/sub/oriel.db"],
    ids=["postgres-refused", "sqlite-unopenable"],
)
def test_unreachable_database_is_503_database_unavailable(make_app: Callable[..., Flask], url: str) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI=url)
    response = app.test_client().post("/api/auth/login", json={"email": "a@example.com", "password": "whatever1"})
    error = assert_error(response, 503, "DATABASE_UNAVAILABLE")
    assert error["recoverable"] is True and error["retry_after"] > 0
    assert "127.0.0.1" not in response.get_data(as_text=True)


def test_registration_works_on_postgres(pg_app: Flask) -> None:
    client = pg_app.test_client()
    assert register(client, "pg@example.com").status_code == 201
    assert_error(register(client, "PG@example.com"), 409, "EMAIL_TAKEN")
    assert login(client, "pg@example.com")["refresh_token"]


@pytest.mark.postgres
def test_a_connection_lost_mid_request_still_answers_and_the_next_request_reconnects(
    make_app: Callable[..., Flask], _postgres_migrated: str
) -> None:
    # Regression (fault under load): the session's rollback at teardown raised on the dead connection and
    # escaped Flask, so gunicorn replaced the answer with a bare, non-JSON 500.
    from urllib.parse import urlsplit, urlunsplit

    from tests.harness.peers.tcp_fault_proxy import TcpFaultProxy

    parts = urlsplit(_postgres_migrated)
    proxy = TcpFaultProxy(parts.port or 5432, target_host=parts.hostname or "127.0.0.1")
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    try:
        app = make_app(SQLALCHEMY_DATABASE_URI=urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}")))

        @app.get("/_test/cut-after-query")
        def cut_after_query() -> dict[str, int]:
            value = db.session.execute(text("SELECT 7")).scalar_one()  # a transaction is open now
            proxy.down()  # PostgreSQL goes away before the teardown's rollback
            return {"value": value}

        client = app.test_client()
        answer = client.get("/_test/cut-after-query")
        assert answer.status_code == 200 and answer.get_json() == {"value": 7}
        proxy.up()
        with app.app_context():
            assert db.session.execute(text("SELECT 1")).scalar_one() == 1  # the pool replaced the dead connection
    finally:
        proxy.close()
