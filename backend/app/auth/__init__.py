"""Accounts and JSON Web Tokens: register, login, refresh, logout, /api/me.

Layer: blueprints; may import every layer but the factory (tests/unit/test_layers.py).
"""

from flask import Blueprint

bp = Blueprint("auth", __name__)

from . import routes  # noqa: E402,F401 - registers the views on bp
