"""Payments: buy render-credit packs through Stripe Checkout, the Stripe webhook, the credit balance.

Layer: blueprints; may import every layer but the factory (tests/unit/test_layers.py).
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("payments", __name__)

from . import routes  # noqa: E402,F401 - registers the views on the blueprint
