"""The external-service adapters (Cloud Storage, SendGrid, Stripe), built lazily from the app config.

`init_services(app)` (called by `create_app`) registers a `Services` holder in
`app.extensions["services"]`; each adapter is built on first use, so creating the app never
connects anywhere or builds an SDK client. Views and jobs use the accessors:

    get_storage().save("renders/42.mp4", data, "video/mp4")
    get_email().send(user.email, subject, text, dedup_key=f"render-finished:{render_id}")
    get_payments().create_checkout_session(user, "starter", idempotency_key=key)

Layer: services; may import log, base, errors, resilience (tests/unit/test_layers.py).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from .email import EmailService
    from .storage import StorageService
    from .stripe_payments import PaymentsService


class Services:
    """One app's adapters, each built once on first access (thread-safe)."""

    def __init__(self, app: Flask) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._built: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        built = self._built.get(name)
        if built is not None:
            return built
        with self._lock:
            if name not in self._built:
                self._built[name] = self._build(name)
            return self._built[name]

    def _build(self, name: str) -> Any:
        config = self._app.config
        if name == "storage":
            from .storage import StorageService

            return StorageService.from_config(config, instance_path=self._app.instance_path)
        if name == "email":
            from .email import EmailService

            return EmailService.from_config(config)
        from .stripe_payments import PaymentsService

        return PaymentsService.from_config(config)

    @property
    def storage(self) -> StorageService:
        """The storage adapter (GCS with local fallback, or local storage)."""
        return self._get("storage")

    @property
    def email(self) -> EmailService:
        """The email adapter (SendGrid with an outbox)."""
        return self._get("email")

    @property
    def payments(self) -> PaymentsService:
        """The Stripe adapter."""
        return self._get("payments")

    def status(self) -> dict[str, dict[str, Any]]:
        """Every adapter's `status()` (for health endpoints)."""
        return {"storage": self.storage.status(), "email": self.email.status(), "payments": self.payments.status()}


def init_services(app: Flask) -> Services:
    """Register the lazy adapters on `app` (built on first use)."""
    from . import stripe_payments  # noqa: F401 - registers its error codes in the catalog (the SDK stays unloaded)

    services = Services(app)
    app.extensions["services"] = services
    return services


def _services() -> Services:
    return current_app.extensions["services"]


def get_storage() -> StorageService:
    """The current app's storage adapter."""
    return _services().storage


def get_email() -> EmailService:
    """The current app's email adapter."""
    return _services().email


def get_payments() -> PaymentsService:
    """The current app's Stripe adapter."""
    return _services().payments
