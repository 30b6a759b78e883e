"""Uploads and renders: `POST /api/uploads`, `POST/GET /api/renders`, downloads; the `render` job kind."""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("renders", __name__)

# Defaults for the settings this blueprint reads; config classes or the environment may set them.
DEFAULTS = {
    "RATELIMIT_UPLOAD": "30 per minute",
    "RATELIMIT_RENDER": "30 per minute",
    "RENDER_DOWNLOAD_URL_SECONDS": 3600,
    "AUDIO_PROBE_TIMEOUT_SECONDS": 60,
}


def init_renders(app: Flask) -> None:
    """Register the uploads and renders endpoints and their setting defaults."""
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    app.register_blueprint(bp)
    from . import jobs  # noqa: F401 - registers the `render` job kind (web processes enqueue it, workers run it)


from . import routes  # noqa: E402, F401 - the views attach themselves to `bp`
