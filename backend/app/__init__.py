"""The application factory: `create_app(config)` builds and wires everything."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from werkzeug.routing import Map

from config import Config, load_config

from ..logging_config import configure_logging
from ..redaction import register_secrets
from .admin.cli import init_admin_cli
from .cli import init_cli
from .errors import init_error_handlers
from .extensions import db, jwt, migrate
from .monitoring import init_error_stats
from .observability import init_observability
from .rate_limits import init_rate_limits
from .request_context import init_request_context
from .request_metrics import init_request_metrics
from .routing import IdConverter
from .services import init_services
from .utils.database_breaker import install_database_breaker
from .utils.resilience import init_resilience

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class ApiMap(Map):
    """A URL map that never answers with a redirect: `/api/me/` and `//api/me` route or 404."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("strict_slashes", False)
        kwargs.setdefault("merge_slashes", False)
        super().__init__(*args, **kwargs)
        self.converters["int"] = IdConverter  # an id no column can hold is a 404, not a database error


class OrielFlask(Flask):
    """Flask with the redirect-free URL map."""

    url_map_class = ApiMap


def create_app(config: Config | type[Config] | None = None, **overrides: Any) -> Flask:
    """Build the app from a config object (default: read the environment now)."""
    cfg = config() if isinstance(config, type) else (config or load_config())
    app = OrielFlask(__name__)
    app.config.from_object(cfg)
    app.config.update(overrides)
    _derive_settings(app)
    _init_logging(app)
    _init_extensions(app)
    init_request_context(app)
    init_request_metrics(app)
    init_error_handlers(app)
    init_resilience(app)
    install_database_breaker(app)  # after the engines (extensions) and the breakers (resilience) exist
    init_observability(app)
    _register_blueprints(app)
    init_services(app)
    init_rate_limits(app)
    init_error_stats(app)
    _init_inbox(app)
    init_cli(app)
    init_admin_cli(app)
    return app


def _derive_settings(app: Flask) -> None:
    cfg = app.config
    os.makedirs(app.instance_path, exist_ok=True)
    if not cfg.get("SQLALCHEMY_DATABASE_URI"):
        cfg["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{Path(app.instance_path) / 'oriel.db'}"
    url = make_url(cfg["SQLALCHEMY_DATABASE_URI"])
    engine_options = dict(cfg.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    if url.get_backend_name() == "sqlite":
        engine_options.setdefault("connect_args", {"timeout": 15})
    else:
        # pre-ping turns every outage into a failed connect, which the database breaker counts.
        engine_options.setdefault("pool_pre_ping", True)
        connect_args = dict(engine_options.get("connect_args") or {})
        connect_args.setdefault("connect_timeout", int(cfg.get("DATABASE_CONNECT_TIMEOUT", 3)))
        engine_options["connect_args"] = connect_args
    cfg["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options
    cfg["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(seconds=cfg["JWT_ACCESS_TOKEN_EXPIRES_SECONDS"])
    cfg["JWT_REFRESH_TOKEN_EXPIRES"] = timedelta(seconds=cfg["JWT_REFRESH_TOKEN_EXPIRES_SECONDS"])
    cfg["JWT_TOKEN_LOCATION"] = ["headers"]
    cfg["JWT_ALGORITHM"] = "HS256"
    cfg["JWT_DECODE_ALGORITHMS"] = ["HS256"]  # never trust the token's own `alg`
    register_secrets(
        [
            cfg.get("SECRET_KEY"),
            cfg.get("JWT_SECRET_KEY"),
            cfg.get("STRIPE_API_KEY"),
            cfg.get("STRIPE_WEBHOOK_SECRET"),
            cfg.get("SENDGRID_API_KEY"),
            url.password,
        ]
    )


def _init_logging(app: Flask) -> None:
    cfg = app.config
    configure_logging(
        log_dir=cfg["LOG_DIR"],
        level=cfg["LOG_LEVEL"],
        console=cfg["LOG_CONSOLE"],
        max_bytes=cfg["LOG_MAX_BYTES"],
        backup_count=cfg["LOG_BACKUP_COUNT"],
    )


def _init_extensions(app: Flask) -> None:
    from . import models  # noqa: F401 - register the tables before Flask-Migrate looks

    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    jwt.init_app(app)
    from .auth.tokens import init_jwt_callbacks

    init_jwt_callbacks(jwt)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL and a busy timeout let web and job processes share one SQLite file."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def _init_inbox(app: Flask) -> None:
    """The failed-work inbox: one source per kind of work that failed for good (see monitoring/inbox.py)."""
    from .jobs.failed_work import JobInboxSource
    from .monitoring.inbox import Inbox
    from .payments.failed_work import PaymentInboxSource
    from .services import get_storage
    from .services.failed_work import EmailInboxSource, StorageInboxSource

    sources = [
        JobInboxSource(),
        EmailInboxSource(),
        StorageInboxSource(local_file=lambda key: get_storage().local_file(key)),
        PaymentInboxSource(),
    ]
    app.extensions["inbox"] = Inbox(sources, on_error=db.session.rollback)


def _register_blueprints(app: Flask) -> None:
    from .admin.dashboard import bp as dashboard_bp
    from .admin.dead_letters import bp as dead_letters_bp
    from .admin.error_monitoring import bp as monitoring_bp
    from .admin.failed_work import bp as failed_work_bp
    from .api import bp as api_bp
    from .auth import bp as auth_bp
    from .jobs import init_jobs
    from .renders import init_renders

    app.register_blueprint(auth_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(monitoring_bp)
    app.register_blueprint(dead_letters_bp)
    app.register_blueprint(failed_work_bp)
    app.register_blueprint(dashboard_bp)
    init_renders(app)
    init_jobs(app)
