"""The application factory: `create_app(config)` builds and wires everything.

Layer: factory, the top one: it may import every layer (tests/unit/test_layers.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from werkzeug.routing import Map

from config import Config, load_config

from ..log.redaction import register_secrets
from ..log.setup import configure_logging
from .edge.ingress import init_ingress
from .edge.rate_limits import init_rate_limits
from .edge.request_context import init_request_context
from .edge.request_metrics import init_request_metrics
from .edge.routing import IdConverter
from .errors import init_error_handlers
from .extensions import db, jwt, migrate
from .jobs import init_jobs
from .monitoring import init_error_stats
from .monitoring.alerts import init_alerts
from .monitoring.health import init_service_health
from .monitoring.metrics import init_metrics
from .monitoring.service_faults import init_service_faults
from .resilience.database_breaker import install_database_breaker
from .resilience.faults import init_fault_injection
from .resilience.state import init_resilience
from .services import init_services
from .tracing import init_tracing

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class ApiMap(Map):
    """A URL map that never answers with a redirect: `/api/me/` and `//api/me` route or 404."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("strict_slashes", False)
        kwargs.setdefault("merge_slashes", False)
        super().__init__(*args, **kwargs)
        self.converters["int"] = IdConverter  # an id no column can hold is a 404, not a database error


class SigningOnceSessionInterface(SecureCookieSessionInterface):
    """Flask's cookie sessions, with the signing serializer built once per key instead of per request.

    Flask opens the session on every request and builds a new `URLSafeTimedSerializer` to do it
    (about 10 µs), although this API keeps no session; the serializer holds only its keys and settings.
    A request without a `Cookie` header (every API client here) gets the new empty session Flask would
    give it without parsing cookies, and an empty session nobody touched is saved, as Flask saves it,
    by doing nothing, without reading the seven cookie settings first.
    """

    _MAX_KEYS = 16  # distinct secret sets (tests build many apps): past this the cache starts over

    def __init__(self) -> None:
        self._serializers: dict[tuple[Any, ...], URLSafeTimedSerializer | None] = {}

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """Flask's session; without a Cookie header, the empty one it would open (no secret key: none)."""
        if "HTTP_COOKIE" not in request.environ:
            # Flask's open_session without a cookie: None when there is no key to sign with, else a new session.
            return self.session_class() if app.secret_key else None
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Flask's save; an empty session never read nor changed needs nothing (Flask's own early return)."""
        if not session and not session.accessed and not session.modified:
            return
        super().save_session(app, session, response)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        """The serializer Flask's own would build for the app's current keys, reused."""
        key = (app.secret_key, *(app.config["SECRET_KEY_FALLBACKS"] or ()))
        serializer = self._serializers.get(key)
        if serializer is None:
            serializer = super().get_signing_serializer(app)
            if len(self._serializers) >= self._MAX_KEYS:
                self._serializers = {}
            self._serializers[key] = serializer
        return serializer


class OrielFlask(Flask):
    """Flask with the redirect-free URL map, cheaper session opening and sync checks."""

    url_map_class = ApiMap
    session_interface = SigningOnceSessionInterface()
    _MAX_SYNC = 4096  # distinct hook and view callables remembered (bounded: a deployer may add lambdas)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known_sync: set[Any] = set()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Flask's check, remembered: it runs `inspect.iscoroutinefunction` on every hook and view of every request."""
        try:
            if func in self._known_sync:
                return func
        except TypeError:  # an unhashable callable: checked every time, as Flask does
            return super().ensure_sync(func)
        result = super().ensure_sync(func)
        if result is func and len(self._known_sync) < self._MAX_SYNC:
            self._known_sync.add(func)
        return result


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
    init_ingress(app)  # its limits run right after the request id is assigned
    init_request_metrics(app)
    init_error_handlers(app)
    init_resilience(app)
    install_database_breaker(app)  # after the engines (extensions) and the breakers (resilience) exist
    # Health probes, configuration faults, metrics, fault injection, alerts: after init_resilience (they listen).
    init_service_health(app)
    init_service_faults(app)
    init_metrics(app)
    init_fault_injection(app)
    init_alerts(app)
    _register_blueprints(app)
    _import_job_kinds()
    init_jobs(app)
    init_services(app)
    init_rate_limits(app)
    init_error_stats(app)
    _init_inbox(app)
    _register_cli(app)
    init_tracing(app)  # last: it wraps the final WSGI app and instruments the engines built above
    return app


def _derive_settings(app: Flask) -> None:
    cfg = app.config
    if not cfg.get("SQLALCHEMY_DATABASE_URI"):
        # The embedded default lives in the instance folder; an app whose paths are all set touches nothing there.
        os.makedirs(app.instance_path, exist_ok=True)
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
    """The failed-work inbox: one source per kind of work that failed for good (see monitoring/inbox/)."""
    from .monitoring.inbox import Inbox
    from .monitoring.inbox.jobs import JobInboxSource
    from .monitoring.inbox.services import EmailInboxSource, StorageInboxSource
    from .payments.failed_work import PaymentInboxSource
    from .services import get_storage

    sources = [
        JobInboxSource(),
        EmailInboxSource(),
        StorageInboxSource(local_file=lambda key: get_storage().local_file(key)),
        PaymentInboxSource(),
    ]
    app.extensions["inbox"] = Inbox(sources, on_error=db.session.rollback)


def _register_blueprints(app: Flask) -> None:
    """Every blueprint of the app, in one place (routes resolve in this order when two could match)."""
    from .admin.dashboard import bp as dashboard_bp
    from .admin.dead_letters import bp as dead_letters_bp
    from .admin.error_monitoring import bp as monitoring_bp
    from .admin.failed_work import bp as failed_work_bp
    from .admin.request_trace import bp as request_trace_bp
    from .api import bp as api_bp
    from .api.metrics import bp as metrics_bp
    from .auth import bp as auth_bp
    from .downloads import bp as downloads_bp
    from .payments import bp as payments_bp
    from .renders import bp as renders_bp

    blueprints = [auth_bp, api_bp, monitoring_bp, dead_letters_bp, request_trace_bp, failed_work_bp, dashboard_bp]
    blueprints += [renders_bp, payments_bp, downloads_bp]
    if app.config.get("METRICS_ENABLED", True):
        blueprints.append(metrics_bp)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)


def _import_job_kinds() -> None:
    """Every module that declares job kinds, in one place (kinds are code: each registers once per process)."""
    from .jobs import kinds  # noqa: F401 - maintenance, storage.sync, email.outbox
    from .monitoring import alerts  # noqa: F401 - monitoring.alerts, monitoring.alerts.deliver
    from .monitoring.errors import retention  # noqa: F401 - monitoring.prune_errors
    from .renders import jobs  # noqa: F401 - render


def _register_cli(app: Flask) -> None:
    """Every `flask` command group of the app, in one place, then the guard that makes user errors one line."""
    from .admin.cli import monitoring_cli
    from .api.cli import error_catalog, guard_commands
    from .auth.cli import users
    from .jobs.cli import jobs_cli
    from .payments.cli import credits_cli
    from .services.cli import services_cli

    for command in (error_catalog, monitoring_cli, jobs_cli, users, services_cli, credits_cli):
        app.cli.add_command(command)
    guard_commands(app.cli)  # last: it wraps every command registered before it
