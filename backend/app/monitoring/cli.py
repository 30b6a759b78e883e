"""`flask monitoring prune-errors`: the error-statistics retention by hand (the periodic job runs it hourly)."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from .errors.retention import prune_configured


@click.command("prune-errors")
@with_appcontext
# Bounded: --days 0 or -1 would delete every event, a typo no one means.
@click.option(
    "--days", type=click.IntRange(min=1), default=None, help="Keep raw events this many days (default from config)."
)
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Keep at most this many raw events.")
def prune_errors(days: int | None, max_rows: int | None) -> None:
    """Delete raw error events past their retention, and old rollups."""
    result = prune_configured(days=days, max_rows=max_rows)
    click.echo(json.dumps(result.as_dict()))
