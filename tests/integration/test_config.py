"""Configuration is read from the environment once, and production refuses default secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.app import create_app
from config import (
    DEFAULT_JWT_SECRET_KEY,
    DEFAULT_SECRET_KEY,
    ConfigError,
    DevelopmentConfig,
    ProductionConfig,
    TestingConfig,
    load_config,
)


def test_default_environment_is_production_and_refuses_default_secrets() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_config({})


def test_production_refuses_default_jwt_secret() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        load_config({"FLASK_ENV": "production", "SECRET_KEY": "a-real-secret-value"})


def test_production_accepts_real_secrets_and_reads_every_setting() -> None:
    cfg = load_config(
        {
            "FLASK_ENV": "production",
            "SECRET_KEY": "s" * 32,
            "JWT_SECRET_KEY": "j" * 32,
            "DATABASE_URL": "postgres://u:p@db:5432/app",
            "ADMIN_EMAILS": " Boss@Example.com, ops@example.com ,",
            "MAX_UPLOAD_MB": "7",
            "LOG_LEVEL": "debug",
        }
    )
    assert isinstance(cfg, ProductionConfig)
    assert cfg.SQLALCHEMY_DATABASE_URI == "postgresql+psycopg://u:p@db:5432/app"
    assert frozenset({"boss@example.com", "ops@example.com"}) == cfg.ADMIN_EMAILS
    assert cfg.MAX_UPLOAD_MB == 7 and cfg.MAX_CONTENT_LENGTH > 7 * 1024 * 1024
    assert cfg.LOG_LEVEL == "DEBUG"


def test_development_runs_with_defaults() -> None:
    cfg = load_config({"FLASK_ENV": "development"})
    assert isinstance(cfg, DevelopmentConfig)
    assert cfg.SECRET_KEY == DEFAULT_SECRET_KEY and cfg.JWT_SECRET_KEY == DEFAULT_JWT_SECRET_KEY


@pytest.mark.parametrize(
    ("env", "message"),
    [({"FLASK_ENV": "staging"}, "FLASK_ENV"), ({"FLASK_ENV": "development", "MAX_UPLOAD_MB": "big"}, "MAX_UPLOAD_MB")],
)
def test_bad_settings_fail_clearly(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env)


def test_default_database_is_sqlite_in_the_instance_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(DevelopmentConfig, LOG_DIR=str(tmp_path / "logs"))
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    assert uri.startswith("sqlite:///") and uri.endswith("instance/oriel.db")


def test_circuit_breakers_come_from_the_environment_as_json_and_bad_json_is_refused() -> None:
    cfg = load_config({"FLASK_ENV": "testing", "CIRCUIT_BREAKERS": '{"*": {"recovery_timeout": 3}}'})
    assert cfg.CIRCUIT_BREAKERS == {"*": {"recovery_timeout": 3}}  # type: ignore[attr-defined]
    app = create_app(cfg)
    assert app.config["CIRCUIT_BREAKERS"] == {"*": {"recovery_timeout": 3}}
    for bad in ("{not json", '["stripe"]', '{"stripe": 3}'):
        with pytest.raises(ConfigError, match="CIRCUIT_BREAKERS"):
            load_config({"FLASK_ENV": "testing", "CIRCUIT_BREAKERS": bad})


def test_email_lease_and_error_stats_retry_come_from_the_environment() -> None:
    cfg = load_config({"FLASK_ENV": "testing", "EMAIL_LEASE_SECONDS": "15", "ERROR_STATS_RETRY_SECONDS": "60"})
    assert (cfg.EMAIL_LEASE_SECONDS, cfg.ERROR_STATS_RETRY_SECONDS) == (15.0, 60.0)  # type: ignore[attr-defined]


def test_a_test_app_keeps_its_files_and_database_out_of_the_checkout(tmp_path: Path) -> None:
    """#16: with every path set (as the test settings set them), the app writes nothing into `instance/`."""
    from backend.app.services import get_storage
    from tests.harness.app import base_settings

    app = create_app(TestingConfig, **base_settings(tmp_path))
    with app.app_context():
        stored = get_storage().save("renders/checkout-probe.mp4", b"\x00" * 16, "video/mp4")
        assert stored is not None
    instance = Path(app.instance_path)
    assert (tmp_path / "storage" / "renders" / "checkout-probe.mp4").read_bytes() == b"\x00" * 16
    assert not (instance / "storage" / "renders" / "checkout-probe.mp4").exists()
