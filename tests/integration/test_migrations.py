"""The Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL.

Several features change the schema at once; a model column without its migration (or the reverse)
would only show on a database that was migrated, which is every real one. Alembic's own comparison
(what `flask db migrate` would generate) must find nothing left to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from backend.app.extensions import db


def _differences(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), db.metadata)
    finally:
        engine.dispose()


def test_migrated_sqlite_matches_the_models(migrated_sqlite_template: Path) -> None:
    assert _differences(f"sqlite:///{migrated_sqlite_template}") == []


@pytest.mark.postgres
def test_migrated_postgres_matches_the_models(_postgres_migrated: str) -> None:
    assert _differences(_postgres_migrated) == []
