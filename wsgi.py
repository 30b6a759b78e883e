"""WSGI entry point: `gunicorn wsgi:app` or `flask --app wsgi run`."""

from __future__ import annotations

import os

import click
from dotenv import dotenv_values, load_dotenv

from backend.app import create_app
from config import ConfigError, load_config

# Said after a production configuration error: the usual cause is a local shell without FLASK_ENV.
PRODUCTION_HINT = "(this is production: FLASK_ENV is unset or production; a local run uses FLASK_ENV=development)"

# A .env file is read in development only; production takes the real environment as it is.
if os.environ.get("FLASK_ENV", dotenv_values().get("FLASK_ENV")) == "development":
    load_dotenv(override=False)

try:
    app = create_app(load_config())
except ConfigError as exc:
    # The `flask` CLI prints a ClickException as one "Error: ..." line and exits 1, instead of a traceback.
    production = (os.environ.get("FLASK_ENV") or "production").strip().lower() == "production"
    raise click.ClickException(f"{exc} {PRODUCTION_HINT}" if production else str(exc)) from exc
