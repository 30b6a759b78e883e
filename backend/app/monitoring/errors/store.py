"""Write a batch of error events and request counts in one transaction, with portable upserts.

Counters are added with `INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n`, which SQLite
and PostgreSQL both support, so concurrent writers in different processes never lose an increment
and never need a read-modify-write. Rows are pre-aggregated per key because PostgreSQL refuses to
update the same row twice in one statement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, case, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from ...ids import uuid7_hex_batch
from ...models import ErrorCodeHour, ErrorCodeMinute, ErrorEvent, ErrorGroup, ErrorGroupHour, ErrorMinute

#: The source of events reported by browser clients; every other source is the server's own.
CLIENT_SOURCE = "client"


@dataclass(slots=True)
class ErrorEventData:
    """One error occurrence, captured on the recording thread and written later by the writer."""

    event_id: str | None  # None until written: `assign_event_ids` gives a batch its ids
    occurred_at: datetime
    fingerprint: str
    source: str
    code: str
    status_code: int | None
    category: str
    severity: str
    title: str
    message: str
    exc_type: str | None = None
    endpoint: str | None = None
    method: str | None = None
    path: str | None = None
    request_id: str | None = None
    user_id: int | None = None
    frames: str | None = None
    context: str | None = None
    raw: bool = True  # False: counted in the group and rollups, but no raw row (a sampled-out client error)
    weight: int = 1  # occurrences this event stands for: the sampled-out 4xx of one group and minute come as one


def is_server_error(status_code: int | None) -> bool:
    """A 5xx, or a failure outside any request (a job): the server's fault. A 4xx is the caller's."""
    return status_code is None or status_code >= 500


def floor_minute(moment: datetime) -> datetime:
    """The start of `moment`'s UTC minute."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def floor_hour(moment: datetime) -> datetime:
    """The start of `moment`'s UTC hour."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def minute_from_epoch(minute: int) -> datetime:
    """A minute number (seconds since the epoch // 60) as an aware UTC datetime."""
    return datetime.fromtimestamp(minute * 60, UTC)


def hour_from_epoch(hour: int) -> datetime:
    """An hour number (seconds since the epoch // 3600) as an aware UTC datetime."""
    return datetime.fromtimestamp(hour * 3600, UTC)


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"error statistics need SQLite or PostgreSQL, not {conn.dialect.name}")


# Upsert constructs built once per dialect and shape: building one (its `excluded` columns and
# SET clause) costs more than running it on a batch, and the writer thread runs them every flush.
_statements: dict[tuple[Any, ...], Any] = {}


def _upsert_add_statement(conn: Connection, table: Table, keys: tuple[str, ...], add: tuple[str, ...]) -> Any:
    cache_key = ("add", conn.dialect.name, table, keys, add)
    stmt = _statements.get(cache_key)
    if stmt is None:
        stmt = _insert(conn, table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: table.c[c] + stmt.excluded[c] for c in add}
        )
        _statements[cache_key] = stmt
    return stmt


def upsert_add(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], keys: Sequence[str], add: Iterable[str]
) -> None:
    """Insert rows, or add their counter columns to the existing rows with the same keys."""
    if not rows:
        return
    conn.execute(_upsert_add_statement(conn, table, tuple(keys), tuple(add)), list(rows))


def _group_rows(events: Sequence[ErrorEventData]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for ev in events:
        row = rows.get(ev.fingerprint)
        if row is None:
            rows[ev.fingerprint] = {
                "fingerprint": ev.fingerprint,
                "source": ev.source,
                "code": ev.code,
                "exc_type": ev.exc_type,
                "endpoint": ev.endpoint,
                "title": ev.title[:300],
                "frames": ev.frames,
                "category": ev.category,
                "severity": ev.severity,
                "status_code": ev.status_code,
                "count": ev.weight,
                "first_seen": ev.occurred_at,
                "last_seen": ev.occurred_at,
                "status": "unresolved",
                "regressed": False,
            }
        else:
            row["count"] += ev.weight
            row["first_seen"] = min(row["first_seen"], ev.occurred_at)
            row["last_seen"] = max(row["last_seen"], ev.occurred_at)
    # A fixed order means concurrent writers lock rows in the same order and cannot deadlock.
    return sorted(rows.values(), key=lambda row: row["fingerprint"])


def _group_upsert_statement(conn: Connection, table: Table) -> Any:
    cache_key = ("groups", conn.dialect.name, table)
    stmt = _statements.get(cache_key)
    if stmt is not None:
        return stmt
    stmt = _insert(conn, table)
    new = stmt.excluded
    # A resolved group that happens again after it was resolved is a regression.
    regression = and_(
        table.c.status == "resolved", table.c.resolved_at.is_not(None), new.last_seen > table.c.resolved_at
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["fingerprint"],
        set_={
            "count": table.c.count + new.count,
            "first_seen": case((new.first_seen < table.c.first_seen, new.first_seen), else_=table.c.first_seen),
            "last_seen": case((new.last_seen > table.c.last_seen, new.last_seen), else_=table.c.last_seen),
            "status": case((regression, literal("unresolved")), else_=table.c.status),
            "regressed": case((regression, literal(True)), else_=table.c.regressed),
        },
    )
    _statements[cache_key] = stmt
    return stmt


def upsert_groups(conn: Connection, events: Sequence[ErrorEventData]) -> dict[str, int]:
    """Create or update the groups of `events` (regressing resolved ones); fingerprint → group id."""
    rows = _group_rows(events)
    if not rows:
        return {}
    table = ErrorGroup.__table__
    conn.execute(_group_upsert_statement(conn, table), rows)
    fingerprints = [row["fingerprint"] for row in rows]
    found = conn.execute(select(table.c.fingerprint, table.c.id).where(table.c.fingerprint.in_(fingerprints)))
    return {fp: gid for fp, gid in found}


def assign_event_ids(events: Sequence[ErrorEventData]) -> None:
    """Give every event without an id a UUIDv7 of its time: one `os.urandom` call for the batch."""
    missing = [ev for ev in events if ev.event_id is None and ev.raw]  # only raw rows need an id
    if not missing:
        return
    ids = uuid7_hex_batch([int(ev.occurred_at.timestamp() * 1000) for ev in missing])
    for ev, event_id in zip(missing, ids, strict=True):
        ev.event_id = event_id


# Raw events per INSERT statement at most: 16 parameters a row stays far below SQLite's 32,766 and
# PostgreSQL's 65,535 parameters a statement. Statements come in power-of-two sizes only, so the few
# texts stay in the driver's statement cache: preparing a new 250-row INSERT cost SQLite about 5 ms.
_INSERT_CHUNK = 512
# Positional placeholders by DB-API parameter style (sqlite3: qmark; psycopg: pyformat, which takes %s too).
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
# The raw-event columns in the order every bulk insert gives them (the writer, the 1M-event benchmark).
EVENT_COLUMNS = (
    "event_id",
    "group_id",
    "occurred_at",
    "source",
    "code",
    "status_code",
    "category",
    "severity",
    "message",
    "exc_type",
    "endpoint",
    "method",
    "path",
    "request_id",
    "user_id",
    "context",
)


def _event_insert(conn: Connection, rows: int) -> tuple[str, Any]:
    """A `rows`-row INSERT of raw events in the driver's parameter style, and the datetime converter.

    Rows go to the driver as one flat tuple of plain values, in one statement per chunk:
    - SQLAlchemy's per-row parameter processing cost more than SQLite's own insert into six indexes;
    - `executemany` steps the statement once per row, and sqlite3 releases the GIL around every
      step: under gunicorn each release handed the GIL to a request thread and the writer waited to
      get it back, a context switch or two per error answered.
    """
    cache_key = ("events", conn.dialect.name, rows)
    cached = _statements.get(cache_key)
    if cached is None:
        placeholder = _PLACEHOLDERS.get(conn.dialect.paramstyle)
        if placeholder is None:
            raise NotImplementedError(f"error statistics: unsupported parameter style {conn.dialect.paramstyle}")
        table = ErrorEvent.__table__
        # Only constants go into this text (the table's and columns' names); values are parameters.
        row = "(" + ", ".join([placeholder] * len(EVENT_COLUMNS)) + ")"
        sql = f"INSERT INTO {table.name} ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join([row] * rows)}"  # noqa: S608
        cached = (sql, table.c.occurred_at.type.bind_processor(conn.dialect))
        _statements[cache_key] = cached
    return cached


def _chunks(count: int) -> Iterator[tuple[int, int]]:
    """(start, size) chunks of `count` rows, every size a power of two up to `_INSERT_CHUNK`."""
    start = 0
    while start < count:
        size = min(_INSERT_CHUNK, 1 << ((count - start).bit_length() - 1))
        yield start, size
        start += size


def _insert_events(conn: Connection, events: Sequence[ErrorEventData], group_ids: Mapping[str, int]) -> None:
    for start, size in _chunks(len(events)):
        chunk = events[start : start + size]
        sql, to_db_time = _event_insert(conn, size)
        values: list[Any] = []
        for ev in chunk:
            values += (
                ev.event_id,
                group_ids[ev.fingerprint],
                to_db_time(ev.occurred_at) if to_db_time is not None else ev.occurred_at,
                ev.source,
                ev.code,
                ev.status_code,
                ev.category,
                ev.severity,
                ev.message[:1000],
                ev.exc_type,
                ev.endpoint,
                ev.method,
                (ev.path or "")[:500] or None,
                ev.request_id,
                ev.user_id,
                ev.context,
            )
        conn.exec_driver_sql(sql, tuple(values))


def write_batch(engine: Engine, events: Sequence[ErrorEventData], requests: Mapping[int, int]) -> None:
    """Write events (raw rows, groups, rollups) and per-minute request counts in one transaction.

    Client reports get their groups, raw rows and per-group hours, but no server rollups (minutes, codes).
    """
    assign_event_ids(events)
    with engine.begin() as conn:
        group_ids = upsert_groups(conn, events)
        kept = [ev for ev in events if ev.raw]
        if kept:
            _insert_events(conn, kept, group_ids)
        # One pass, on integer minutes; datetimes only for the few distinct keys.
        per_code: Counter[tuple[int, str]] = Counter()
        per_group_hour: Counter[tuple[int, int]] = Counter()
        server_per_minute: Counter[int] = Counter()
        for ev in events:
            minute = int(ev.occurred_at.timestamp() // 60)
            per_group_hour[minute // 60, group_ids[ev.fingerprint]] += ev.weight
            if ev.source != CLIENT_SOURCE:
                # A browser's report is not a server error: it never feeds the server's rates, per-code counts
                # or the alerts and SLOs read from them (anyone can send one, with any code).
                per_code[minute, ev.code] += ev.weight
                if is_server_error(ev.status_code):
                    server_per_minute[minute] += ev.weight
        errors_per_minute: Counter[int] = Counter()
        per_code_hour: Counter[tuple[int, str]] = Counter()
        for (minute, code), n in per_code.items():
            errors_per_minute[minute] += n
            per_code_hour[minute // 60, code] += n
        upsert_add(
            conn,
            ErrorMinute.__table__,
            [
                {
                    "minute": minute_from_epoch(m),
                    "errors": errors_per_minute[m],
                    "server_errors": server_per_minute[m],
                    "requests": requests.get(m, 0),
                }
                for m in sorted(set(errors_per_minute) | set(requests))
            ],
            ["minute"],
            ["errors", "server_errors", "requests"],
        )
        upsert_add(
            conn,
            ErrorCodeMinute.__table__,
            [{"minute": minute_from_epoch(m), "code": c, "count": n} for (m, c), n in sorted(per_code.items())],
            ["minute", "code"],
            ["count"],
        )
        upsert_add(
            conn,
            ErrorCodeHour.__table__,
            [{"hour": hour_from_epoch(h), "code": c, "count": n} for (h, c), n in sorted(per_code_hour.items())],
            ["hour", "code"],
            ["count"],
        )
        upsert_add(
            conn,
            ErrorGroupHour.__table__,
            [{"hour": hour_from_epoch(h), "group_id": g, "count": n} for (h, g), n in sorted(per_group_hour.items())],
            ["hour", "group_id"],
            ["count"],
        )
