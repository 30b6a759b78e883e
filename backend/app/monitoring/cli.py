"""`flask monitoring prune-errors`: the error-statistics retention by hand (the periodic job runs it hourly)."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import with_appcontext

from ..extensions import db
from .retention import prune_error_events


@click.command("prune-errors")
@with_appcontext
# Bounded: --days 0 or -1 would delete every event, a typo no one means.
@click.option(
    "--days", type=click.IntRange(min=1), default=None, help="Keep raw events this many days (default from config)."
)
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Keep at most this many raw events.")
def prune_errors(days: int | None, max_rows: int | None) -> None:
    """Delete raw error events past their retention, and old rollups."""
    cfg = current_app.config
    result = prune_error_events(
        db.engine,
        retention_days=days if days is not None else int(cfg.get("ERROR_EVENT_RETENTION_DAYS", 14)),
        max_rows=max_rows if max_rows is not None else cfg.get("ERROR_EVENT_MAX_ROWS"),
        rollup_retention_days=int(cfg.get("ERROR_ROLLUP_RETENTION_DAYS", 90)),
    )
    click.echo(json.dumps(result.as_dict()))
