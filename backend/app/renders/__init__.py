"""Uploads and renders: `POST /api/uploads`, `POST/GET /api/renders`, downloads; the `render` job kind.

Layer: blueprints; may import every layer but the factory (tests/unit/test_layers.py).
"""

from __future__ import annotations

from flask import Blueprint
from flask.blueprints import BlueprintSetupState

bp = Blueprint("renders", __name__)

# Defaults for the settings this blueprint reads; config classes or the environment may set them.
DEFAULTS = {
    "RATELIMIT_UPLOAD": "30 per minute",
    "RATELIMIT_RENDER": "30 per minute",
    "RENDER_DOWNLOAD_URL_SECONDS": 3600,
    "AUDIO_PROBE_TIMEOUT_SECONDS": 60,
}


@bp.record_once
def _setting_defaults(state: BlueprintSetupState) -> None:
    """Give the app this blueprint's setting defaults when it is registered (config set before wins)."""
    for key, value in DEFAULTS.items():
        state.app.config.setdefault(key, value)


from . import routes  # noqa: E402, F401 - the views attach themselves to `bp` (create_app imports the `render` kind)
