"""Downloads of locally stored files through app-signed, expiring links (`StorageService.download_url`).

Layer: blueprints; may import every layer but the factory (tests/unit/test_layers.py).
"""

from __future__ import annotations

import mimetypes

from flask import Blueprint, Response, send_file

from ..edge.openapi import documented

bp = Blueprint("downloads", __name__)


@bp.get("/api/files/<token>")
@documented(
    "Download a locally stored file through an app-signed, expiring link",
    tag="files",
    responses={200: None},
    errors=(404,),
)
def download_file(token: str) -> Response:
    """Serve the file the signed token names, while the token is valid (the token is the credential)."""
    from ..services import get_storage

    path, key = get_storage().open_download(token)
    content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return send_file(path, mimetype=content_type, as_attachment=True, download_name=key.rsplit("/", 1)[-1])
