"""`flask error-catalog`, and the guard that makes every app command's user errors one line (create_app applies it)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from config import ConfigError

from ..db_errors import is_login_refused, is_unreachable, missing_schema
from ..error_catalog import render_markdown
from ..errors import APIError

DOCS_ERRORS = Path(__file__).resolve().parents[3] / "docs" / "errors.md"
_GUARDED = "__oriel_cli_guarded__"


@click.command("error-catalog")
@with_appcontext
@click.option("--check", is_flag=True, help="Fail if docs/errors.md is out of date instead of writing it.")
def error_catalog(check: bool) -> None:
    """Write docs/errors.md from the error catalog."""
    rendered = render_markdown()
    if check:
        if not DOCS_ERRORS.exists() or DOCS_ERRORS.read_text(encoding="utf-8") != rendered:
            raise click.ClickException("docs/errors.md is out of date: run `make docs`")
        click.echo("docs/errors.md is up to date")
        return
    DOCS_ERRORS.parent.mkdir(parents=True, exist_ok=True)
    DOCS_ERRORS.write_text(rendered, encoding="utf-8")
    click.echo(f"wrote {DOCS_ERRORS}")


def guard_commands(group: click.Group) -> None:
    """Wrap every command under `group` so an error its user can fix is one `Error:` line, not a traceback."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            guard_commands(command)
        elif command.callback is not None and not getattr(command.callback, _GUARDED, False):
            command.callback = _guarded(command.callback)


def _guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (ConfigError, APIError, SQLAlchemyError) as exc:
            message = user_error(exc)
            if message is None:  # a bug, not the user's to fix: the traceback is what a developer needs
                raise
            raise click.ClickException(message) from exc

    setattr(run, _GUARDED, True)
    return run


def user_error(exc: BaseException) -> str | None:
    """The one line a CLI user needs for an error they can fix (configuration, schema, database), else None."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, APIError):
        return f"{exc.code}: {exc.message}"
    if not isinstance(exc, SQLAlchemyError):
        return None
    missing = missing_schema(exc)
    if missing is not None:
        return f"The database {_database()} is not migrated ({missing}): run `flask db upgrade` (or `make migrate`)."
    if is_login_refused(exc):
        return f"The database {_database()} refused our login: check DATABASE_URL's user, password and database."
    if is_unreachable(exc):
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return f"The database {_database()} cannot be used: {reason}"
    return None


def _database() -> str:
    """DATABASE_URL as it can be shown: its password masked."""
    try:
        uri = current_app.config["SQLALCHEMY_DATABASE_URI"]
    except (RuntimeError, KeyError):  # no app context: the message stands without it
        return "(DATABASE_URL)"
    return make_url(uri).render_as_string(hide_password=True)
