"""`flask` commands for maintainers."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask

from .error_catalog import render_markdown

DOCS_ERRORS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def init_cli(app: Flask) -> None:
    """Register the commands on `app`."""

    @app.cli.command("error-catalog")
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
