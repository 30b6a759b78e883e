"""Public API blueprints that are not about one resource: the error API and the OpenAPI document.

Layer: blueprints; may import every layer but the factory (tests/unit/test_layers.py).
"""

from flask import Blueprint

bp = Blueprint("api", __name__)

from . import docs, error_status, errors  # noqa: E402,F401 - registers the views on bp
