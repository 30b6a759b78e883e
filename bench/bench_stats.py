"""Error statistics at 1M events: latency of GET /admin/api/monitoring/errors/stats (`make bench-stats`).

For SQLite and for PostgreSQL: migrate a fresh database, bulk-load 1,000,000 raw error events spread
over 30 days and 200 groups (Zipf-like popularity, 16 codes) together with exactly the rollups the
recorder would have written for them (groups with counts and first/last seen, errors and requests
per minute, errors per code per minute and per hour, errors per group per hour), push a few more events through
the real recorder, then time the stats endpoint through the Flask test client (full middleware:
request IDs, JWT, admin check, logging) and report p50/p95. Target: p95 < 100 ms on both.

PostgreSQL comes from TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test); a
temporary database is created and dropped. Nothing listens on a network port.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import func, select

from backend.app import create_app
from backend.app.extensions import db
from backend.app.models import ErrorEvent, ErrorGroup
from backend.app.monitoring import flush_error_stats, record_error
from backend.app.monitoring.errors.fingerprint import fingerprint
from backend.app.monitoring.errors.severity import categorise, severity_for
from backend.app.monitoring.errors.store import EVENT_COLUMNS
from config import TestingConfig, normalise_database_url

PG_BASE = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN = "bench-admin@example.com"
PASSWORD = "correct-horse-battery-staple"
CODES: list[tuple[str, int, BaseException | None]] = [
    ("NOT_FOUND", 404, None),
    ("VALIDATION_ERROR", 422, None),
    ("TOKEN_EXPIRED", 401, None),
    ("TOKEN_INVALID", 401, None),
    ("ADMIN_REQUIRED", 403, None),
    ("RATE_LIMITED", 429, None),
    ("MALFORMED_JSON", 400, None),
    ("PAYMENT_DECLINED", 402, None),
    ("INTERNAL_ERROR", 500, ZeroDivisionError()),
    ("INTERNAL_ERROR", 500, KeyError()),
    ("DATABASE_UNAVAILABLE", 503, ConnectionRefusedError()),
    ("STORAGE_UNAVAILABLE", 503, None),
    ("EMAIL_UNAVAILABLE", 503, None),
    ("RENDERING_TIMEOUT", 500, None),
    ("FFMPEG_ERROR", 500, None),
    ("CLIENT_ERROR", 0, None),
]


@dataclass
class Group:
    """One synthetic error group and the counters the recorder would keep for it."""

    id: int
    fingerprint: str
    code: str
    status_code: int | None
    category: str
    severity: str
    exc_type: str
    endpoint: str
    title: str
    source: str
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None


def make_groups(n: int, rng: random.Random) -> list[Group]:
    """`n` groups over the codes, each with its own endpoint and message shape."""
    groups = []
    for i in range(n):
        code, status, exc = CODES[i % len(CODES)]
        source = "client" if code == "CLIENT_ERROR" else ("job" if code.startswith(("RENDER", "FFMPEG")) else "http")
        category = categorise(code, status or None, exc)
        endpoint = f"bench.endpoint_{i % 37}"
        exc_type = type(exc).__name__ if exc is not None else "APIError"
        message = f"failure kind {chr(97 + i % 26)}{i} for item <n>"
        groups.append(
            Group(
                id=i + 1,
                fingerprint=fingerprint(
                    source=source, exc_type=exc_type, code=code, endpoint=endpoint, frames=[], message=message
                ),
                code=code,
                status_code=status or None,
                category=category.value,
                severity=severity_for(category, status or None).value,
                exc_type=exc_type,
                endpoint=endpoint,
                title=f"{exc_type}: {message}",
                source=source,
            )
        )
    rng.shuffle(groups)  # popularity must not follow the id order
    return groups


def event_batches(
    groups: list[Group], total: int, days: int, now: datetime, rng: random.Random, batch: int = 50_000
) -> Iterator[list[tuple[Any, ...]]]:
    """Events in time order, in batches; updates each group's counters as the recorder would."""
    weights = list(itertools.accumulate(1 / (rank + 1) ** 1.1 for rank in range(len(groups))))
    start = now - timedelta(days=days)
    span = (now - start).total_seconds()
    for first in range(0, total, batch):
        size = min(batch, total - first)
        lo, hi = first / total * span, (first + size) / total * span
        offsets = sorted(rng.uniform(lo, hi) for _ in range(size))
        rows = []
        for offset in offsets:
            group = groups[bisect.bisect_left(weights, rng.random() * weights[-1])]
            moment = start + timedelta(seconds=offset)
            group.count += 1
            group.first_seen = group.first_seen or moment
            group.last_seen = moment
            item = rng.randrange(100_000)
            rows.append(
                (
                    uuid.UUID(int=rng.getrandbits(128)).hex,
                    group.id,
                    moment,
                    group.source,
                    group.code,
                    group.status_code,
                    group.category,
                    group.severity,
                    group.title.replace("<n>", str(item)),
                    group.exc_type,
                    group.endpoint,
                    "GET" if group.source == "http" else None,
                    f"/api/items/{item}" if group.source != "job" else None,
                    uuid.UUID(int=rng.getrandbits(128)).hex,
                    rng.randrange(1, 5000) if rng.random() < 0.6 else None,
                    None,
                )
            )
        yield rows


class Loader:
    """Bulk writes for one dialect: COPY on PostgreSQL, executemany on SQLite."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        with app.app_context():
            self.dialect = db.engine.dialect.name
            self.raw = db.engine.raw_connection()

    def _value(self, value: Any) -> Any:
        if self.dialect == "sqlite" and isinstance(value, datetime):
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's storage format
        if self.dialect == "sqlite" and isinstance(value, bool):
            return int(value)
        return value

    def rows(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        """Insert `rows` into `table`."""
        cursor = self.raw.cursor()
        if self.dialect == "postgresql":
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in columns)
            cursor.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                [tuple(self._value(v) for v in row) for row in rows],
            )
        self.raw.commit()

    def execute(self, sql: str) -> None:
        """Run one statement (ANALYZE) outside a transaction where needed."""
        cursor = self.raw.cursor()
        cursor.execute(sql)
        self.raw.commit()

    def close(self) -> None:
        """Return the connection."""
        self.raw.close()


def load(app: Flask, total: int, n_groups: int, days: int, seed: int) -> dict[str, int]:
    """Bulk-load events and the matching rollups; row counts per table."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    groups = make_groups(n_groups, rng)
    loader = Loader(app)
    group_cols = [
        "id", "fingerprint", "source", "code", "exc_type", "endpoint", "title", "frames", "category",
        "severity", "status_code", "count", "first_seen", "last_seen", "status", "regressed",
    ]  # fmt: skip
    loader.rows(
        "error_groups",
        group_cols,
        [
            (g.id, g.fingerprint, g.source, g.code, g.exc_type, g.endpoint, g.title, None, g.category, g.severity,
             g.status_code, 0, now, now, "unresolved", False)
            for g in sorted(groups, key=lambda g: g.id)
        ],
    )  # fmt: skip
    per_minute: Counter[datetime] = Counter()
    per_code_minute: Counter[tuple[datetime, str]] = Counter()
    per_code_hour: Counter[tuple[datetime, str]] = Counter()
    per_group_hour: Counter[tuple[datetime, int]] = Counter()
    for rows in event_batches(groups, total, days, now, rng):
        loader.rows("error_events", EVENT_COLUMNS, rows)
        for row in rows:
            minute = row[2].replace(second=0, microsecond=0)
            per_minute[minute] += 1
            per_code_minute[(minute, row[4])] += 1
            per_code_hour[(minute.replace(minute=0), row[4])] += 1
            per_group_hour[(minute.replace(minute=0), row[1])] += 1
    # The rollups the recorder keeps, from the very same events.
    with app.app_context():
        table = ErrorGroup.__table__
        with db.engine.begin() as conn:
            for g in groups:
                if g.count:
                    conn.execute(
                        table.update()
                        .where(table.c.id == g.id)
                        .values(count=g.count, first_seen=g.first_seen, last_seen=g.last_seen)
                    )
    loader.rows(
        "error_minutes",
        ["minute", "errors", "requests"],
        [(m, n, n * rng.randint(15, 30)) for m, n in sorted(per_minute.items())],
    )
    loader.rows("error_code_minutes", ["minute", "code", "count"], [(m, c, n) for (m, c), n in per_code_minute.items()])
    loader.rows("error_code_hours", ["hour", "code", "count"], [(h, c, n) for (h, c), n in per_code_hour.items()])
    loader.rows("error_group_hours", ["hour", "group_id", "count"], [(h, g, n) for (h, g), n in per_group_hour.items()])
    if loader.dialect == "postgresql":
        # Groups were copied with explicit ids: move the id sequence past them as inserts would have.
        loader.execute(
            "SELECT setval(pg_get_serial_sequence('error_groups', 'id'), (SELECT max(id) FROM error_groups))"
        )
        loader.raw.autocommit = True  # type: ignore[attr-defined]
    loader.execute("ANALYZE")
    loader.close()
    return {
        "error_events": total,
        "error_groups": len(groups),
        "error_minutes": len(per_minute),
        "error_code_minutes": len(per_code_minute),
        "error_group_hours": len(per_group_hour),
    }


def admin_token(app: Flask) -> str:
    """Register and log in the bench admin through the API."""
    client = app.test_client()
    client.post("/api/auth/register", json={"email": ADMIN, "password": PASSWORD})
    app.test_cli_runner().invoke(args=["users", "create-admin", ADMIN])  # registering proves nothing
    response = client.post("/api/auth/login", json={"email": ADMIN, "password": PASSWORD})
    return response.get_json()["access_token"]


def time_endpoint(app: Flask, url: str, token: str, n: int) -> list[float]:
    """Milliseconds per GET `url`, after a warm-up."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(10):
        assert client.get(url, headers=headers).status_code == 200
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return samples


def pct(samples: list[float], q: float) -> float:
    """The q-quantile (0-1) of samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_backend(name: str, url: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Load one database and time the endpoints on it."""
    app = create_app(
        TestingConfig,
        SECRET_KEY="bench-secret-key-0123456789abcdef",
        JWT_SECRET_KEY="bench-jwt-secret-key-0123456789abcdef",
        SQLALCHEMY_DATABASE_URI=url,
        LOG_DIR=str(workdir / f"logs-{name}"),
        ADMIN_EMAILS=frozenset({ADMIN}),
        RATELIMIT_ENABLED=False,
    )
    with app.app_context():
        upgrade()
    started = time.perf_counter()
    rows = load(app, args.events, args.groups, args.days, args.seed)
    load_s = time.perf_counter() - started
    # A few events through the real recorder: the same tables, the same upserts.
    with app.app_context():
        for i in range(50):
            record_error(RuntimeError(f"bench live event {i}"), source="job", code="JOB_FAILED")
    assert flush_error_stats(app) == 50
    with app.app_context():
        total = db.session.scalar(select(func.sum(ErrorGroup.count)))
        raw = db.session.scalar(select(func.count()).select_from(ErrorEvent))
        db.session.remove()
    assert total == raw == args.events + 50, (total, raw)
    token = admin_token(app)
    result: dict[str, Any] = {"backend": name, "rows": rows, "load_s": load_s}
    for label, path in (
        # The same middleware (JWT, admin check, logging) around a trivial query: what the stats part adds.
        ("baseline", "/admin/api/monitoring/health/check"),
        ("stats", "/admin/api/monitoring/errors/stats"),
        ("recent", "/admin/api/monitoring/logs/recent-errors?limit=50"),
        ("recent_code", "/admin/api/monitoring/logs/recent-errors?limit=50&code=PAYMENT_DECLINED"),
        ("summary", "/api/errors/summary"),
    ):
        samples = time_endpoint(app, path, token, args.requests if label == "stats" else max(50, args.requests // 4))
        result[label] = {"p50": statistics.median(samples), "p95": pct(samples, 0.95), "max": max(samples)}
    with app.app_context():
        db.engine.dispose()
    return result


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300, help="timed GETs of the stats endpoint")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
        workdir = Path(tmp)
        if args.backend in ("sqlite", "both"):
            results.append(run_backend("SQLite", f"sqlite:///{workdir / 'stats.db'}", workdir, args))
        if args.backend in ("postgres", "both"):
            import psycopg

            name = f"oriel_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG_BASE, autocommit=True, connect_timeout=3) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            try:
                url = normalise_database_url(PG_BASE.rsplit("/", 1)[0] + "/" + name)
                results.append(run_backend("PostgreSQL", url, workdir, args))
            finally:
                with psycopg.connect(PG_BASE, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    out = sys.stdout
    out.write(f"\n{args.events:,} events, {args.groups} groups, {args.days} days; {args.requests} timed requests\n\n")
    out.write(
        "| Backend | rows (events / code-minute / group-hour / minute) | load s | baseline p50 / p95 ms "
        "| stats p50 ms | stats p95 ms | stats max ms | recent p95 ms | recent by code p95 ms | summary p95 ms "
        "| target p95 < 100 ms |\n"
    )
    out.write("|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in results:
        rows = r["rows"]
        out.write(
            f"| {r['backend']} | {rows['error_events']:,} / {rows['error_code_minutes']:,} / "
            f"{rows['error_group_hours']:,} / {rows['error_minutes']:,} | {r['load_s']:.0f} | "
            f"{r['baseline']['p50']:.1f} / {r['baseline']['p95']:.1f} | "
            f"{r['stats']['p50']:.1f} | {r['stats']['p95']:.1f} | {r['stats']['max']:.1f} | "
            f"{r['recent']['p95']:.1f} | {r['recent_code']['p95']:.1f} | {r['summary']['p95']:.1f} | "
            f"{'met' if r['stats']['p95'] < 100 else 'MISSED'} |\n"
        )


if __name__ == "__main__":
    main()
