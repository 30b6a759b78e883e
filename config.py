"""Configuration classes: development, testing and production, read from the environment once.

Nothing here runs at import time: `load_config()` reads an environment mapping and returns an
instance whose upper-case attributes Flask copies into `app.config`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

PROJECT_ROOT = Path(__file__).resolve().parent

# Values that must never serve production; `ProductionConfig.validate` refuses them.
DEFAULT_SECRET_KEY = "dev-secret-key-change-me"
DEFAULT_JWT_SECRET_KEY = "dev-jwt-secret-key-change-me"


class ConfigError(RuntimeError):
    """The configuration cannot be used (for example a default secret in production)."""


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def normalise_database_url(url: str) -> str:
    """Use the psycopg 3 driver for plain `postgres://` and `postgresql://` URLs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Config:
    """Settings shared by every environment; subclasses override what differs."""

    ENV_NAME: ClassVar[str] = "base"
    DEBUG = False
    TESTING = False
    SECRET_KEY = DEFAULT_SECRET_KEY
    JWT_SECRET_KEY = DEFAULT_JWT_SECRET_KEY
    JWT_ACCESS_TOKEN_EXPIRES_SECONDS = 15 * 60
    JWT_REFRESH_TOKEN_EXPIRES_SECONDS = 30 * 24 * 3600
    SQLALCHEMY_DATABASE_URI: str | None = None  # None → SQLite in the instance folder
    SQLALCHEMY_ENGINE_OPTIONS: dict[str, Any] = {}
    DATABASE_CONNECT_TIMEOUT = 3  # seconds (whole: libpq's unit) a PostgreSQL connect may wait; not SQLite
    REDIS_URL: str | None = None
    # OpenTelemetry traces are off unless one of these is set (backend/app/tracing.py; the SDK reads the other OTEL_*).
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: str | None = None
    CIRCUIT_BREAKER_KEY_PREFIX = "oriel:"  # Redis keys of breakers and fault rules (several apps can share one Redis)
    LOG_DIR = str(PROJECT_ROOT / "logs")
    LOG_LEVEL = "INFO"
    LOG_MAX_BYTES = 10 * 1024 * 1024
    LOG_BACKUP_COUNT = 10
    LOG_CONSOLE = False
    REQUEST_LOGGING_ENABLED = True  # one performance.log line per request
    SLOW_REQUEST_MS = 1000  # requests slower than this also log a slow_request warning
    # GET /admin/api/monitoring/requests/<id> reads at most this much of each logs/*.log file (its tail)
    # and returns at most this many matching lines.
    REQUEST_TRACE_SCAN_BYTES = 8 * 1024 * 1024
    REQUEST_TRACE_MAX_LINES = 200
    # Addresses that may be admin. Being listed is not enough: the account needs proof, `flask users create-admin`
    # or the emailed link (backend/app/auth/admins.py), valid ADMIN_VERIFICATION_MAX_AGE_SECONDS.
    ADMIN_EMAILS: frozenset[str] = frozenset()
    ADMIN_VERIFICATION_MAX_AGE_SECONDS = 24 * 3600
    STRIPE_API_KEY: str | None = None
    STRIPE_WEBHOOK_SECRET: str | None = None
    STRIPE_API_BASE: str | None = None
    GCS_BUCKET: str | None = None
    STORAGE_EMULATOR_HOST: str | None = None
    SENDGRID_API_KEY: str | None = None
    SENDGRID_API_HOST: str | None = None
    MAX_UPLOAD_MB = 50
    FREE_RENDER_CREDITS = 1
    # External services (backend/app/services): explicit timeouts, since the SDK defaults hang (SPEC section 10).
    STORAGE_BACKEND: str | None = None  # "gcs" or "local"; None: gcs when GCS_BUCKET is set, else local
    LOCAL_STORAGE_DIR: str | None = None  # None: <instance>/storage
    GCS_ENDPOINT: str | None = None  # overrides STORAGE_EMULATOR_HOST as the API endpoint
    GCS_PROJECT: str | None = None
    GCS_SIGNING_CREDENTIALS_FILE: str | None = None  # service-account JSON that signs download URLs
    GCS_TIMEOUT = 10.0
    STRIPE_TIMEOUT = 10.0
    SENDGRID_TIMEOUT = 5.0
    EMAIL_FROM = "no-reply@oriel.local"
    EMAIL_MAX_ATTEMPTS = 10  # sends of one email before it ends failed (a refusal for good: at once)
    # Storage sync, per file: attempts before it ends failed (the inbox), full-jitter backoff between them,
    # and the lease a claimed row is held for (longer than one upload with its retries).
    STORAGE_SYNC_MAX_ATTEMPTS = 10
    STORAGE_SYNC_BASE_DELAY = 60.0
    STORAGE_SYNC_MAX_DELAY = 3600.0
    STORAGE_SYNC_LEASE_SECONDS = 300.0
    PUBLIC_BASE_URL: str | None = None  # absolute links in emails and Checkout redirects
    RENDER_PACKS: dict[str, tuple[int, int]] | str | None = None  # {"starter": (credits, cents)}; None: defaults
    # Proxies in front of the app (a load balancer: 1). With N > 0 the client address and scheme come from the
    # last N X-Forwarded-For / X-Forwarded-Proto hops; with 0 those headers are ignored (backend/app/edge/ingress.py).
    TRUSTED_PROXIES = 0
    RATELIMIT_ENABLED = True
    RATELIMIT_DEFAULT = "300 per minute"
    RATELIMIT_LOGIN = "10 per minute"
    # Failed logins per account, from any address: a backoff that grows (5 a minute, then 20 an hour).
    RATELIMIT_LOGIN_ACCOUNT = "5 per minute; 20 per hour"
    RATELIMIT_REGISTER = "20 per hour"
    RATELIMIT_ERROR_REPORT = "30 per minute"
    # Repeated 429s and rejected tokens: the first of a client's at once, then one security.log line per
    # interval with their count (backend/app/edge/rejection_log.py).
    REJECTION_LOG_INTERVAL_SECONDS = 10.0
    RATELIMIT_KEY_PREFIX = "oriel"  # Redis keys of the limits start with it (several apps can share one Redis)
    # "sliding-window-counter": two counters a client and view; "moving-window" is exact but keeps an entry per
    # counted request (up to the limit) for every client and view; "fixed-window" lets a burst through at edges.
    RATELIMIT_STRATEGY = "sliding-window-counter"
    # Error statistics: events are buffered per process and written in batches off the request path
    # (every second, or at 1,000 events: fewer, larger batches cost a busy worker less CPU).
    ERROR_STATS_ENABLED = True
    ERROR_STATS_FLUSH_MS = 1000
    ERROR_STATS_BATCH_SIZE = 1000
    ERROR_STATS_BUFFER_SIZE = 10_000
    ERROR_EVENT_RETENTION_DAYS = 14
    ERROR_EVENT_MAX_ROWS: int | None = 2_000_000
    # Raw rows kept per 4xx group a minute in each process (all are counted in the groups and rollups), so a
    # flood of 429s, 404s or 401s cannot grow error_events; 5xx events always keep their row.
    ERROR_EVENT_SAMPLE_PER_MINUTE = 20
    ERROR_ROLLUP_RETENTION_DAYS = 90
    ERROR_REPORT_MAX_BYTES = 16 * 1024
    # Failed-work inbox: archived dead letters, discarded emails/files and long-finished outbox/sync rows are
    # deleted this many days after they were given up (or finished), so no table grows without bound.
    FAILED_WORK_RETENTION_DAYS = 30.0
    METRICS_TOKEN: str | None = None  # /metrics needs `Authorization: Bearer <token>` when set
    # Configuration faults (backend/app/monitoring/service_faults.py): a refusal seen again is written at most
    # every WRITE seconds; a success re-reads the open faults at most every REFRESH seconds; a failed write
    # (database down) is retried every RETRY seconds.
    SERVICE_FAULTS_WRITE_SECONDS = 5.0
    SERVICE_FAULTS_REFRESH_SECONDS = 5.0
    SERVICE_FAULTS_RETRY_SECONDS = 5.0
    # Without Redis, admin breaker actions and fault rules reach other processes through the database: each
    # process re-reads them at most this often (backend/app/resilience/shared_overrides.py).
    OVERRIDES_REFRESH_SECONDS = 1.0
    FAULT_INJECTION_ENABLED = False  # admin fault injection (tests, staging); always refused in production
    # Alert webhooks (and PagerDuty URLs) may point at loopback, link-local or private addresses; production
    # refuses them (checked when configured and before every send) unless this is set true.
    ALERT_WEBHOOK_ALLOW_PRIVATE = True
    PASSWORD_HASH_TIME_COST = 3
    PASSWORD_HASH_MEMORY_COST = 64 * 1024

    @property
    def MAX_CONTENT_LENGTH(self) -> int:  # noqa: N802 - Flask reads upper-case names
        """Largest accepted request body: the upload limit plus room for multipart framing."""
        return self.MAX_UPLOAD_MB * 1024 * 1024 + 64 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build an instance from an environment mapping (default: `os.environ`)."""
        env = os.environ if environ is None else environ
        cfg = cls()
        for name in (
            "SECRET_KEY",
            "JWT_SECRET_KEY",
            "REDIS_URL",
            "LOG_DIR",
            "STRIPE_API_KEY",
            "STRIPE_WEBHOOK_SECRET",
            "STRIPE_API_BASE",
            "GCS_BUCKET",
            "STORAGE_EMULATOR_HOST",
            "SENDGRID_API_KEY",
            "SENDGRID_API_HOST",
            "STORAGE_BACKEND",
            "LOCAL_STORAGE_DIR",
            "GCS_ENDPOINT",
            "GCS_PROJECT",
            "GCS_SIGNING_CREDENTIALS_FILE",
            "EMAIL_FROM",
            "PUBLIC_BASE_URL",
            "RENDER_PACKS",
            "METRICS_TOKEN",
            "RATELIMIT_DEFAULT",
            "RATELIMIT_LOGIN",
            "RATELIMIT_LOGIN_ACCOUNT",
            "RATELIMIT_REGISTER",
            "RATELIMIT_ERROR_REPORT",
            "RATELIMIT_KEY_PREFIX",
            "RATELIMIT_STRATEGY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "CIRCUIT_BREAKER_KEY_PREFIX",  # breakers and fault rules in Redis: every process must agree on it
        ):
            if env.get(name):
                setattr(cfg, name, env[name])
        if env.get("DATABASE_URL"):
            cfg.SQLALCHEMY_DATABASE_URI = normalise_database_url(env["DATABASE_URL"])
        if env.get("LOG_LEVEL"):
            cfg.LOG_LEVEL = env["LOG_LEVEL"].upper()
        if env.get("ADMIN_EMAILS"):
            cfg.ADMIN_EMAILS = frozenset(e.strip().lower() for e in env["ADMIN_EMAILS"].split(",") if e.strip())
        cfg.MAX_UPLOAD_MB = _int(env, "MAX_UPLOAD_MB", cfg.MAX_UPLOAD_MB)
        cfg.FREE_RENDER_CREDITS = _int(env, "FREE_RENDER_CREDITS", cfg.FREE_RENDER_CREDITS)
        cfg.DATABASE_CONNECT_TIMEOUT = _int(env, "DATABASE_CONNECT_TIMEOUT", cfg.DATABASE_CONNECT_TIMEOUT)
        for name in ("GCS_TIMEOUT", "STRIPE_TIMEOUT", "SENDGRID_TIMEOUT"):
            setattr(cfg, name, _float(env, name, getattr(cfg, name)))
        cfg.RATELIMIT_ENABLED = _bool(env.get("RATELIMIT_ENABLED"), cfg.RATELIMIT_ENABLED)
        cfg.TRUSTED_PROXIES = _int(env, "TRUSTED_PROXIES", cfg.TRUSTED_PROXIES)
        cfg.LOG_MAX_BYTES = _int(env, "LOG_MAX_BYTES", cfg.LOG_MAX_BYTES)
        cfg.LOG_BACKUP_COUNT = _int(env, "LOG_BACKUP_COUNT", cfg.LOG_BACKUP_COUNT)
        cfg.SLOW_REQUEST_MS = _int(env, "SLOW_REQUEST_MS", cfg.SLOW_REQUEST_MS)
        cfg.REQUEST_LOGGING_ENABLED = _bool(env.get("REQUEST_LOGGING_ENABLED"), cfg.REQUEST_LOGGING_ENABLED)
        cfg.ERROR_STATS_ENABLED = _bool(env.get("ERROR_STATS_ENABLED"), getattr(cfg, "ERROR_STATS_ENABLED", True))
        cfg.ERROR_EVENT_RETENTION_DAYS = _int(env, "ERROR_EVENT_RETENTION_DAYS", cfg.ERROR_EVENT_RETENTION_DAYS)
        cfg.FAILED_WORK_RETENTION_DAYS = _float(env, "FAILED_WORK_RETENTION_DAYS", cfg.FAILED_WORK_RETENTION_DAYS)
        cfg.FAULT_INJECTION_ENABLED = _bool(env.get("FAULT_INJECTION_ENABLED"), cfg.FAULT_INJECTION_ENABLED)
        cfg.ALERT_WEBHOOK_ALLOW_PRIVATE = _bool(env.get("ALERT_WEBHOOK_ALLOW_PRIVATE"), cfg.ALERT_WEBHOOK_ALLOW_PRIVATE)
        _read_optional(cfg, env)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse settings that cannot work; production tightens this."""
        if self.MAX_UPLOAD_MB <= 0:
            raise ConfigError("MAX_UPLOAD_MB must be positive")
        if self.TRUSTED_PROXIES < 0:
            raise ConfigError("TRUSTED_PROXIES must be 0 (no proxy) or the number of proxies in front of the app")
        if self.FAILED_WORK_RETENTION_DAYS <= 0:
            raise ConfigError("FAILED_WORK_RETENTION_DAYS must be positive (days given-up work is kept)")
        if self.DATABASE_CONNECT_TIMEOUT < 1:
            raise ConfigError("DATABASE_CONNECT_TIMEOUT must be at least 1 second (0 would mean no timeout)")
        if self.STORAGE_SYNC_MAX_ATTEMPTS < 1 or self.EMAIL_MAX_ATTEMPTS < 1:
            raise ConfigError("STORAGE_SYNC_MAX_ATTEMPTS and EMAIL_MAX_ATTEMPTS must be at least 1")
        if min(self.STORAGE_SYNC_BASE_DELAY, self.STORAGE_SYNC_MAX_DELAY, self.STORAGE_SYNC_LEASE_SECONDS) < 0:
            raise ConfigError("STORAGE_SYNC_BASE_DELAY, _MAX_DELAY and _LEASE_SECONDS must not be negative")


# Job and render settings read from the environment only when set; unset, the modules' own defaults apply
# (backend/app/jobs/__init__.py and backend/app/renders/runner.py list them with their defaults).
OPTIONAL_FLOATS = (
    "JOBS_LEASE_SECONDS",
    "JOBS_HEARTBEAT_SECONDS",
    "JOBS_POLL_SECONDS",
    "JOBS_SHUTDOWN_GRACE_SECONDS",
    "DEAD_LETTER_TTL_DAYS",
    "JOBS_SUCCEEDED_RETENTION_DAYS",
    "RENDER_TIMEOUT_SECONDS",
    "RENDER_PROGRESS_INTERVAL_SECONDS",
    "ALERTS_EVALUATE_SECONDS",
    "ALERT_HTTP_TIMEOUT",
    "HEALTH_PROBE_DEADLINE",
    "READINESS_DEADLINE",
    "SLO_FLUSH_SECONDS",
    "EMAIL_LEASE_SECONDS",
    "ERROR_STATS_RETRY_SECONDS",
    "STORAGE_SYNC_BASE_DELAY",
    "STORAGE_SYNC_MAX_DELAY",
    "STORAGE_SYNC_LEASE_SECONDS",
    "SERVICE_FAULTS_WRITE_SECONDS",
    "SERVICE_FAULTS_REFRESH_SECONDS",
    "SERVICE_FAULTS_RETRY_SECONDS",
    "OVERRIDES_REFRESH_SECONDS",
    "REJECTION_LOG_INTERVAL_SECONDS",
)
OPTIONAL_INTS = (
    "JOBS_CONCURRENCY",
    "JOBS_COMPENSATION_SWEEP_LIMIT",
    "RENDER_MAX_CONCURRENT",
    "RENDER_MIN_FREE_DISK_MB",
    "RENDER_MIN_FREE_MEMORY_MB",
    "RENDER_RETRY_AFTER_SECONDS",
    "RENDER_EMAIL_LINK_SECONDS",
    "RENDER_JOB_MAX_ATTEMPTS",
    "ALERT_DELIVERY_MAX_ATTEMPTS",
    "EMAIL_MAX_ATTEMPTS",
    "STORAGE_SYNC_MAX_ATTEMPTS",
    "ERROR_EVENT_SAMPLE_PER_MINUTE",
    "ADMIN_VERIFICATION_MAX_AGE_SECONDS",
)
OPTIONAL_STRINGS = ("RENDER_WORK_DIR", "FFMPEG_BINARY")


def _read_optional(cfg: Config, env: Mapping[str, str]) -> None:
    """Copy the optional job and render settings that the environment sets onto `cfg`."""
    for name in OPTIONAL_FLOATS:
        if env.get(name, "").strip():
            setattr(cfg, name, _float(env, name, 0.0))
    for name in OPTIONAL_INTS:
        if env.get(name, "").strip():
            setattr(cfg, name, _int(env, name, 0))
    for name in OPTIONAL_STRINGS:
        if env.get(name, "").strip():
            setattr(cfg, name, env[name].strip())
    for name in ("METRICS_ENABLED", "SLO_ENABLED"):
        if env.get(name, "").strip():
            setattr(cfg, name, _bool(env[name]))
    if env.get("SLOS", "").strip():  # {"*": {"objective": 0.999, "window_days": 30}, "api": {...}}
        try:
            slos = json.loads(env["SLOS"])
        except ValueError as exc:
            raise ConfigError("SLOS must be a JSON object of endpoint group to objective") from exc
        if not isinstance(slos, dict) or not all(isinstance(v, dict) for v in slos.values()):
            raise ConfigError("SLOS must be a JSON object of endpoint group to objective")
        cfg.SLOS = slos  # type: ignore[attr-defined]
    if env.get("CIRCUIT_BREAKERS", "").strip():  # {"*": {"recovery_timeout": 5}, "stripe": {"min_calls": 10}}
        try:
            breakers = json.loads(env["CIRCUIT_BREAKERS"])
        except ValueError as exc:
            raise ConfigError("CIRCUIT_BREAKERS must be a JSON object of service to breaker settings") from exc
        if not isinstance(breakers, dict) or not all(isinstance(v, dict) for v in breakers.values()):
            raise ConfigError("CIRCUIT_BREAKERS must be a JSON object of service to breaker settings")
        cfg.CIRCUIT_BREAKERS = breakers  # type: ignore[attr-defined]
    if env.get("JOBS_IMPORTS", "").strip():  # extra modules that register job kinds, comma-separated
        cfg.JOBS_IMPORTS = tuple(m.strip() for m in env["JOBS_IMPORTS"].split(",") if m.strip())  # type: ignore[attr-defined]


class DevelopmentConfig(Config):
    """Local development: readable console logs, SQLite in the instance folder."""

    ENV_NAME = "development"
    DEBUG = False  # the Werkzeug debugger would bypass the JSON error contract
    LOG_CONSOLE = True


class TestingConfig(Config):
    """Test runs: fast password hashing, rate limits on (tests assert them), no console noise."""

    ENV_NAME = "testing"
    TESTING = True
    # Tests assert what clients get: unhandled exceptions must become 500 envelopes, not propagate.
    PROPAGATE_EXCEPTIONS = False
    PASSWORD_HASH_TIME_COST = 1
    PASSWORD_HASH_MEMORY_COST = 8 * 1024
    ALERT_WEBHOOK_ALLOW_PRIVATE = True  # the local webhook receivers listen on 127.0.0.1


class ProductionConfig(Config):
    """Production: refuses default secrets."""

    ENV_NAME = "production"
    ALERT_WEBHOOK_ALLOW_PRIVATE = False

    def validate(self) -> None:
        """Refuse to start with a default or missing secret."""
        super().validate()
        if self.SECRET_KEY in ("", DEFAULT_SECRET_KEY):
            raise ConfigError("SECRET_KEY must be set to a non-default value in production")
        if self.JWT_SECRET_KEY in ("", DEFAULT_JWT_SECRET_KEY):
            raise ConfigError("JWT_SECRET_KEY must be set to a non-default value in production")


CONFIGS: dict[str, type[Config]] = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Pick the class named by `FLASK_ENV` (default production) and read the environment."""
    env = os.environ if environ is None else environ
    name = (env.get("FLASK_ENV") or "production").strip().lower()
    try:
        cls = CONFIGS[name]
    except KeyError as exc:
        raise ConfigError(f"FLASK_ENV must be one of {sorted(CONFIGS)}, got {name!r}") from exc
    return cls.from_env(env)
