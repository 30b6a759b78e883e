"""`flask monitoring ...` commands (an interim hook until the periodic-jobs scheduler runs them)."""

from __future__ import annotations

import json

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from ..extensions import db
from .retention import prune_error_events


def register_commands(app: Flask) -> None:
    """Register the `monitoring` command group on `app`."""
    group = AppGroup("monitoring", help="Error statistics maintenance.")

    @group.command("prune-errors")
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

    app.cli.add_command(group)
