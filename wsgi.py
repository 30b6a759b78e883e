"""WSGI entry point: `gunicorn wsgi:app` or `flask --app wsgi run`."""

from __future__ import annotations

import os

from dotenv import dotenv_values, load_dotenv

from backend.app import create_app
from config import load_config

# A .env file is read in development only; production takes the real environment as it is.
if os.environ.get("FLASK_ENV", dotenv_values().get("FLASK_ENV")) == "development":
    load_dotenv(override=False)

app = create_app(load_config())
