"""Retention: raw events are pruned by age and by row count; rollups by a longer age.

Deletes run in chunks of primary keys so a big prune never holds one long write lock (SQLite) or
builds one huge transaction (PostgreSQL). The periodic job `monitoring.prune_errors` (registered here,
hourly) applies ERROR_EVENT_RETENTION_DAYS, ERROR_EVENT_MAX_ROWS and ERROR_ROLLUP_RETENTION_DAYS;
`flask monitoring prune-errors` runs the same prune by hand.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Engine, delete, select

from ...extensions import db
from ...jobs.context import JobContext
from ...jobs.registry import register_periodic
from ...models import ErrorCodeHour, ErrorCodeMinute, ErrorEvent, ErrorGroupHour, ErrorMinute
from ...timeutil import utcnow

logger = logging.getLogger(__name__)

CHUNK = 5000
ERROR_PRUNE_EVERY_SECONDS = 3600


@dataclass(frozen=True)
class PruneResult:
    """How many rows a prune removed from each table."""

    events_by_age: int
    events_by_count: int
    minute_rollups: int
    code_rollups: int
    group_hour_rollups: int

    def as_dict(self) -> dict[str, Any]:
        """The counts as a plain dict."""
        return asdict(self)


def _delete_ids_chunked(engine: Engine, condition: Any) -> int:
    table = ErrorEvent.__table__
    removed = 0
    while True:
        with engine.begin() as conn:
            ids = list(conn.scalars(select(table.c.id).where(condition).order_by(table.c.id).limit(CHUNK)))
            if not ids:
                return removed
            conn.execute(delete(table).where(table.c.id.in_(ids)))
        removed += len(ids)


def prune_error_events(
    engine: Engine,
    *,
    retention_days: int,
    max_rows: int | None = None,
    rollup_retention_days: int = 90,
    now: datetime | None = None,
) -> PruneResult:
    """Delete raw events older than `retention_days` or beyond the newest `max_rows`, and old rollups."""
    now = now or utcnow()
    table = ErrorEvent.__table__
    by_age = _delete_ids_chunked(engine, table.c.occurred_at < now - timedelta(days=retention_days))
    by_count = 0
    if max_rows is not None and max_rows >= 0:
        with engine.connect() as conn:
            # The id of the newest row past the limit, found through the primary key index.
            threshold = conn.scalar(select(table.c.id).order_by(table.c.id.desc()).offset(max_rows).limit(1))
        if threshold is not None:
            by_count = _delete_ids_chunked(engine, table.c.id <= threshold)
    rollup_cutoff = now - timedelta(days=rollup_retention_days)
    with engine.begin() as conn:
        minutes = conn.execute(delete(ErrorMinute.__table__).where(ErrorMinute.minute < rollup_cutoff)).rowcount
        codes = conn.execute(delete(ErrorCodeMinute.__table__).where(ErrorCodeMinute.minute < rollup_cutoff)).rowcount
        codes += conn.execute(delete(ErrorCodeHour.__table__).where(ErrorCodeHour.hour < rollup_cutoff)).rowcount
        hours = conn.execute(delete(ErrorGroupHour.__table__).where(ErrorGroupHour.hour < rollup_cutoff)).rowcount
    result = PruneResult(by_age, by_count, minutes, codes, hours)
    # An hourly prune that found nothing is no news (DEBUG); one that deleted rows says what.
    logger.log(
        logging.INFO if any(result.as_dict().values()) else logging.DEBUG,
        "Pruned error statistics: %s",
        result.as_dict(),
    )
    return result


def prune_configured(*, days: int | None = None, max_rows: int | None = None) -> PruneResult:
    """The app's retention (ERROR_EVENT_RETENTION_DAYS, ERROR_EVENT_MAX_ROWS, ERROR_ROLLUP_RETENTION_DAYS) applied
    now; `days` and `max_rows` override the raw-event settings (the CLI's options)."""
    cfg = current_app.config
    return prune_error_events(
        db.engine,
        retention_days=days if days is not None else int(cfg.get("ERROR_EVENT_RETENTION_DAYS", 14)),
        max_rows=max_rows if max_rows is not None else cfg.get("ERROR_EVENT_MAX_ROWS"),
        rollup_retention_days=int(cfg.get("ERROR_ROLLUP_RETENTION_DAYS", 90)),
    )


def prune_errors(ctx: JobContext) -> dict[str, Any]:
    """Delete raw error events past their retention (age and row cap) and old rollups."""
    result = prune_configured().as_dict()
    if not any(result.values()):
        ctx.nothing_to_do()
    return result


register_periodic("monitoring.prune_errors", ERROR_PRUNE_EVERY_SECONDS, prune_errors)
